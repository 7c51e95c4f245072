"""Benchmark: full Beauty build (all configs, GPT-2 tokenizer) and hop distances vs networkx / Floyd-Warshall.

    OMP_NUM_THREADS=1 python benchmarks/bench_build.py [--data ../shared/data/amazon-beauty-2014] [--out /tmp/beauty_ds]

Prints wall time and peak RSS of the build, then the BFS hop-table time against
(a) networkx single_source_shortest_path_length(cutoff=max_hops) on a sample of sources, extrapolated to all N, and
(b) scipy dense Floyd-Warshall on an induced subgraph, against BFS on the same subgraph. Ratios are same-process.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-beauty-2014"))
    ap.add_argument("--out", default="/tmp/graphgpt2_bench_beauty")
    ap.add_argument("--nx-sources", type=int, default=200)
    ap.add_argument("--fw-nodes", type=int, default=3000)
    args = ap.parse_args()

    import networkx as nx
    from scipy.sparse.csgraph import floyd_warshall

    from data_builders.folder import build_dataset_folder
    from data_builders.graph import InteractionGraph
    from data_builders.preprocess import build_split
    from data_builders.readers import read_source

    out = Path(args.out)
    t0 = time.perf_counter()
    split = build_split(read_source(args.data))
    t_split = time.perf_counter() - t0
    res = build_dataset_folder(split, out, overwrite=True, progress=False)
    t_total = time.perf_counter() - t0
    m = res.manifest
    print(f"Beauty build: users {m['num_users']:,} items {m['num_items']:,} edges {m['graph']['num_edges']:,}")
    print(f"  rows: {m['rows']}")
    print(f"  read+split {t_split:.1f} s; stages {m['build_seconds']}")
    print(f"  TOTAL wall {t_total:.1f} s, peak RSS {peak_rss_gib():.2f} GiB, folder {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1024**3:.2f} GiB")

    g = InteractionGraph.from_split(split)
    N, H = g.num_nodes, m["max_hops"]
    t = time.perf_counter()
    table = g.hop_table(H)
    t_bfs = time.perf_counter() - t
    print(f"BFS hop table: N={N:,} in {t_bfs:.1f} s ({t_bfs / N * 1e3:.2f} ms/source)")

    G = nx.Graph()
    G.add_nodes_from(range(N))
    G.add_edges_from((int(u), g.num_users + int(i)) for u, i in g.edges)
    rng = np.random.default_rng(0)
    sources = rng.choice(N, size=args.nx_sources, replace=False)
    t = time.perf_counter()
    mismatches = 0
    for s in sources:
        row = np.full(N, H + 1, np.uint8)
        for v, d in nx.single_source_shortest_path_length(G, int(s), cutoff=H).items():
            row[v] = d
        mismatches += int((row != table[s]).sum())
    t_nx = (time.perf_counter() - t) / len(sources) * N
    print(f"networkx (cutoff={H}) on {len(sources)} sources, extrapolated to N: {t_nx:.1f} s -> BFS speed-up x{t_nx / t_bfs:.1f}; mismatches {mismatches}")

    # Floyd-Warshall on the subgraph induced by the first n users and their items (capped to fw-nodes in all)
    keep_u = np.arange(min(g.num_users, args.fw_nodes // 2))
    e = g.edges[np.isin(g.edges[:, 0], keep_u)]
    items = np.unique(e[:, 1])[: args.fw_nodes - len(keep_u)]
    e = e[np.isin(e[:, 1], items)]
    remap = {j: k for k, j in enumerate(items.tolist())}
    sub = InteractionGraph(np.stack([e[:, 0], [remap[j] for j in e[:, 1].tolist()]], 1), len(keep_u), len(items))
    t = time.perf_counter()
    sub_bfs = sub.hop_table(H)
    t_sub_bfs = time.perf_counter() - t
    t = time.perf_counter()
    fw = floyd_warshall(sub.adjacency(), directed=False, unweighted=True)
    t_fw = time.perf_counter() - t
    fw_capped = np.where(np.isfinite(fw) & (fw <= H), fw, H + 1).astype(np.uint8)
    print(f"Floyd-Warshall on a {sub.num_nodes:,}-node subgraph: {t_fw:.2f} s vs BFS {t_sub_bfs:.2f} s -> x{t_fw / t_sub_bfs:.1f}; "
          f"equal: {bool((fw_capped == sub_bfs).all())}; FW extrapolated (N^3) to Beauty: {t_fw * (N / sub.num_nodes) ** 3 / 3600:.1f} h")
    print(f"peak RSS at end {peak_rss_gib():.2f} GiB")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
