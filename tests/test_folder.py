"""Dataset folder: load_dataset per config, Corpus hash checks, builder == folder, CLI, atomic overwrite."""
import json
import shutil
import subprocess
import sys

import numpy as np
import torch
import pytest

from data_builders.corpus import Corpus, DataFolderError
from data_builders.folder import build_dataset_folder
from data_builders.preprocess import build_split
from data_builders.prompts import PromptConfig
from data_builders.synthetic import make_synthetic

SMALL = dict(num_users=60, num_items=40)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, gpt2_tokenizer_dir):
    split = build_split(make_synthetic(**SMALL))
    out = tmp_path_factory.mktemp("ds") / "synthetic"
    res = build_dataset_folder(split, out, tokenizer_source=gpt2_tokenizer_dir)
    return split, res


def test_layout_manifest_and_load_dataset(folder):
    split, res = folder
    d = res.folder
    for p in ("README.md", "manifest.json", "tokenizer/tokenizer.json", "graph/train_edges.npy", "maps/users.json", "maps/item_titles.json", "recommendation/test-00000-of-00001.parquet"):
        assert (d / p).is_file(), p
    assert not list(d.parent.glob(".synthetic.building-*"))  # temp folder renamed away
    assert not (d / "graph" / "hops.npy").exists()  # no N x N table: rows carry their own pair matrices
    m = json.loads((d / "manifest.json").read_text())
    assert (m["num_users"], m["num_items"], m["base_vocab_size"], m["max_hops"]) == (split.num_users, split.num_items, 50257, 6)
    assert m["split"]["split_hash"] == split.manifest["split_hash"]
    import datasets

    for config, splits in m["rows"].items():
        for s, n in splits.items():
            ds = datasets.load_dataset(str(d), config, split=s)
            assert len(ds) == n > 0
    assert len(datasets.load_dataset(str(d), split="train")) == m["rows"]["content"]["train"]  # content is the default


def test_corpus_and_hash_checks(folder, tmp_path):
    split, res = folder
    c = Corpus(res.folder)
    assert (c.num_users, c.num_items, c.base_vocab_size) == (split.num_users, split.num_items, 50257)
    assert c.item_titles() == [m.title or f"item_{j}" for j, m in enumerate(split.items)] and not c.hops.is_dense
    row = c.dataset("recommendation", "validation")[0]
    assert c.encode_rec_prompt(row["user"], row["history"]) == (row["input_ids"], row["node_positions"])
    batch = c.collator(c.prompt_max_length)([c.dataset("recommendation", "test")[k] for k in range(4)])
    assert batch["target_items"].shape == (4, split.num_items) and batch["hop_distances"].ndim == 3
    # stored pair matrices give the same bias as measuring the graph, for every config, both variants
    for luo in (False, True):
        cl = Corpus(res.folder, leave_user_out=luo)
        collate = cl.collator(cl.prompt_max_length)
        for config in cl.configs:
            ds = cl.dataset(config, "train")
            rows = [ds[k] for k in range(0, min(len(ds), 40), 3)]
            assert all(len(r["pair_hops"]) == len({p for p in r["node_positions"] if p >= 0}) ** 2 for r in rows)
            bare = [{k: v for k, v in r.items() if not k.startswith("pair_hops")} for r in rows]
            assert torch.equal(collate(rows)["hop_distances"], collate(bare)["hop_distances"]), (config, luo)
    with pytest.raises(DataFolderError, match="no split"):
        c.dataset("content", "test")
    # a tokenizer or graph from another build is refused
    bad = tmp_path / "bad"
    shutil.copytree(res.folder, bad)
    edges = np.load(bad / "graph" / "train_edges.npy")
    np.save(bad / "graph" / "train_edges.npy", edges[1:])
    with pytest.raises(ValueError, match="sha256"):
        Corpus(bad)
    bad2 = tmp_path / "bad2"
    shutil.copytree(res.folder, bad2)
    tj = bad2 / "tokenizer" / "tokenizer.json"
    tj.write_text(tj.read_text().replace('"user_0"', '"user_zero"', 1))
    with pytest.raises(ValueError, match="tokenizer"):
        Corpus(bad2)


def test_builder_equals_folder(folder, tmp_path, gpt2_tokenizer_dir):
    from data_builders.builder import GraphGPT2RecPrompts

    _, res = folder
    c = Corpus(res.folder)
    for config in ("second_order", "recommendation"):
        b = GraphGPT2RecPrompts(config_name=config, source="synthetic", tokenizer=str(gpt2_tokenizer_dir),
                                synthetic_users=SMALL["num_users"], synthetic_items=SMALL["num_items"], cache_dir=str(tmp_path / "hf"))
        b.download_and_prepare()
        dd = b.as_dataset()
        for s in c.manifest["rows"][config]:
            assert dd[s].to_list() == c.dataset(config, s).to_list()


