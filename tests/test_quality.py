"""benchmarks/quality.py: split loading (dataset folder and raw files), runs, summaries and written outputs."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import quality
from benchmarks.quality import load_split, load_split_from_folder, markdown_table, summarize_runs


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


def write_dataset_folder(path, train, valid, test, num_items, name="tiny"):
    """A minimal dataset folder with the DESIGN.md §4 `recommendation` columns this harness reads."""
    (path / "recommendation").mkdir(parents=True)
    U = len(train)
    for split, targets in (("train", train), ("validation", valid), ("test", test)):
        table = pa.table(
            {
                "user": pa.array(range(U), pa.int32()),
                "history": pa.array([list(t) for t in train], pa.list_(pa.int32())),
                "targets": pa.array([list(t) for t in targets], pa.list_(pa.int32())),
            }
        )
        pq.write_table(table, path / "recommendation" / f"{split}-00000-of-00001.parquet")
    (path / "manifest.json").write_text(
        json.dumps({"name": name, "num_users": U, "num_items": num_items, "split_hash": "abc123"})
    )
    return path


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
    md = paths["md"].read_text()
    assert "| ease | 1 |" in md and "| multivae | 2 |" in md and "±" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_folder_and_raw_loading_agree(tmp_path):
    train, valid, test = [[0, 1], [2]], [[2], [0]], [[3], [1, 3]]
    data = load_split_from_folder(write_dataset_folder(tmp_path / "ds", train, valid, test, num_items=4))
    assert data.name == "tiny" and data.split_hash == "abc123" and data.folder
    assert data.train.toarray().tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]]
    assert data.valid.toarray().tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    assert data.test.toarray().tolist() == [[0, 0, 0, 1], [0, 1, 0, 1]]
    assert load_split(tmp_path / "ds").split_hash == "abc123"


def test_folder_errors_name_file_row_and_field(tmp_path):
    folder = write_dataset_folder(tmp_path / "bad", [[0], [1]], [[5], [0]], [[2], [2]], num_items=4)
    with pytest.raises(ValueError, match=r"validation-00000-of-00001.parquet: row 0: field 'targets'.*\[5\]"):
        load_split_from_folder(folder)
    leak = write_dataset_folder(tmp_path / "leak", [[0], [1]], [[0], [2]], [[2], [3]], num_items=4)
    with pytest.raises(ValueError, match="both train and valid"):
        load_split_from_folder(leak)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        load_split_from_folder(tmp_path)


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
    folder = write_dataset_folder(tmp_path / "ds", [[0, 1], [2]], [[2], [0]], [[3], [1]], num_items=4)
    data = load_split_from_folder(folder)
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

    folder = write_dataset_folder(tmp_path / "ds", [[0, 1], [2]], [[2], [0]], [[3], [1]], num_items=4)
    data = load_split_from_folder(folder)
    seen = []

    def fake_run_pipeline(cfg, **kwargs):
        seen.append(cfg)
        metrics = {m: 0.5 for m in quality.REPORT_METRICS}
        return {"validation": dict(metrics), "test": dict(metrics, **{"recall@20": 0.25}), "best_epoch": 1}

    monkeypatch.setattr(train.main, "run_pipeline", fake_run_pipeline)
    row = quality.run_variant("constant", data, 2, "quick", tmp_path / "runs")
    assert seen[0].model.graph_bias == "constant" and seen[0].seed == 2
    assert seen[0].output.dir.endswith("constant/seed2")
    assert row["model"] == "graphgpt2-constant" and row["test"]["recall@20"] == 0.25 and row["valid"]["ndcg@100"] == 0.5


def test_real_builder_folder_loads_and_matches_its_split_hashes(tmp_path):
    """A folder written by `python -m data_builders build` (synthetic source) reads back to the recorded split."""
    from data_builders.__main__ import main as build_main

    folder = tmp_path / "syn"
    build_main(["build", "--source", "synthetic", "--out", str(folder), "--train-bpe", "300",
                "--synthetic-users", "60", "--synthetic-items", "40", "--quiet"])
    data = load_split(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert data.split_hash == manifest["split"]["split_hash"]
    sizes = manifest["split"]["split_sizes"]
    assert (data.train.nnz, data.valid.nnz, data.test.nnz) == (sizes["train"], sizes["valid"], sizes["test"])


def test_folder_whose_pairs_disagree_with_manifest_hash_is_refused(tmp_path):
    folder = write_dataset_folder(tmp_path / "ds", [[0, 1], [2]], [[2], [0]], [[3], [1]], num_items=4)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["split_hashes"] = {"test": "0" * 64}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="do not match the manifest's split_hashes.test"):
        load_split_from_folder(folder)
