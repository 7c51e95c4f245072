"""Publishing: the Hub-ready folder pushed to a FAKED Hub (create_repo / upload_folder write a hub-cache snapshot),
then loaded by repo id with HF_HUB_OFFLINE=1 through remote code; the dataset folder goes the same way."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from train.testing import build_tiny_data, tiny_overrides
from isolation import BLOCK_PACKAGE
from fake_hub_server import install_fake_uploads

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_hub(monkeypatch):
    """Stand-ins for HfApi.create_repo / create_commit / upload_folder that write the hub-cache layout
    ``$HF_HUB_CACHE/<type>s--org--name/snapshots/<sha>/`` + ``refs/main`` (hf-stack-notes §3), so an
    HF_HUB_OFFLINE=1 load by repo id finds the pushed files in the cache (tests/fake_hub_server.py)."""
    return install_fake_uploads(monkeypatch, Path(os.environ["HF_HUB_CACHE"]))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny pipeline run (in process, no pre-training to stay fast) with its Hub-ready folder."""
    from train.config import load_config
    from train.main import run_pipeline

    data = build_tiny_data(tmp_path_factory.mktemp("pubdata") / "tiny")
    out = tmp_path_factory.mktemp("pubrun")
    cfg = load_config("demo", tiny_overrides(data, out, "pretrain.do_pretrain=false", "finetune.epochs=1"))
    result = run_pipeline(cfg, command="pytest tiny run")
    return cfg, result, Path(result["paths"]["hub_model"])


def test_model_card_has_model_index_and_curve(published):
    from huggingface_hub import ModelCard

    cfg, result, folder = published
    card = ModelCard.load(folder / "README.md")
    names = {r.metric_name for r in card.data.eval_results}
    assert {"Recall@20", "Recall@40", "NDCG@100", "Recall@20 (|rel| denominator, paper Eq. 8)"} <= names
    assert all(r.dataset_split == "test" for r in card.data.eval_results)
    assert card.data.library_name == "transformers"
    assert "pytest tiny run" in card.text and "Popularity (test)" in card.text
    assert "the ones left in the prompt weighted 1.0 (1 = the paper's target)" in " ".join(card.text.split())  # demo
    assert "User tokens: a row per user (the paper)." in " ".join(card.text.split())
    assert (folder / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_push_to_fake_hub_and_load_by_repo_id(published, fake_hub, tmp_path):
    from train.publish import push_folder

    cfg, result, folder = published
    url = push_folder(folder, "org/graphgpt2-tiny")
    assert url.endswith("org/graphgpt2-tiny")
    (repo_id, repo_type, _, files) = fake_hub["upload_folder"][0]
    assert repo_type == "model" and {"config.json", "model.safetensors", "modeling_graphgpt2.py", "README.md",
                                     "graph/train_edges.npy", "maps/item_titles.json", "tokenizer.json"} <= set(files)
    # the dataset folder the same way
    push_folder(cfg.data.folder, "org/graphgpt2-tiny-data", repo_type="dataset")
    assert fake_hub["upload_folder"][1][1] == "dataset"
    assert "manifest.json" in fake_hub["upload_folder"][1][3]
    # load by repo id, offline, through remote code, in a process that cannot import this package
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path = [p for p in sys.path if p not in ("", {str(ROOT)!r})]
        from transformers import AutoModel, AutoTokenizer
        from huggingface_hub import hf_hub_download
        model = AutoModel.from_pretrained("org/graphgpt2-tiny", trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        tok = AutoTokenizer.from_pretrained("org/graphgpt2-tiny")
        edges = hf_hub_download("org/graphgpt2-tiny", "graph/train_edges.npy")
        torch.save({{k: v.detach().clone() for k, v in model.state_dict().items()}}, "hub_state.pt")
        print(model.config.num_users, model.config.num_items, len(tok))
    """)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", BLOCK_PACKAGE + script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    users, items, vocab = proc.stdout.split()[-3:]
    from train.modeling_io import load_model

    local = load_model(folder)
    assert (int(users), int(items)) == (local.config.num_users, local.config.num_items)
    hub_state, local_state = torch.load(tmp_path / "hub_state.pt"), local.state_dict()
    assert hub_state.keys() == local_state.keys()
    for key in local_state:  # every tensor exactly, not a checksum that swapped rows would keep
        assert torch.equal(hub_state[key], local_state[key]), key


def test_publish_refuses_foreign_dataset_folder(published, tmp_path):
    from data_builders.corpus import Corpus, DataFolderError
    from train.publish import publish

    cfg, result, folder = published
    other = build_tiny_data(tmp_path / "other", users=43, items=60, seed=1)
    with pytest.raises(DataFolderError, match="num_users=43"):
        publish(cfg, Corpus(other), Path(result["paths"]["best_model"]), tmp_path / "out", result)
    assert not (tmp_path / "out").exists()


def test_push_requires_folder(fake_hub, tmp_path):
    from train.publish import push_folder

    with pytest.raises(FileNotFoundError, match="nothing to push"):
        push_folder(tmp_path / "missing", "org/x")


def test_the_card_states_how_user_tokens_are_read():
    from train.publish import user_tokens_text

    assert "no user identity" in user_tokens_text(1.0)
    assert "probability 0.5" in user_tokens_text(0.5)
    assert user_tokens_text(0.0) == "a row per user (the paper)"
