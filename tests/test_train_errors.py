"""Bad input gets a clear error: foreign dataset folders, unknown users/items, empty histories, missing folders."""
import subprocess
import sys
from pathlib import Path

import pytest

from train.testing import build_tiny_data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from train.common import build_model
    from train.config import load_config
    from data_builders.corpus import Corpus
    from train.recommend import Recommender

    data = build_tiny_data(tmp_path_factory.mktemp("errdata") / "tiny")
    cfg = load_config("demo", [f"data.folder={data}", "model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.n_positions=128"])
    corpus = Corpus(data)
    model = build_model(cfg, corpus)
    return cfg, corpus, model, Recommender.from_corpus(model, corpus, max_length=96)


def test_unknown_user_and_bad_items(setup):
    *_, rec = setup
    with pytest.raises(ValueError, match=r"unknown user index 41: the model knows users 0\.\.40"):
        rec.recommend_users([0, 41])
    with pytest.raises(ValueError, match="unknown user index -1"):
        rec.recommend_users([-1])
    with pytest.raises(ValueError, match="unknown user id 'A2NOBODY'"):
        rec.user_index("A2NOBODY")
    with pytest.raises(ValueError, match=r"unknown item indices \[60\]"):
        rec.recommend_history([1, 60])
    with pytest.raises(ValueError, match="k must be >= 1"):
        rec.recommend_users([0], k=0)


def test_empty_history(setup):
    *_, rec = setup
    with pytest.raises(ValueError, match="empty history"):
        rec.recommend_history([])


def test_new_user_history_excludes_given_items(setup):
    *_, rec = setup
    top = rec.recommend_history([3, 7, 11], k=10)
    assert len(top) == 10 and not {3, 7, 11} & {j for j, _ in top}
    known = rec.recommend_users([0, 1], k=5)
    assert all(not set(rec.train_items[u]) & {j for j, _ in r} for u, r in zip([0, 1], known))


def test_folder_from_another_graph_or_tokenizer(setup, tmp_path):
    from data_builders.corpus import Corpus, DataFolderError

    cfg, corpus, model, _ = setup
    model.config.graph_sha256 = "0" * 64
    with pytest.raises(DataFolderError, match="graph hash .* differs from the one the model was trained on"):
        corpus.check_model(model.config)
    model.config.graph_sha256 = corpus.graph_sha256
    model.config.tokenizer_sha256 = "f" * 64
    with pytest.raises(DataFolderError, match="tokenizer hash"):
        corpus.check_model(model.config)
    model.config.tokenizer_sha256 = corpus.tokenizer_sha256
    corpus.check_model(model.config)  # the right folder passes
    other = build_tiny_data(tmp_path / "other", users=47, items=60, seed=3)
    with pytest.raises(DataFolderError, match="num_users=47 but the model was built for num_users=41"):
        Corpus(other).check_model(model.config)


def test_missing_folder_and_config(setup, tmp_path):
    from data_builders.corpus import Corpus, DataFolderError

    cfg, corpus, *_ = setup
    with pytest.raises(DataFolderError, match="no manifest.json"):
        Corpus(tmp_path)
    with pytest.raises(DataFolderError, match="config 'nope' was not built"):
        corpus.dataset("nope")
    with pytest.raises(DataFolderError, match="has no split 'validation'"):
        corpus.dataset("content", "validation")


def test_cli_reports_config_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.main", "run", "--config", "demo", "pretrain.roundz=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown key 'pretrain.roundz'" in proc.stderr


def test_batch_mode_writes_every_user(setup, tmp_path):
    import json

    *_, rec = setup
    path = rec.write_all(tmp_path / "recs.jsonl", k=5, batch_size=16)
    rows = [json.loads(l) for l in path.read_text().splitlines()]
    assert [r["user"] for r in rows] == list(range(rec.num_users))
    for r in rows:
        assert len(r["items"]) == len(r["titles"]) == len(r["scores"]) == 5
        assert r["titles"] == [rec.item_titles[j] for j in r["items"]]
        assert not set(r["items"]) & set(rec.train_items[r["user"]])
        assert r["scores"] == sorted(r["scores"], reverse=True)
