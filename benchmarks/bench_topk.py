"""The ranked catalog of every evaluation: ``train.metrics.topk_from_scores`` against the argpartition top-k it
replaced, in the same process, on the same score batches.

Every validation pass, scale sweep and test ranks the whole catalog per user, once per swept scale; at 50k-100k
items that top-k was most of a sweep's time (benchmarks/RESULTS.md "Scale"). The partition form finds each row's
k-th best score (``np.partition``) and keeps the items above it plus the lowest-indexed ties, so the kept set is the
full sort's first k; the argpartition form chose among the ties at the cut as its selection algorithm happened to
(the documented rule, "ties broken by lower item index", held only inside the kept set). On continuous scores the two
rankings are the same, which this benchmark checks on every batch it times.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_topk --out benchmarks/results/bench_topk.json
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from benchmarks.bench_scale import median_seconds
from train.io_utils import atomic_write_json
from train.metrics import topk_from_scores


def argpartition_topk(scores: np.ndarray, k: int, exclude_rows: np.ndarray, exclude_cols: np.ndarray) -> np.ndarray:
    """The previous ``topk_from_scores`` (k < catalog): mask, argpartition of the negated scores, sort the k."""
    work = np.array(scores, copy=True)
    work[exclude_rows, exclude_cols] = -np.inf
    part = np.argpartition(-work, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(work, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[12_101, 50_000, 100_000])
    ap.add_argument("--batch", type=int, default=256, help="users per batch (eval.batch_size)")
    ap.add_argument("--k", type=int, default=100, help="the longest cut-off (NDCG@100)")
    ap.add_argument("--history", type=int, default=8, help="train items masked per user")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for num_items in args.items:
        scores = rng.standard_normal((args.batch, num_items)).astype(np.float32)
        exclude = [rng.choice(num_items, args.history, replace=False) for _ in range(args.batch)]
        ex_rows, ex_cols = np.repeat(np.arange(args.batch), args.history), np.concatenate(exclude)
        new = topk_from_scores(scores, args.k, exclude=exclude)
        if not np.array_equal(new, argpartition_topk(scores, args.k, ex_rows, ex_cols)):
            raise SystemExit(f"{num_items} items: the two top-k differ on continuous scores")
        partition_s = median_seconds(lambda: topk_from_scores(scores, args.k, exclude=exclude), args.rounds)
        argpartition_s = median_seconds(lambda: argpartition_topk(scores, args.k, ex_rows, ex_cols), args.rounds)
        rows.append({"items": num_items, "batch": args.batch, "k": args.k, "partition_ms": 1e3 * partition_s,
                     "argpartition_ms": 1e3 * argpartition_s, "speedup": argpartition_s / partition_s})
        print(json.dumps(rows[-1]))
    if args.out:
        atomic_write_json(args.out, {"rounds": args.rounds, "median_of_rounds": True, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
