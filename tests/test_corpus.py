"""Corpus owns the dataset folder: nothing else reads it by file name; it opens dataset and published folders;
the build is typed (BuildConfig == CLI); graph settings flow one way (the folder's max_hops is checked)."""
import ast
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

from data_builders.build import BuildConfig, BuildConfigError, build, parse_build_config
from data_builders.corpus import Corpus, DataFolderError
from data_builders.preprocess import DEFAULT_SPLIT_SEED, build_split
from modeling_graphgpt2 import folder_layout
from train.testing import build_tiny_data, tiny_build_config

ROOT = Path(__file__).resolve().parents[1]

# Every file and folder name of the dataset / published folder layout (modeling_graphgpt2.folder_layout declares
# them). Left out: README.md (publishing writes its own model card under that name) and transformers' own
# config.json / model.safetensors, which GPT-2 checkpoints and PEFT folders share.
HF_NAMES = ("README_FILE", "CONFIG_FILE", "WEIGHTS_FILE")
LAYOUT_FILES = tuple(
    getattr(folder_layout, name) for name in dir(folder_layout) if name.endswith("_FILE") and name not in HF_NAMES
) + ("data_manifest.json", ".parquet")
LAYOUT_DIRS = tuple(getattr(folder_layout, name) for name in dir(folder_layout) if name.endswith("_DIR")) + ("recommendation",)
LAYOUT_OWNER = ROOT / "modeling_graphgpt2" / "folder_layout.py"


