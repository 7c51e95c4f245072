"""benchmarks/quality.py: split loading (dataset folder and raw files), runs, summaries and written outputs."""
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import quality
from benchmarks.baselines import to_csr
from benchmarks.quality import load_split, markdown_table, summarize_runs
from data_builders.build import BuildConfig, build
from data_builders.corpus import Corpus, DataFolderError
from data_builders.preprocess import build_split
from data_builders.synthetic import make_synthetic


def planted_interactions(seed=0, num_users=120, clusters=4, per_cluster=8):
    """(user, item) raw-id pairs: each user takes 7 items of one cluster."""
    rng = np.random.default_rng(seed)
    pairs = []
    for u in range(num_users):
        c = rng.integers(clusters)
        for j in rng.choice(per_cluster, size=7, replace=False):
            pairs.append((f"u{u}", f"i{c * per_cluster + j}"))
    return pairs


@pytest.fixture()
def raw_folder(tmp_path):
    folder = tmp_path / "tiny-raw"
    folder.mkdir()
    lines = ["user_id:token\titem_id:token"] + [f"{u}\t{i}" for u, i in planted_interactions()]
    (folder / "tiny.inter").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def syn_folder(tmp_path_factory):
    """A real dataset folder (the builders' synthetic shop, small)."""
    folder = tmp_path_factory.mktemp("syn") / "syn"
    build(BuildConfig(source="synthetic", out=str(folder), train_bpe=300, synthetic_users=60, synthetic_items=40, quiet=True))
    return folder


def tiny_split(folder="ds"):
    """A hand-made 2-user split (no folder needed by the harness functions that take SplitData)."""
    train, valid, test = [[0, 1], [2]], [[2], [0]], [[3], [1]]
    return quality.SplitData("tiny", to_csr(train, 4), to_csr(valid, 4), to_csr(test, 4), "abc123", folder=str(folder))


def test_raw_folder_run_writes_json_table_and_chart(raw_folder, tmp_path):
    out = tmp_path / "results"
    paths = quality.main(
        ["--data", str(raw_folder), "--baselines", "pop", "ease", "multivae", "--seeds", "0", "1",
         "--ease-lambdas", "1", "10", "--multivae-epochs", "3", "--out", str(out), "--tag", "t"]
    )
    payload = json.loads(paths["json"].read_text())
    assert payload["num_users"] == 120 and payload["command"].startswith("python -m benchmarks.quality")
    assert len(payload["split_hash"]) == 64
    runs = payload["runs"]
    assert [r["model"] for r in runs] == ["pop", "ease", "multivae", "multivae"]  # deterministic models once
    assert [r["seed"] for r in runs] == [None, None, 0, 1]
    for r in runs:
        assert set(quality.REPORT_METRICS) <= set(r["test"]) and r["test"]["num_users"] == 120
    ease = next(r for r in runs if r["model"] == "ease")
    pop = next(r for r in runs if r["model"] == "pop")
    assert ease["test"]["recall@20"] > pop["test"]["recall@20"]
    assert ease["info"]["lambda"] in (1.0, 10.0)
    vae = runs[2]  # a neural baseline keeps its curve: one row per epoch, validation where checked
    assert [h["epoch"] for h in vae["history"]] == [1, 2, 3] and "recall@20" in vae["history"][-1]["valid"]
    assert "history" not in ease
    md = paths["md"].read_text()
    assert "| ease | 1 |" in md and "| multivae | 2 |" in md and "±" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_folder_loading_matches_the_built_split(syn_folder):
    """Train/validation/test matrices from a dataset folder (through Corpus) equal the split the build made."""
    data = load_split(syn_folder)
    split = build_split(make_synthetic(num_users=60, num_items=40))
    for mat, lists in ((data.train, split.train), (data.valid, split.valid), (data.test, split.test)):
        assert [sorted(np.flatnonzero(row)) for row in mat.toarray()] == [sorted(map(int, a)) for a in lists]
    assert data.split_hash == split.manifest["split_hash"] and data.folder == str(syn_folder)


