"""Evaluation memory against the number of users (issue 8): full-catalog ranking of every test user streams.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_eval_scale --sizes 30000:20000:240000 100000:20000:800000 \
        --work /tmp/bench_eval_scale --out benchmarks/results/eval_scale.json

Per size: generate a power-law set (``data_builders.powerlaw``, exponent 0.9), split it (5-core, seed 98765) and
build only the ``recommendation`` config with the GPT-2 tokenizer (one subprocess); then, in a fresh subprocess
(so the peak RSS is the evaluation's own), open the folder, make a randomly initialised small model (1 layer x 32,
graph bias on; the weights do not change the memory) and run ``train.evaluate.evaluate_model`` on the test split
with one process. Reported: RSS after opening the folder and model, peak RSS of the whole evaluation process, wall
and CPU seconds, and the size a dense users x items float32 score matrix would have had.

``--eval-only FOLDER`` runs just the evaluation subprocess on a built folder (e.g. with ``PYTHONPATH`` set to
another checkout, to measure other code on the same folder). ``--recommend-all FOLDER`` instead times
``train.recommend``'s ``Recommender.write_all`` (top-20 of every user as JSON lines, what ``recommend --all`` runs)
with the same model, writing to ``--recs-out``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from data_builders.corpus import has_manifest

ROOT = Path(__file__).resolve().parents[1]
GPT2_TOKENIZER = ROOT.parent / "shared" / "tokenizers" / "gpt2"


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _rss_now_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**3


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(users: int, items: int, edges: int, folder: Path, seed: int) -> dict:
    from data_builders.folder import build_dataset_folder
    from data_builders.powerlaw import make_powerlaw
    from data_builders.preprocess import build_split
    from data_builders.prompts import PromptConfig

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    split = build_split(make_powerlaw(users, items, edges, seed=seed), k_core=5, seed=98765)
    built = build_dataset_folder(split, folder, tokenizer_source=GPT2_TOKENIZER,
                                 prompt_config=PromptConfig(configs=("recommendation",)), overwrite=True)
    return {"users_requested": users, "items_requested": items, "edges_requested": edges, "seed": seed,
            "build_wall_s": time.perf_counter() - t0, "build_cpu_s": _cpu_seconds() - cpu0,
            "build_peak_rss_gib": _peak_rss_gib(), "rows": built.manifest["rows"]["recommendation"]}


def _open(folder: Path, batch_size: int, max_length: int):
    """The folder's Corpus, the run config and a randomly initialised small model (weights do not change memory)."""
    import torch

    from data_builders.corpus import Corpus
    from train.common import build_model
    from train.config import load_config

    corpus = Corpus(folder)
    cfg = load_config("demo", [f"data.folder={folder}", f"data.max_length={max_length}", "model.n_layer=1", "model.n_embd=32",
                               "model.n_head=2", f"model.n_positions={max_length}", f"eval.batch_size={batch_size}"])
    torch.manual_seed(0)
    return corpus, cfg, build_model(cfg, corpus).eval()


def evaluate(folder: Path, batch_size: int, max_length: int = 1024) -> dict:
    from accelerate import Accelerator

    from train.evaluate import evaluate_model

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    corpus, cfg, model = _open(folder, batch_size, max_length)
    acc = Accelerator(cpu=True)
    out = {"users": corpus.num_users, "items": corpus.num_items, "train_edges": corpus.num_edges,
           "open_s": time.perf_counter() - t0, "rss_after_open_gib": _rss_now_gib(), "peak_rss_after_open_gib": _peak_rss_gib()}
    t, cpu = time.perf_counter(), _cpu_seconds()
    metrics = evaluate_model(acc, model, corpus, "test", cfg)
    out.update(eval_wall_s=time.perf_counter() - t, eval_cpu_s=_cpu_seconds() - cpu, total_cpu_s=_cpu_seconds() - cpu0,
               peak_rss_gib=_peak_rss_gib(), rss_end_gib=_rss_now_gib(), test_users=metrics["num_users"] + metrics["num_skipped"],
               recall_at_20=metrics["recall@20"], batch_size=batch_size, max_length=max_length,
               dense_scores_gib=corpus.num_users * corpus.num_items * 4 / 1024**3)
    return out


def recommend_all(folder: Path, batch_size: int, max_length: int, recs_out: Path) -> dict:
    from train.recommend import Recommender

    t0 = time.perf_counter()
    corpus, _, model = _open(folder, batch_size, max_length)
    rec = Recommender.from_corpus(model, corpus, max_length)
    out = {"users": corpus.num_users, "items": corpus.num_items, "train_edges": corpus.num_edges,
           "open_s": time.perf_counter() - t0, "rss_after_open_gib": _rss_now_gib(), "peak_rss_after_open_gib": _peak_rss_gib()}
    t, cpu = time.perf_counter(), _cpu_seconds()
    rec.write_all(recs_out, k=20, batch_size=batch_size)
    with open(recs_out, "rb") as f:
        lines = sum(1 for _ in f)
    out.update(write_all_wall_s=time.perf_counter() - t, write_all_cpu_s=_cpu_seconds() - cpu, peak_rss_gib=_peak_rss_gib(),
               rss_end_gib=_rss_now_gib(), lines=lines, recs_bytes=recs_out.stat().st_size, batch_size=batch_size,
               max_length=max_length, dense_scores_gib=corpus.num_users * corpus.num_items * 4 / 1024**3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["30000:20000:240000", "100000:20000:800000"], help="users:items:edges")
    p.add_argument("--work", default="/tmp/bench_eval_scale", help="where the dataset folders are built")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_scale.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=1024, help="prompt tokens (longer histories cut from the left)")
    p.add_argument("--eval-only", default=None, metavar="FOLDER", help="only the evaluation subprocess, on FOLDER")
    p.add_argument("--recommend-all", default=None, metavar="FOLDER", help="time recommend --all (write_all) on FOLDER")
    p.add_argument("--recs-out", default="/tmp/bench_eval_scale_recs.jsonl", help="where --recommend-all writes")
    p.add_argument("--build-one", default=None, help=argparse.SUPPRESS)  # internal: users:items:edges:folder
    args = p.parse_args(argv)
    if args.build_one:
        u, i, e, folder = args.build_one.split(":", 3)
        print(json.dumps(build(int(u), int(i), int(e), Path(folder), args.seed)))
        return 0
    if args.recommend_all:
        print(json.dumps(recommend_all(Path(args.recommend_all), args.batch_size, args.max_length, Path(args.recs_out))))
        return 0
    if args.eval_only:
        print(json.dumps(evaluate(Path(args.eval_only), args.batch_size, args.max_length)))
        return 0
    results = []
    for size in args.sizes:
        u, i, e = size.split(":")
        folder = Path(args.work) / f"pl_{u}_{i}_{e}"
        me = [sys.executable, "-m", "benchmarks.bench_eval_scale", "--seed", str(args.seed), "--batch-size", str(args.batch_size),
              "--max-length", str(args.max_length)]
        if not has_manifest(folder):
            built = json.loads(subprocess.run(me + ["--build-one", f"{u}:{i}:{e}:{folder}"], cwd=ROOT, check=True,
                                              capture_output=True, text=True).stdout.strip().splitlines()[-1])
        else:
            built = {"users_requested": int(u), "items_requested": int(i), "edges_requested": int(e), "reused_folder": True}
        ev = json.loads(subprocess.run(me + ["--eval-only", str(folder)], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout.strip().splitlines()[-1])
        results.append({**built, **ev})
        print(json.dumps(results[-1]), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