def folder_name_reads(source: str) -> list[str]:
    """String literals in ``source`` that name a folder file (docstrings excepted), and ``path / "<layout dir>"``."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            hits += [f"line {node.lineno}: {text!r}" for name in LAYOUT_FILES if name in text]
            hits += [f"line {node.lineno}: {text!r}" for d in LAYOUT_DIRS if text.startswith(d + "/")]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
            if node.right.value in LAYOUT_DIRS:
                hits.append(f"line {node.lineno}: / {node.right.value!r}")
    return hits


def test_the_scanner_catches_hand_loading():
    """The guard below can fail: it flags the reads that train/ and benchmarks/ used to do."""
    assert folder_name_reads('meta = json.loads((folder / "manifest.json").read_text())')
    assert folder_name_reads('hops = HopDistances.load(folder / "graph", sha)')
    assert folder_name_reads('files = glob.glob(str(folder / "recommendation" / "test-*.parquet"))')
    assert folder_name_reads('edges = np.load(os.path.join(folder, "graph/train_edges.npy"))')
    assert not folder_name_reads('def f():\n    """Reads manifest.json."""\n    tags = ["graph", "recommendation"]')


@pytest.mark.parametrize("package", ["train", "benchmarks", "data_builders", "modeling_graphgpt2"])
def test_only_corpus_reads_the_dataset_folder_by_name(package):
    """No literal file name outside the layout module: Corpus (and, for a published folder, the pipeline) read the
    folder through its names, and the writers write through them."""
    offenders = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        if path == LAYOUT_OWNER:
            continue
        hits = folder_name_reads(path.read_text())
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    assert not offenders, f"read the dataset folder through data_builders.corpus.Corpus instead: {offenders}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("corpus") / "tiny")


def test_dataset_folder_sizes_rows_and_matrices(tiny):
    c = Corpus(tiny)
    manifest = json.loads((tiny / "manifest.json").read_text())
    assert (c.num_users, c.num_items, c.base_vocab_size, c.max_hops) == (41, manifest["num_items"], manifest["base_vocab_size"], 6)
    assert c.has_rows and c.split_hash == manifest["split"]["split_hash"] and c.pad_token_id is not None
    train = c.interaction_matrix("train")
    assert [sorted(np.flatnonzero(r)) for r in train.toarray()] == [sorted(t) for t in c.train_items()]
    test = c.interaction_matrix("test")
    assert {(e.user, j) for e in c.rec_examples("test") for j in e.targets} == set(zip(*test.nonzero()))
    assert train.multiply(test).nnz == 0
    with pytest.raises(DataFolderError, match="split must be one of"):
        c.interaction_matrix("valid")


def test_export_round_trip_opens_as_a_published_folder(tiny, tmp_path):
    from transformers import AutoTokenizer

    c = Corpus(tiny, leave_user_out=True)
    pub = c.export_to(tmp_path / "pub", {"max_length": 64})
    p = Corpus(pub)  # a published folder: same layout, no prompt rows
    assert not p.has_rows and p.leave_user_out is True and p.inference_settings["max_length"] == 64
    for key in ("num_users", "num_items", "base_vocab_size", "max_hops", "tokenizer_sha256", "graph_sha256", "split_hashes"):
        assert getattr(p, key) == getattr(c, key), key
    assert p.item_titles() == c.item_titles() and p.user_ids == c.user_ids and p.item_ids == c.item_ids
    assert [sorted(a) for a in p.train_items()] == [sorted(a) for a in c.train_items()]
    assert (p.interaction_matrix("train") != c.interaction_matrix("train")).nnz == 0
    assert p.encode_rec_prompt(3, [1, 2, 5], 64) == c.encode_rec_prompt(3, [1, 2, 5], 64)
    with pytest.raises(DataFolderError, match="no prompt rows"):
        p.dataset("recommendation", "test")
    # the root tokenizer (for AutoTokenizer.from_pretrained(folder)) is the folder's, with the ID tokens
    text = "user_3 has interacted with item_1 item_2"
    assert AutoTokenizer.from_pretrained(str(pub))(text)["input_ids"] == c.tokenizer(text)["input_ids"]


def test_max_hops_is_read_from_the_folder_and_checked(tiny, tmp_path):
    from train.common import build_model
    from train.config import load_config
    from train.main import run_pipeline

    c = Corpus(tiny)
    c.check_max_hops(6)
    with pytest.raises(DataFolderError, match=r"model\.max_hops=4 but the dataset folder .* was built with max_hops=6"):
        c.check_max_hops(4)
    small = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.n_positions=128"]
    cfg = load_config("demo", [f"data.folder={tiny}", "data.build=false", f"output.dir={tmp_path / 'run'}", "model.max_hops=4", *small])
    with pytest.raises(DataFolderError, match=r"model\.max_hops=4 .* max_hops=6"):
        build_model(cfg, c)
    with pytest.raises(DataFolderError, match=r"model\.max_hops=4 .* max_hops=6"):
        run_pipeline(cfg)  # refused before any training
    ok = load_config("demo", [f"data.folder={tiny}", *small])
    model = build_model(ok, c)
    assert model.config.max_hops == c.max_hops
    model.config.max_hops = 5
    with pytest.raises(DataFolderError, match="the model's max_hops=5"):
        c.check_model(model.config)


def test_build_config_equals_cli_build(tmp_path):
    from data_builders.__main__ import main as cli_main

    typed = tiny_build_config(tmp_path / "typed", users=30, items=30, seed=4)
    argv = ["--source", "synthetic", "--out", str(tmp_path / "cli"), "--train-bpe", "600", "--synthetic-users", "30",
            "--synthetic-items", "30", "--seed", "4", "--max-length", "96", "--quiet"]
    assert parse_build_config(argv) == typed.replace(out=str(tmp_path / "cli"))
    assert parse_build_config(["--k-core", "3"], base=typed) == typed.replace(k_core=3)  # flags on top of a config
    build(typed)
    assert cli_main(["build", *argv]) == 0
    a, b = Corpus(tmp_path / "typed"), Corpus(tmp_path / "cli")
    assert a.split_hashes == b.split_hashes and a.split_hash == b.split_hash
    assert (a.tokenizer_sha256, a.graph_sha256) == (b.tokenizer_sha256, b.graph_sha256)
    assert a.manifest["rows"] == b.manifest["rows"]


def test_build_config_defaults_live_in_one_place_and_errors_name_the_key():
    from data_builders.builder import GraphGPT2RecPromptsConfig
    from train.config import RunConfig

    cfg = BuildConfig(source="synthetic", out="x")
    assert cfg.seed == DEFAULT_SPLIT_SEED == inspect.signature(build_split).parameters["seed"].default == 98765
    assert RunConfig().data.split_seed == DEFAULT_SPLIT_SEED == GraphGPT2RecPromptsConfig().seed
    assert (cfg.k_core, cfg.rating_threshold) == (5, 3.0)
    with pytest.raises(BuildConfigError, match="tokenizer and train_bpe"):
        BuildConfig(source="synthetic", out="x", tokenizer="gpt2", train_bpe=600)
    with pytest.raises(BuildConfigError, match="prompts: unknown"):
        BuildConfig(source="synthetic", out="x", prompts=("content", "nope"))


def test_main_builds_with_the_run_configs_max_hops(tmp_path):
    from train.config import load_config
    from train.main import build_config

    cfg = load_config("demo", [f"data.folder={tmp_path / 'd'}", "model.max_hops=4", "data.split_seed=7"])
    bc = build_config(cfg)
    assert (bc.max_hops, bc.seed, bc.train_bpe, bc.out) == (4, 7, cfg.data.bpe_vocab, str(tmp_path / "d"))
    extra = load_config("demo", [f"data.folder={tmp_path / 'd'}", "data.build_args=[--k-core, '3']"])
    assert build_config(extra).k_core == 3 and build_config(extra).train_bpe == extra.data.bpe_vocab


def test_one_popularity_for_train_and_benchmarks(tiny):
    """The pipeline's popularity row and the benchmark baseline give the same numbers on the same folder."""
    from benchmarks.baselines import Popularity, evaluate_recommender
    from train.config import load_config
    from train.evaluate import popularity_metrics

    c = Corpus(tiny)
    cfg = load_config("demo", [f"data.folder={tiny}"])
    ours = popularity_metrics(c, "test", cfg)
    train = c.interaction_matrix("train")
    theirs = evaluate_recommender(Popularity().fit(train), train, c.interaction_matrix("test"),
                                  ks=cfg.eval.recall_ks, ndcg_ks=cfg.eval.ndcg_ks)
    for key in ("recall@20", "recall@40", "ndcg@100"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_tokenization_does_not_import_prompts():
    """prompts -> tokenization -> records, one way (the cycle is gone)."""
    tree = ast.parse((ROOT / "data_builders" / "tokenization.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "prompts" not in modules and "records" in modules


def test_a_baseline_is_a_scorer_of_the_models_evaluation_loop(tiny):
    """EASE ranked by the model's loop over the folder's prompts (``evaluate_scorer``) and by the benchmarks' matrix
    loop (``evaluate_recommender``) gets the same metrics: one protocol, the same users and masks."""
    from benchmarks.baselines import EASE, evaluate_recommender
    from train.config import load_config
    from train.evaluate import evaluate_scorer

    c = Corpus(tiny)
    cfg = load_config("demo", [f"data.folder={tiny}", "eval.batch_size=5"])
    train = c.interaction_matrix("train")
    ease = EASE(lambdas=(10.0,)).fit(train)
    for split in ("validation", "test"):
        ours = evaluate_scorer(None, ease, c, split, cfg)[0]
        theirs = evaluate_recommender(ease, train, c.interaction_matrix(split), ks=cfg.eval.recall_ks,
                                      ndcg_ks=cfg.eval.ndcg_ks)
        assert ours["num_users"] == theirs["num_users"] > 0
        for key in ("recall@20", "recall@40", "ndcg@100"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12), (split, key)