def test_folder_errors(syn_folder, tmp_path):
    with pytest.raises(DataFolderError, match="no manifest.json"):
        Corpus(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_split(tmp_path / "missing")  # neither a dataset folder nor raw files
    leak = tmp_path / "leak"
    shutil.copytree(syn_folder, leak)
    # the test rows now disagree with the split hash the build recorded
    table = pq.read_table(leak / "recommendation" / "test-00000-of-00001.parquet").to_pydict()
    table["targets"][0] = table["targets"][0][:-1] + [(table["targets"][0][-1] + 1) % 40]
    pq.write_table(pa.table(table, schema=pq.read_schema(leak / "recommendation" / "test-00000-of-00001.parquet")),
                   leak / "recommendation" / "test-00000-of-00001.parquet")
    with pytest.raises(DataFolderError, match="split_hashes.test"):
        load_split(leak)


def test_summary_mean_and_sample_std():
    def row(model, seed, r20):
        test = {m: r20 for m in quality.REPORT_METRICS}
        return {"model": model, "seed": seed, "test": test, "valid": test, "wall_s": 2.0}

    summary = summarize_runs([row("a", 0, 0.1), row("a", 1, 0.3), row("b", None, 0.2)])
    assert summary[0]["runs"] == 2
    assert summary[0]["recall@20"]["mean"] == pytest.approx(0.2)
    assert summary[0]["recall@20"]["std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert summary[1]["recall@20"] == {"mean": 0.2, "std": 0.0}
    table = markdown_table(summary)
    assert "| a | 2 | 0.2000 ± 0.1414 |" in table and "| b | 1 | 0.2000 |" in table


def test_variant_configs_are_valid_overrides(tmp_path):
    folder = tmp_path / "ds"
    data = tiny_split(folder)
    for variant, extra in quality.VARIANTS.items():
        cfg, overrides = quality.variant_config(variant, data, 1, "quick", tmp_path / "runs")
        assert cfg.seed == 1 and cfg.data.folder == str(folder) and cfg.data.build is False
    assert quality.variant_config("nogkia", data, 0, "quick", tmp_path)[0].model.graph_bias == "none"
    assert quality.variant_config("noghip", data, 0, "quick", tmp_path)[0].data.pretrain_configs == ["review"]
    assert quality.variant_config("nopretrain", data, 0, "quick", tmp_path)[0].pretrain.do_pretrain is False
    with pytest.raises(ValueError, match="unknown variant"):
        quality.variant_config("bogus", data, 0, "quick", tmp_path)


def test_musical_instruments_split_matches_calibration_counts(shared_data):
    data = quality.load_split(shared_data / "amazon-musical-instruments-2014")
    assert (data.num_users, data.num_items) == (526, 347)  # calibration.md
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (2551, 532, 532)


def test_variant_run_goes_through_run_pipeline(tmp_path, monkeypatch):
    """The harness passes the variant's config to train.main.run_pipeline and reads back its metrics."""
    import train.main

    data = tiny_split(tmp_path / "ds")
    seen = []

    def fake_run_pipeline(cfg, **kwargs):
        seen.append(cfg)
        metrics = {m: 0.5 for m in quality.REPORT_METRICS}
        return {"validation": dict(metrics), "test": dict(metrics, **{"recall@20": 0.25}), "best_epoch": 1}

    monkeypatch.setattr(train.main, "run_pipeline", fake_run_pipeline)
    [row] = quality.run_variant("constant", data, 2, "quick", tmp_path / "runs")
    assert seen[0].model.graph_bias == "constant" and seen[0].seed == 2
    assert seen[0].output.dir.endswith("constant/seed2")
    assert row["model"] == "graphgpt2-constant" and row["test"]["recall@20"] == 0.25 and row["valid"]["ndcg@100"] == 0.5


def test_real_builder_folder_loads_and_matches_its_split_hashes(syn_folder):
    """A folder written by the builders reads back to the recorded split."""
    data = load_split(syn_folder)
    corpus = Corpus(syn_folder)
    assert data.split_hash == corpus.split_hash
    sizes = corpus.split_manifest["split_sizes"]
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (sizes["train"], sizes["valid"], sizes["test"])


def test_two_stage_residual_variant_reports_the_model_and_its_ablation_without_the_residual(syn_folder, tmp_path):
    """``residual_val``: the chosen scale's run, and the same selected model at scale 0 as its own row."""
    from train.modeling_io import load_model
    from train.testing import tiny_overrides

    data = load_split(syn_folder)
    extra = [o for o in tiny_overrides(syn_folder, tmp_path, "pretrain.do_pretrain=false", "finetune.epochs=1",
                                       "model.graph_residual_topn=10")
             if not o.startswith(("data.folder", "output.dir", "data.build"))]
    with_res, without = quality.run_variant("residual_val", data, 0, "demo", tmp_path / "runs", extra)
    sweep = with_res["info"]["residual_scale_sweep"]
    assert sweep["scales"] == list(quality.RESIDUAL_SCALE_GRID)
    assert with_res["valid"]["recall@20"] == pytest.approx(max(sweep["values"]), abs=1e-9)
    assert without["model"] == "graphgpt2-residual_val-noresidual"
    assert without["valid"]["recall@20"] == pytest.approx(sweep["values"][0], abs=1e-9)  # the grid's scale 0
    best = load_model(tmp_path / "runs" / "residual_val" / "seed0" / "best")
    assert best.graph_residual.scale.item() == pytest.approx(sweep["chosen"])  # the ablation did not touch the saved model
    card = (tmp_path / "runs" / "residual_val" / "seed0" / "hub_model" / "README.md").read_text()
    assert f"scale {sweep['chosen']:g}, chosen on validation recall@20" in card


def test_merge_gathers_runs_of_the_same_split_and_refuses_another(raw_folder, tmp_path):
    out = tmp_path / "results"
    one = quality.main(["--data", str(raw_folder), "--baselines", "multivae", "--seeds", "0", "--multivae-epochs", "2",
                        "--out", str(out), "--tag", "s0"])["json"]
    two = quality.main(["--data", str(raw_folder), "--baselines", "multivae", "--seeds", "1", "--multivae-epochs", "2",
                        "--out", str(out), "--tag", "s1"])["json"]
    merged = json.loads(quality.main(["--data", str(raw_folder), "--merge", str(one), str(two), "--out", str(out),
                                      "--tag", "both"])["json"].read_text())
    assert [(r["model"], r["seed"]) for r in merged["runs"]] == [("multivae", 0), ("multivae", 1)]
    values = [json.loads(p.read_text())["runs"][0]["test"]["recall@20"] for p in (one, two)]
    assert merged["summary_test"][0]["recall@20"]["mean"] == pytest.approx(np.mean(values))
    other = json.loads(one.read_text())
    other["split_hash"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="is not --data's split"):
        quality.main(["--data", str(raw_folder), "--merge", str(tmp_path / "other.json"), "--out", str(out)])