def test_a_sharded_build_equals_the_one_shard_build_row_for_row(folder, tmp_path, gpt2_tokenizer_dir):
    split, res = folder
    one = Corpus(res.folder)
    sharded = build_dataset_folder(split, tmp_path / "sharded", tokenizer_source=gpt2_tokenizer_dir, rows_per_shard=7)
    many = Corpus(sharded.folder)
    assert many.manifest["rows"] == one.manifest["rows"] and many.manifest["row_kinds"] == one.manifest["row_kinds"]
    assert many.manifest["prompt_stats"] == one.manifest["prompt_stats"]
    for config, splits in one.manifest["rows"].items():
        for s, n in splits.items():
            files = many.manifest["data_files"][config][s]
            assert len(files) == max(1, -(-n // 7)) and all(f.endswith(f"-of-{len(files):05d}.parquet") for f in files)
            assert many.dataset(config, s).to_list() == one.dataset(config, s).to_list()
    assert not list(sharded.folder.rglob(".*.parquet"))  # no shard left under its pending name


def test_overwrite_is_explicit_and_atomic(folder, tmp_path, gpt2_tokenizer_dir):
    split, _ = folder
    out = tmp_path / "ds"
    build_dataset_folder(split, out, tokenizer_source=gpt2_tokenizer_dir, prompt_config=PromptConfig(configs=("interactions",)))
    with pytest.raises(FileExistsError):
        build_dataset_folder(split, out, tokenizer_source=gpt2_tokenizer_dir)
    res = build_dataset_folder(split, out, tokenizer_source=gpt2_tokenizer_dir, prompt_config=PromptConfig(configs=("recommendation",)), overwrite=True)
    assert res.manifest["configs"] == ["recommendation"] and not (out / "interactions").exists()
    assert "config_name: recommendation" in (out / "README.md").read_text() and "default: true" in (out / "README.md").read_text()


def test_cli_build_trained_bpe(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "data_builders", "build", "--source", "synthetic", "--out", str(out), "--train-bpe", "600",
           "--prompts", "content,interactions,recommendation", "--synthetic-users", "50", "--synthetic-items", "30", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "| users | items | interactions |" in proc.stdout and "| content | title |" in proc.stdout
    c = Corpus(out)
    assert c.base_vocab_size <= 600 and c.configs == ["content", "interactions", "recommendation"]
    row = c.dataset("interactions")[0]
    assert c.tokenizer(row["prompt"] + row["main"], add_special_tokens=False)["input_ids"] == row["input_ids"]
    bad = subprocess.run(cmd[:-1] + ["--prompts", "content,nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown" in bad.stderr


def test_empty_config_is_left_out_with_a_reason(tmp_path, gpt2_tokenizer_dir):
    split = build_split(make_synthetic(**SMALL))
    split.reviews.clear()  # like Beauty: no review text
    res = build_dataset_folder(split, tmp_path / "norev", tokenizer_source=gpt2_tokenizer_dir, prompt_config=PromptConfig(configs=("interactions", "review")))
    assert res.manifest["configs"] == ["interactions"] and "review" in res.manifest["skipped_configs"]
    c = Corpus(res.folder)
    assert len(c.dataset("interactions")) == split.num_users
    with pytest.raises(DataFolderError, match="0 rows"):
        c.dataset("review")


def test_corpus_rows_come_from_their_own_folder(tmp_path, gpt2_tokenizer_dir):
    # Two folders with the same base name but different data: each Corpus must serve its own rows
    # (datasets' cache keys a local folder by base name + config, which mixed them up).
    rows = []
    for seed in (1, 2):
        split = build_split(make_synthetic(num_users=40, num_items=30, seed=seed))
        res = build_dataset_folder(split, tmp_path / f"run{seed}" / "data", tokenizer_source=gpt2_tokenizer_dir)
        corpus = Corpus(res.folder)
        ds = corpus.dataset("recommendation", "test")
        assert len(ds) == split.num_users
        by_user = {u: sorted(t) for u, t in zip(ds["user"], ds["targets"])}
        assert by_user == {u: sorted(map(int, a)) for u, a in enumerate(split.test)}
        rows.append(ds["prompt"])
    assert rows[0] != rows[1]
