"""Latency of the Hub pipeline next to ``train.recommend`` on the same published folder, in one process.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_pipeline --model outputs/demo/hub_model [--users 200] [--k 20]

One user: ``pipeline({"user": raw_id})`` vs ``Recommender.recommend_users([u])`` (interleaved, same users), p50 /
p95 in ms. Batches: users/s over the first ``--users`` users in batches of ``--batch-size`` for both. Ratio =
pipeline time / train.recommend time (target <= 1.2). Both must return the same items (checked). JSON to
``--out`` when given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch


def _pct(ms: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def bench(model_dir: str, n_users: int, k: int, batch_size: int, repeats: int) -> dict:
    from transformers import pipeline

    from train.recommend import Recommender

    t0 = time.perf_counter()
    pipe = pipeline("graph-recommendation", model=model_dir, trust_remote_code=True)
    load_pipe = time.perf_counter() - t0
    t0 = time.perf_counter()
    rec = Recommender.from_folder(model_dir)
    load_rec = time.perf_counter() - t0
    raw_ids = pipe.recommender.user_ids
    users = list(range(min(n_users, len(raw_ids))))
    # warm-up (first forward pays allocation / lazy init on both paths)
    pipe({"user": raw_ids[0]}, top_k=k)
    rec.recommend_users([0], k)

    one_pipe, one_rec = [], []
    for u in users:
        t0 = time.perf_counter()
        a = pipe({"user": raw_ids[u]}, top_k=k)
        one_pipe.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        b = rec.recommend_users([u], k)[0]
        one_rec.append((time.perf_counter() - t0) * 1e3)
        if [r["item_id"] for r in a] != [rec.item_ids[j] for j, _ in b]:
            raise AssertionError(f"pipeline and train.recommend disagree for user {u}")

    requests = [{"user": raw_ids[u]} for u in users]
    best_pipe, best_rec = float("inf"), float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        pipe(requests, top_k=k, batch_size=batch_size)
        best_pipe = min(best_pipe, time.perf_counter() - t0)
        t0 = time.perf_counter()
        rec.recommend_users(users, k, batch_size)
        best_rec = min(best_rec, time.perf_counter() - t0)
    cfg = rec.model.config
    single_pipe, single_rec = _pct(one_pipe), _pct(one_rec)
    return {
        "model": model_dir,
        "model_size": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "num_users": cfg.num_users, "num_items": cfg.num_items,
                       "parameters": sum(p.numel() for p in rec.model.parameters())},
        "hop_table": pipe.recommender.graph.table is not None,
        "threads": torch.get_num_threads(),
        "k": k, "users": len(users), "batch_size": batch_size,
        "load_s": {"pipeline": round(load_pipe, 3), "train.recommend": round(load_rec, 3)},
        "one_user": {"pipeline": single_pipe, "train.recommend": single_rec,
                     "ratio_p50": round(single_pipe["p50_ms"] / single_rec["p50_ms"], 3)},
        "batched_users_per_s": {"pipeline": round(len(users) / best_pipe, 1), "train.recommend": round(len(users) / best_rec, 1),
                                "ratio_time": round(best_pipe / best_rec, 3)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="published folder (train.publish output) or repo id")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3, help="batched timing: best of N")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = bench(args.model, args.users, args.k, args.batch_size, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
