"""Full-catalog scoring throughput (users/s) and peak memory: GraphGPT2 vs EASE on the same users.

Both sides do the whole serving step for a batch of users: score every item, mask the user's train items,
take the top-k. EASE scores with one sparse x dense product (x_u B); GraphGPT2 runs one forward pass over the
personalised predictive prompt (with the hop-distance tensor for the graph bias) and the item head. Sizes
default to Beauty 2014 (12,101 items, ~7 train items per user) and the CPU ("quick") model size. Each side runs
in its own child process so its peak RSS (ru_maxrss) is its own; an idle child (imports + inputs only) is
measured too, so the difference is what the scorer adds. Rates are medians over rounds; the ratio is
GraphGPT2 users/s divided by EASE users/s measured on this machine in the same invocation.

    OMP_NUM_THREADS=1 python -m benchmarks.speed            # ~1-2 min on one CPU thread

Training throughput (GraphGPT2 vs stock GPT-2 tokens/s) is ``benchmarks/bench_model_speed.py``.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def make_users(num_users: int, num_items: int, hist: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(num_items, size=hist, replace=False) for _ in range(num_users)]


def bench_ease(args, histories) -> list[float]:
    """users/s of x_u B + train-item mask + top-k, with a random dense B of the real size."""
    import scipy.sparse as sp

    from benchmarks.baselines import to_csr
    from train.metrics import topk_from_scores

    rng = np.random.default_rng(1)
    b = rng.standard_normal((args.items, args.items), dtype=np.float32)  # values do not change the cost
    x = to_csr(histories, args.items)
    rates = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for s in range(0, len(histories), args.batch):
            xb = x[s : s + args.batch]
            topk_from_scores(np.asarray(xb @ b), args.k, exclude=xb)
        rates.append(len(histories) / (time.perf_counter() - t0))
    assert sp.issparse(x)
    return rates


def bench_graphgpt2(args, histories) -> list[float]:
    """users/s of GraphGPT2ForRecommendation.recommend on prompts "user_u has interacted with item_a ... will"."""
    import torch

    from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation

    torch.manual_seed(0)
    cfg = GraphGPT2Config(base_vocab_size=args.vocab, num_users=args.users, num_items=args.items, graph_bias="paper",
                          n_layer=args.layers, n_embd=args.dim, n_head=args.heads, n_positions=256,
                          bos_token_id=0, eos_token_id=0)
    model = GraphGPT2ForRecommendation(cfg).eval()
    rng = np.random.default_rng(2)
    text_before, text_after = 4, 4  # "has interacted with" / "will interact with" in GPT-2 BPE tokens
    batches = []
    for s in range(0, len(histories), args.batch):
        rows = histories[s : s + args.batch]
        length = 1 + text_before + args.hist + text_after
        ids = torch.as_tensor(rng.integers(0, args.vocab, (len(rows), length)))
        node = torch.full((len(rows), length), -1)
        for r, items in enumerate(rows):
            u = s + r
            ids[r, 0], node[r, 0] = args.vocab + u, u
            pos = 1 + text_before + np.arange(args.hist)
            ids[r, pos] = torch.as_tensor(args.vocab + args.users + items)
            node[r, pos] = torch.as_tensor(args.users + items)
        # hop distances: user-item 1, item-item 2, self 0, text -1 (what the collator produces for a history)
        is_id = node >= 0
        hop = torch.full((len(rows), length, length), 2)
        is_user = is_id & (node < args.users)
        hop = torch.where(is_user.unsqueeze(2) ^ is_user.unsqueeze(1), 1, hop)
        hop = torch.where(node.unsqueeze(2) == node.unsqueeze(1), 0, hop)
        hop = torch.where(is_id.unsqueeze(2) & is_id.unsqueeze(1), hop, -1)
        batches.append((ids, hop, [list(map(int, h)) for h in rows]))
    rates = []
    with torch.no_grad():
        model.recommend(batches[0][0], hop_distances=batches[0][1], k=args.k, exclude_items=batches[0][2])  # warm-up
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for ids, hop, excl in batches:
                model.recommend(ids, hop_distances=hop, k=args.k, exclude_items=excl)
            rates.append(len(histories) / (time.perf_counter() - t0))
    return rates


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    histories = make_users(args.num_eval_users, args.items, args.hist)
    rates = {"ease": bench_ease, "graphgpt2": bench_graphgpt2, "idle": lambda a, h: []}[args.only](args, histories)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"rates": rates, "peak_rss_mib": peak_mib}))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=12101)
    p.add_argument("--users", type=int, default=22363, help="user-ID embeddings in the model")
    p.add_argument("--num-eval-users", type=int, default=512, help="users scored per round")
    p.add_argument("--hist", type=int, default=7, help="train items per user")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", choices=["ease", "graphgpt2", "idle"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.only:
        child(args)
        return {}
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    out = {}
    for part in ("idle", "ease", "graphgpt2"):
        proc = subprocess.run([sys.executable, "-m", "benchmarks.speed", *passthrough, "--only", part],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"speed child '{part}' failed:\n{proc.stderr[-2000:]}")
        out[part] = json.loads(proc.stdout.strip().splitlines()[-1])
    ease, gg = statistics.median(out["ease"]["rates"]), statistics.median(out["graphgpt2"]["rates"])
    idle = out["idle"]["peak_rss_mib"]
    print(f"{args.num_eval_users} users x {args.items} items, history {args.hist}, batch {args.batch}, top-{args.k}, "
          f"threads {args.threads}; model {args.layers}x{args.dim}, vocab {args.vocab}")
    print(f"{'scorer':<12} {'users/s (median)':>17} {'peak RSS MiB':>13} {'over idle MiB':>14}")
    for name, rate in (("EASE", ease), ("GraphGPT2", gg)):
        peak = out[name.lower()]["peak_rss_mib"]
        print(f"{name:<12} {rate:>17.1f} {peak:>13.0f} {peak - idle:>14.0f}")
    print(f"GraphGPT2 / EASE throughput ratio: {gg / ease:.3f}")
    return {"ease_users_s": ease, "graphgpt2_users_s": gg, "ratio": gg / ease, "parts": out}


if __name__ == "__main__":
    main()
