"""The neighbourhood EASE fit's Gram blocks (issue "Scale"): the hub table (``data_builders.item_graph.HubCounts``)
against the per-item sparse product it replaced, on the same sampled blocks of a power-law set, in one process.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_ease_neighbourhood --sizes 200000:100000:2000000 \
        1000000:200000:10000000 --blocks 3 --out benchmarks/results/ease_neighbourhood_grams.json

For each size: the users x items matrix of ``data_builders.powerlaw.make_powerlaw``'s pair law (made here without
the item text, which this fit never reads), ``--blocks`` blocks of 512 consecutive target items at seeded random
starts, each target's K = 256 most co-held items (``neighbour_sets``), then the K x K Grams X_N^T X_N both ways. The
two must be equal to the last bit (checked); the times of the Gram step, of the batched Cholesky solve that
follows it, and the extrapolation of both to the whole catalog are written out.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp
import torch

from data_builders.item_graph import HubCounts, neighbour_sets
from train.io_utils import atomic_write_json


def powerlaw_matrix(num_users: int, num_items: int, num_edges: int, exponent: float = 0.9, seed: int = 0,
                    min_degree: int = 5, user_shape: float = 1.5) -> sp.csr_matrix:
    """The (user, item) pairs ``make_powerlaw`` draws with the same arguments (its first draws, in its order),
    as a binary CSR, without its top-up draws, metadata and reviews."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, num_items + 1) ** exponent
    pop = pop[rng.permutation(num_items)]
    pop /= pop.sum()
    extra = num_edges - min_degree * (num_users + num_items)
    weight = rng.pareto(user_shape, size=num_users) + 1e-3
    degrees = min_degree + np.minimum(np.floor(weight / weight.sum() * extra).astype(np.int64), num_items // 2)
    n_slots = int(degrees.sum()) + min_degree * num_items
    slots = np.concatenate([np.repeat(np.arange(num_items), min_degree),
                            rng.choice(num_items, size=n_slots - min_degree * num_items, p=pop)])
    rng.shuffle(slots)
    owners = np.repeat(np.arange(num_users), degrees)
    owners = np.concatenate([owners, rng.integers(0, num_users, size=len(slots) - len(owners))])
    pairs = np.unique(owners.astype(np.int64) * num_items + slots)
    return sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs // num_items, pairs % num_items)),
                         shape=(num_users, num_items))


def per_item_product_grams(by_item: sp.csr_matrix, sets: np.ndarray) -> np.ndarray:
    """The previous Gram step: one sparse product of each neighbour set's user lists."""
    k = sets.shape[1]
    gram = np.zeros((len(sets), k, k))
    for r in range(len(sets)):
        members = sets[r][sets[r] >= 0]
        sub = by_item[members]
        gram[r, : len(members), : len(members)] = (sub @ sub.T).toarray()
    return gram


def run_size(size: str, blocks: int, neighbours: int, hub_items: int, block_items: int = 512) -> dict:
    num_users, num_items, num_edges = (int(v) for v in size.split(":"))
    x = powerlaw_matrix(num_users, num_items, num_edges)
    by_item = sp.csr_matrix(x.T)
    k = min(neighbours, num_items - 1)
    t = time.perf_counter()
    hubs = HubCounts(x, by_item, hub_items)
    table_s = time.perf_counter() - t
    seconds = {"per_item_product": 0.0, "hub_table": 0.0, "solve": 0.0}
    starts = np.random.default_rng(0).integers(0, num_items - block_items, size=blocks)
    for start in starts:
        targets = np.arange(start, start + block_items)
        counts = (by_item[targets] @ x).tocsr()
        counts.sort_indices()
        sets = neighbour_sets(counts, targets, k, num_items)
        t = time.perf_counter()
        before = per_item_product_grams(by_item, sets)
        seconds["per_item_product"] += time.perf_counter() - t
        t = time.perf_counter()
        after = hubs.grams(x, by_item, sets)
        seconds["hub_table"] += time.perf_counter() - t
        if not np.array_equal(before, after):
            raise AssertionError(f"{size}: the hub table's Grams differ from the per-item products")
        t = time.perf_counter()
        after[:, np.arange(k), np.arange(k)] += 100.0
        torch.linalg.cholesky(torch.from_numpy(after))
        seconds["solve"] += time.perf_counter() - t
    whole = num_items / block_items / blocks
    return {"size": size, "train_pairs": int(x.nnz), "neighbours": k, "hub_items": hub_items, "blocks": blocks,
            "block_items": block_items, "hub_table_build_s": round(table_s, 2), "grams_equal": True,
            "sampled_s": {n: round(v, 2) for n, v in seconds.items()},
            "gram_speedup": round(seconds["per_item_product"] / seconds["hub_table"], 2),
            "extrapolated_whole_catalog_s": {n: round(v * whole, 1) for n, v in seconds.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["200000:100000:2000000"], help="users:items:edges")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--neighbours", type=int, default=256)
    p.add_argument("--hub-items", type=int, default=8192)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for size in args.sizes:
        results.append(run_size(size, args.blocks, args.neighbours, args.hub_items))
        print(json.dumps(results[-1]), flush=True)
        if args.out:
            atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
