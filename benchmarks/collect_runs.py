"""Collect finished `graphgpt2-rec run` folders (one per seed) into one result file: per seed the validation and
test metrics, the epoch and both residual sweeps, the stage times; and the mean and sample std over the seeds.

    python -m benchmarks.collect_runs benchmarks/results/Toys/toys_amazon_cpu_lprank.json \
        outputs/final/toys_s0 outputs/final/toys_s1 outputs/final/toys_s2 --command "graphgpt2-rec run ..."

A folder may also be a `benchmarks.reselect` output (its `reselect.json`), named the same way.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from train.io_utils import atomic_write_json

METRICS = ("recall@20", "recall@40", "ndcg@100")


def run_row(folder: Path) -> dict:
    """One seed's row from a run folder (pipeline_result.json) or a reselect folder (reselect.json)."""
    seed = yaml.safe_load((folder / "run_config.yaml").read_text())["seed"]
    if (folder / "reselect.json").is_file():
        r = json.loads((folder / "reselect.json").read_text())
        return {"seed": seed, "folder": str(folder), "reselected_from": r["run_dir"], "overrides": r["overrides"],
                "validation": r["validation"], "test": r["test"], "residual_scale_sweep": r["residual_scale_sweep"],
                "lowpass_scale_sweep": r["lowpass_scale_sweep"], "select_and_test_s": r["seconds"]}
    r = json.loads((folder / "pipeline_result.json").read_text())
    return {"seed": seed, "folder": str(folder), "validation": r["validation"], "test": r["test"],
            "best_epoch": r["best_epoch"], "residual_scale_sweep": r["residual_scale_sweep"],
            "lowpass_scale_sweep": r["lowpass_scale_sweep"], "wall": r["wall"]}


def summary(rows: list[dict]) -> dict:
    """Mean and sample std (ddof 1 from two seeds) of each split's metrics over the rows."""
    out = {}
    for split in ("validation", "test"):
        for name in METRICS:
            values = [row[split][name] for row in rows if row[split] is not None]
            if values:
                out[f"{split} {name}"] = {"mean": float(np.mean(values)),
                                          "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                                          "values": values}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the result file to write (JSON)")
    ap.add_argument("folders", type=Path, nargs="+", help="run (or reselect) folders, one per seed")
    ap.add_argument("--command", default="", help="the command that made the runs, for the record")
    ap.add_argument("--model", default="amazon_cpu", help="the model's name in the file")
    args = ap.parse_args(argv)
    rows = sorted((run_row(f) for f in args.folders), key=lambda row: row["seed"])
    result = {"model": args.model, "command": args.command, "runs": rows, "summary": summary(rows)}
    atomic_write_json(args.out, result)
    for key, s in result["summary"].items():
        print(f"{key}: {s['mean']:.4f} ± {s['std']:.4f}  {[round(v, 4) for v in s['values']]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
