"""Is a ratio bar met, or does it sit inside the test set's own noise? A paired bootstrap over the test users.

The main preset's bar is a ratio of test means (e.g. R@20 at least 1.05x `ease_ilp`). With seeds, the table shows
the model's spread over training runs; it does not show how much the ratio itself would move on another draw of
test users from the same population. This benchmark measures that, on a finished set of runs:
- the per-user test metrics of each run's selected model (``<run>/best``, with the scales validation chose),
  averaged per user over the runs (seeds);
- the per-user test metrics of a deterministic baseline fitted at the configuration its validation grid chose
  (``--params``, given, not chosen here), through the same evaluation loop on the same split
  (``train.evaluate.evaluate_scorer``);
- ``draws`` resamples of the test users with replacement, the same draw for both sides (the pairing stays); each
  draw gives mean(model) / mean(baseline) per metric. Reported: the ratio on all users, the 2.5 / 97.5
  percentiles of the draws, and the share of draws at or above ``--bar``.

With ``--cold-shelf`` the runs are new-product runs (a folder built with ``--cold-item-frac``) and the two sides are
the runs' new-arrivals shelf (``train.cold_items.cold_item_metrics``) and content kNN on the same shelf
(``--baseline content_knn_mean`` or ``content_knn_max``, benchmarks/cold_items.py).

Nothing is chosen here: the models and the baseline configuration were chosen on validation before, and this
re-reads the test metrics the result files hold (it checks that they agree).

    python -m benchmarks.paired_bootstrap --folder outputs/qbench/toys_bpe4k \\
        --runs outputs/probe6/toys_budget1200_s0 outputs/probe6/toys_budget1200_s1 outputs/probe6/toys_budget1200_s2 \\
        --baseline ease_ilp --params '{"lambdas": [250], "ks": [512], "weights": [0.75]}' --bar 1.05 \\
        --out benchmarks/results/Toys/toys_paired_bootstrap.json
    python -m benchmarks.paired_bootstrap --folder outputs/cold/beauty --cold-shelf --baseline content_knn_mean \\
        --runs outputs/cold7/beauty_s0 outputs/cold7/beauty_s1 outputs/cold7/beauty_s2 --bar 1.2 \\
        --out benchmarks/results/Beauty/beauty_cold_paired_bootstrap.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.baselines import make_baseline
from benchmarks.cold_items import content_knn, shelf_users
from data_builders.corpus import Corpus
from data_builders.item_text import item_token_counts, tfidf_rows
from train.cold_items import cold_item_metrics, shelf_per_user
from train.common import make_accelerator
from train.config import EvalConfig, RunConfig, load_config
from train.evaluate import ModelScorer, eval_mode, evaluate_scorer
from train.io_utils import BEST_DIR, atomic_write_json
from train.metrics import metric_names
from train.modeling_io import load_model

METRICS = metric_names([20, 40], [100])  # the headline's metrics (and their paper-denominator twins)


def bootstrap_ratio(model: np.ndarray, base: np.ndarray, draws: int = 10_000, bar: float = 1.0, seed: int = 0,
                    chunk: int = 500) -> dict:
    """The ratio mean(model) / mean(base) of two paired per-user arrays and its paired bootstrap over users: the
    2.5 / 50 / 97.5 percentiles of ``draws`` resampled ratios and the share of draws >= ``bar``. Seeded; draws are
    made ``chunk`` at a time (memory: chunk x users integers)."""
    model, base = np.asarray(model, np.float64), np.asarray(base, np.float64)
    if model.shape != base.shape or model.ndim != 1 or not len(model):
        raise ValueError(f"paired per-user arrays of one shape needed, got {model.shape} and {base.shape}")
    rng = np.random.default_rng(seed)
    ratios = []
    for start in range(0, draws, chunk):
        idx = rng.integers(0, len(model), size=(min(chunk, draws - start), len(model)))
        ratios.append(model[idx].mean(axis=1) / base[idx].mean(axis=1))
    ratios = np.concatenate(ratios)
    low, mid, high = np.percentile(ratios, [2.5, 50, 97.5])
    return {"ratio": float(model.mean() / base.mean()), "ci95": [float(low), float(high)], "median": float(mid),
            "share_at_or_above_bar": float((ratios >= bar).mean()), "bar": bar, "draws": draws, "seed": seed}


def per_user_test(scorer, corpus: Corpus, cfg: RunConfig) -> tuple[np.ndarray, dict]:
    """(users, {metric: per-user test values}) of one scorer, users with a test item only, in user order."""
    result = evaluate_scorer(None, scorer, corpus, "test", cfg, per_user=True)[0]
    return _kept(np.asarray(result["users"]), result["per_user"])


def _kept(users: np.ndarray, values: dict) -> tuple[np.ndarray, dict]:
    """The users with a relevant item and their values, in user order (the pairing key of both sides)."""
    keep = np.flatnonzero(values["num_relevant"] > 0)
    keep = keep[np.argsort(users[keep], kind="stable")]
    return users[keep], {m: np.asarray(values[m])[keep] for m in METRICS}


def run_values(run_dir: Path, corpus: Corpus, cold_shelf: bool) -> tuple[np.ndarray, dict, dict]:
    """Per-user test values of a finished run's selected model, and the test means its result files hold: the
    whole catalog, or (``cold_shelf``) the new-arrivals shelf of a cold-item folder."""
    cfg = load_config(run_dir / "run_config.yaml")
    model = load_model(run_dir / BEST_DIR)
    accelerator = make_accelerator(cfg, run_dir)
    if cold_shelf:
        shelf = cold_item_metrics(accelerator, model, corpus, "test", cfg, per_user=True)["shelf"]
        recorded = json.loads((run_dir / "finetune_result.json").read_text())["cold_items_test"]["shelf"]
        return *_kept(shelf["users"], shelf["per_user"]), recorded
    scorer = ModelScorer(accelerator, model, corpus, cfg)
    with eval_mode(scorer.net):
        users, values = per_user_test(scorer, corpus, cfg)
    return users, values, json.loads((run_dir / "metrics_test.json").read_text())


def baseline_values(corpus: Corpus, name: str, params: dict, cold_shelf: bool) -> tuple[np.ndarray, dict]:
    """Per-user test values of a baseline: a catalog baseline fitted on train (``params``: its chosen grid cell),
    or on the shelf content kNN ("content_knn_mean" / "content_knn_max", benchmarks/cold_items.py)."""
    cfg = RunConfig(eval=EvalConfig(batch_size=1024))
    if not cold_shelf:
        fitted = make_baseline(name, **params).fit(corpus.interaction_matrix("train"), corpus.interaction_matrix("validation"))
        return per_user_test(fitted, corpus, cfg)
    if name not in ("content_knn_mean", "content_knn_max"):
        raise SystemExit(f"--cold-shelf compares with content_knn_mean or content_knn_max, not {name!r}")
    users, targets = shelf_users(corpus, "test")
    candidates = corpus.cold_items("test")
    scores = content_knn(tfidf_rows(item_token_counts(corpus)), corpus.hops.graph.ui[users], candidates,
                         name.rsplit("_", 1)[1])
    return _kept(users, shelf_per_user(scores, candidates, targets, cfg.eval.recall_ks, cfg.eval.ndcg_ks))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="the dataset folder the runs were trained on")
    parser.add_argument("--runs", nargs="+", required=True, help="finished run folders (one per seed)")
    parser.add_argument("--baseline", default="ease_ilp")
    parser.add_argument("--params", default="{}", help="JSON keyword arguments of the baseline (its chosen grid cell)")
    parser.add_argument("--cold-shelf", action="store_true",
                        help="compare on the new-arrivals shelf of a cold-item folder (runs built with --cold-item-frac)")
    parser.add_argument("--bar", type=float, default=1.05)
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    t0 = time.time()
    corpus = Corpus(args.folder)
    per_run, users = [], None
    for run in args.runs:
        run_users, values, recorded = run_values(Path(run), corpus, args.cold_shelf)
        if users is not None and not np.array_equal(users, run_users):
            raise SystemExit(f"{run}: its test users differ from the first run's (another split?)")
        for m in METRICS:  # the same model and split must give the test means on record
            if abs(values[m].mean() - recorded[m]) > 1e-6:
                raise SystemExit(f"{run}: {m} {values[m].mean():.6f} here against {recorded[m]:.6f} on record")
        users = run_users
        per_run.append(values)
    params = json.loads(args.params)
    base_users, base = baseline_values(corpus, args.baseline, params, args.cold_shelf)
    if not np.array_equal(users, base_users):
        raise SystemExit("the baseline's test users differ from the runs'")
    result = {"folder": args.folder, "runs": args.runs, "baseline": args.baseline, "params": params,
              "cold_shelf": args.cold_shelf, "users": int(len(users)), "metrics": {}}
    for m in METRICS:
        model_mean = np.mean([v[m] for v in per_run], axis=0)  # each user's value averaged over the seeds
        result["metrics"][m] = {
            "model_mean": float(model_mean.mean()), "baseline_mean": float(base[m].mean()),
            "per_run_ratio": [float(v[m].mean() / base[m].mean()) for v in per_run],
            **bootstrap_ratio(model_mean, base[m], draws=args.draws, bar=args.bar)}
    result["seconds"] = time.time() - t0
    atomic_write_json(Path(args.out), result)
    for m in ("recall@20", "recall@40", "ndcg@100"):
        r = result["metrics"][m]
        print(f"{m}: {r['model_mean']:.4f} / {r['baseline_mean']:.4f} = {r['ratio']:.4f}x "
              f"(95 % CI {r['ci95'][0]:.4f}-{r['ci95'][1]:.4f}; draws >= {args.bar}: {r['share_at_or_above_bar']:.3f})")
    return result


if __name__ == "__main__":
    main()
