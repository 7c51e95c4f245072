"""The user-item interaction graph (train edges only) and its capped hop distances.

Nodes follow DESIGN.md section 1: users ``0..U-1``, items ``U..U+I-1``. ``hop(a, b)`` is the unweighted
shortest-path length capped at ``max_hops``; ``max_hops + 1`` means farther or unreachable.

Distances come from a breadth-first search run for a block of sources at once: the frontier is a dense
(nodes x block) 0/1 matrix and one hop is one sparse-matrix product with the bipartite adjacency. Because
the graph is bipartite, a user frontier only ever reaches items and vice versa, so each hop multiplies by
one half of the adjacency (cost ``E * block`` per hop). Never a dense all-pairs Floyd-Warshall.

Rows of a dataset carry their own pair matrices (``pair_hops.py``, measured per row by meet-in-the-middle), so
nothing here needs to be N x N. ``HopDistances`` keeps a dense uint8 N x N table only when asked
(``table_budget_bytes`` > N * N; default 0); without it ``pairwise`` / ``row_matrices`` search per row. The block
BFS (``bfs_rows``, ``hop_table``) remains for the opt-in table and as a reference in tests.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from modeling_graphgpt2.folder_layout import EDGES_FILE, GRAPH_META_FILE, HOP_TABLE_FILE
from modeling_graphgpt2.pipeline_graphgpt2 import graph_sha256

from .atomic import atomic_save_npy, atomic_write_text
from .pair_hops import gather_row_hops, pair_distances, row_hop_matrices, row_nodes

DEFAULT_MAX_HOPS = 6
# No dense N x N table by default: rows carry their own pair matrices (pair_hops.py) and the few pairs of a
# raw history are measured on the fly. A table is an opt-in cache for small graphs (budget in bytes).
DEFAULT_TABLE_BUDGET_BYTES = 0


def train_edges(train: list[np.ndarray]) -> np.ndarray:
    """(E, 2) int32 array of unique (user index, item index) pairs from per-user train item arrays."""
    users = np.repeat(np.arange(len(train), dtype=np.int64), [len(t) for t in train])
    items = np.concatenate([np.asarray(t, dtype=np.int64) for t in train]) if train else np.zeros(0, np.int64)
    edges = np.unique(np.stack([users, items], axis=1), axis=0) if len(users) else np.zeros((0, 2), np.int64)
    return edges.astype(np.int32)


class InteractionGraph:
    """Bipartite user-item graph from TRAIN pairs. ``ui`` is the (U, I) CSR biadjacency, ``iu`` its transpose."""

    def __init__(self, edges: np.ndarray, num_users: int, num_items: int):
        edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
        if len(edges):
            if edges[:, 0].min() < 0 or edges[:, 0].max() >= num_users:
                raise ValueError(f"edge user index out of range [0, {num_users})")
            if edges[:, 1].min() < 0 or edges[:, 1].max() >= num_items:
                raise ValueError(f"edge item index out of range [0, {num_items})")
        self.num_users = int(num_users)
        self.num_items = int(num_items)
        self.edges = np.unique(edges, axis=0).astype(np.int32) if len(edges) else np.zeros((0, 2), np.int32)
        data = np.ones(len(self.edges), dtype=np.float32)
        self.ui = sp.csr_matrix((data, (self.edges[:, 0], self.edges[:, 1])), shape=(num_users, num_items))
        self.iu = self.ui.T.tocsr()

    @classmethod
    def from_split(cls, split) -> "InteractionGraph":
        """Graph of a SplitDataset's TRAIN interactions (validation/test never become edges)."""
        return cls(train_edges(split.train), split.num_users, split.num_items)

    @property
    def num_nodes(self) -> int:
        return self.num_users + self.num_items

    @property
    def sha256(self) -> str:
        return graph_sha256(self.edges, self.num_users, self.num_items)

    def adjacency(self) -> sp.csr_matrix:
        """Symmetric (N, N) node adjacency (for tests and external tools)."""
        U, I = self.num_users, self.num_items
        return sp.bmat([[None, self.ui], [self.iu, None]], format="csr", dtype=np.float32) if U and I else sp.csr_matrix((U + I, U + I))

    def bfs_rows(self, sources: np.ndarray, max_hops: int = DEFAULT_MAX_HOPS, block: int = 512) -> np.ndarray:
        """Capped hop distances (len(sources), N) uint8 from each source node, by block frontier BFS."""
        sources = np.asarray(sources, dtype=np.int64).ravel()
        N = self.num_nodes
        if len(sources) and (sources.min() < 0 or sources.max() >= N):
            raise ValueError(f"source node out of range [0, {N})")
        if max_hops + 1 > 255:
            raise ValueError("max_hops must be < 255 for a uint8 table")
        out = np.full((len(sources), N), max_hops + 1, dtype=np.uint8)
        for start in range(0, len(sources), block):
            src = sources[start : start + block]
            out[start : start + len(src)] = self._bfs_block(src, max_hops).T
        return out

    def _bfs_block(self, src: np.ndarray, max_hops: int) -> np.ndarray:
        """(N, b) distances for a block of sources; frontiers live column-wise as (side nodes, b) 0/1 floats."""
        U, I, b = self.num_users, self.num_items, len(src)
        far = max_hops + 1
        dist_u = np.full((U, b), far, dtype=np.uint8)
        dist_i = np.full((I, b), far, dtype=np.uint8)
        cols = np.arange(b)
        is_user = src < U
        # hop 0: each source reaches itself. Frontiers on each side (some sources start on the item side).
        front_u = np.zeros((U, b), dtype=np.float32)
        front_i = np.zeros((I, b), dtype=np.float32)
        front_u[src[is_user], cols[is_user]] = 1.0
        front_i[src[~is_user] - U, cols[~is_user]] = 1.0
        dist_u[src[is_user], cols[is_user]] = 0
        dist_i[src[~is_user] - U, cols[~is_user]] = 0
        for hop in range(1, max_hops + 1):
            # users -> items through ui^T (= iu), items -> users through ui. Both sides advance at once
            # because user sources and item sources share the block.
            reach_i = (self.iu @ front_u) > 0 if U and I else np.zeros((I, b), bool)
            reach_u = (self.ui @ front_i) > 0 if U and I else np.zeros((U, b), bool)
            new_i = reach_i & (dist_i == far)
            new_u = reach_u & (dist_u == far)
            if not new_i.any() and not new_u.any():
                break
            dist_i[new_i] = hop
            dist_u[new_u] = hop
            front_i = new_i.astype(np.float32)
            front_u = new_u.astype(np.float32)
        return np.concatenate([dist_u, dist_i], axis=0)

    def hop_table(self, max_hops: int = DEFAULT_MAX_HOPS, block: int = 512, progress: bool = False) -> np.ndarray:
        """Dense (N, N) uint8 table of capped hop distances (symmetric)."""
        N = self.num_nodes
        table = np.empty((N, N), dtype=np.uint8)
        starts = range(0, N, block)
        if progress:
        
            starts = tqdm(starts, desc="hop distances (BFS)", unit="block", disable=None)  # a bar on a terminal only
        for start in starts:
            src = np.arange(start, min(N, start + block))
            table[src] = self._bfs_block(src, max_hops).T
        return table


class HopDistances:
    """Capped hop distances with a vectorised ``pairwise`` lookup for the collator.

    Dense uint8 table when ``N*N`` bytes fit ``table_budget_bytes`` (opt-in; default 0); otherwise
    ``pairwise`` and ``row_matrices`` search each row's pairs (``pair_hops``); ``rows`` (whole BFS rows, LRU
    cache of ``cache_rows``) is kept for tests and tools.
    """

    def __init__(
        self,
        graph: InteractionGraph,
        max_hops: int = DEFAULT_MAX_HOPS,
        table: np.ndarray | None = None,
        table_budget_bytes: int = DEFAULT_TABLE_BUDGET_BYTES,
        cache_rows: int = 4096,
        progress: bool = False,
    ):
        self.graph = graph
        self.max_hops = int(max_hops)
        self.num_nodes = graph.num_nodes
        self.cache_rows = int(cache_rows)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        if table is not None:
            if table.shape != (self.num_nodes, self.num_nodes) or table.dtype != np.uint8:
                raise ValueError(f"hop table must be uint8 ({self.num_nodes}, {self.num_nodes}), got {table.dtype} {table.shape}")
            self.table = table
        elif self.num_nodes**2 <= table_budget_bytes:
            self.table = graph.hop_table(self.max_hops, progress=progress)
        else:
            self.table = None

    @property
    def is_dense(self) -> bool:
        return self.table is not None

    def rows(self, nodes: Iterable[int]) -> np.ndarray:
        """(len(nodes), N) uint8 distance rows; missing rows computed in one BFS block and cached."""
        nodes = np.asarray(list(nodes) if not isinstance(nodes, np.ndarray) else nodes, dtype=np.int64).ravel()
        if self.table is not None:
            return np.asarray(self.table[nodes])
        missing = np.array(sorted({int(n) for n in nodes} - set(self._cache)), dtype=np.int64)
        if len(missing):
            fresh = self.graph.bfs_rows(missing, self.max_hops)
            for n, row in zip(missing.tolist(), fresh):
                self._cache[n] = row
        out = np.empty((len(nodes), self.num_nodes), dtype=np.uint8)
        for k, n in enumerate(nodes.tolist()):
            out[k] = self._cache[n]
            self._cache.move_to_end(n)
        while len(self._cache) > max(self.cache_rows, len(set(nodes.tolist()))):
            self._cache.popitem(last=False)
        return out

    def distance(self, a: int, b: int) -> int:
        return int(pair_distances(self.graph, np.array([a]), np.array([b]), self.max_hops)[0])

    def row_matrices(self, node_rows: list, leave_user_out: bool = False) -> list[np.ndarray]:
        """Per row of node positions, the (k, k) uint8 hops over its distinct nodes (``pair_hops.row_hop_matrices``)."""
        return row_hop_matrices(self.graph, node_rows, self.max_hops, leave_user_out=leave_user_out)

    def pairwise(self, node_positions: np.ndarray) -> np.ndarray:
        """(B, L) node indices with -1 for non-ID tokens -> (B, L, L) int16, -1 where either token is not a node."""
        pos = np.asarray(node_positions)
        if pos.ndim != 2:
            raise ValueError(f"node_positions must be (B, L), got shape {pos.shape}")
        if pos.size and pos.max() >= self.num_nodes:
            raise ValueError(f"node index {int(pos.max())} out of range for a graph of {self.num_nodes} nodes")
        is_node = pos >= 0
        safe = np.where(is_node, pos, 0).astype(np.int64)
        if self.table is None:  # per-row pair search (no global BFS)
            return gather_row_hops(self.row_matrices(list(pos)), [row_nodes(p)[1] for p in pos], pos.shape[1])
        hops = self.table[safe[:, :, None], safe[:, None, :]].astype(np.int16)
        hops[~(is_node[:, :, None] & is_node[:, None, :])] = -1
        return hops

    def leave_user_out(self, hops: np.ndarray, node_positions: np.ndarray) -> np.ndarray:
        """Re-measure item-item hops of a prompt as if the prompt's own user were not in the graph.

        In a personalized prompt ("user_i has interacted with item_a item_b ...") every item is one of user_i's
        train items, so on the full graph every item pair is 2 hops apart through user_i and the bias carries no
        information. Here a pair of the user's items is 2 hops apart only if ANOTHER train user interacted with
        both; otherwise it gets 4, a lower bound of the detour (the exact distance is not searched for).
        The user of a row is its first user node; rows without one, and all other pairs, are unchanged.
        """
        pos = np.asarray(node_positions)
        out = np.array(hops, copy=True)
        U = self.graph.num_users
        far = min(4, self.max_hops + 1)
        co = self._co_counts()
        for b in range(pos.shape[0]):  # one row at a time; pairs are handled by array ops
            row = pos[b]
            users = row[(row >= 0) & (row < U)]
            if not len(users):
                continue
            own = self.graph.ui[int(users[0])].indices  # the user's train items
            item_tok = np.flatnonzero((row >= U) & np.isin(row - U, own))
            if len(item_tok) < 2:
                continue
            items = row[item_tok] - U
            uniq, inv = np.unique(items, return_inverse=True)
            others = co[uniq][:, uniq].toarray() - 1  # co-interactions by users other than this one
            new = np.where(others >= 1, 2, far).astype(out.dtype)
            new[np.arange(len(uniq)), np.arange(len(uniq))] = 0  # the same item twice stays 0 hops
            out[b, item_tok[:, None], item_tok[None, :]] = new[inv[:, None], inv[None, :]]
        return out

    def _co_counts(self) -> sp.csr_matrix:
        """(I, I) number of train users who interacted with both items (computed once)."""
        if getattr(self, "_co", None) is None:
            self._co = (self.graph.iu @ self.graph.ui).tocsr()
        return self._co

    # ---------------------------------------------------------------- save / load
    def save(self, directory: str | os.PathLike, save_table: bool = True) -> str:
        """Write train edges (+ the hop table if dense and ``save_table``) into ``directory``; returns the graph sha256."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_save_npy(d / EDGES_FILE, self.graph.edges)
        wrote_table = bool(save_table and self.table is not None)
        if wrote_table:
            atomic_save_npy(d / HOP_TABLE_FILE, np.ascontiguousarray(self.table))
        meta = {
            "num_users": self.graph.num_users,
            "num_items": self.graph.num_items,
            "num_edges": int(len(self.graph.edges)),
            "max_hops": self.max_hops,
            "hop_table": HOP_TABLE_FILE if wrote_table else None,
            "sha256": self.graph.sha256,
            "node_layout": "users 0..U-1, items U..U+I-1; edges are (user index, item index) train pairs",
        }
        atomic_write_text(d / GRAPH_META_FILE, json.dumps(meta, indent=2) + "\n")
        return meta["sha256"]

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        expected_sha256: str | None = None,
        table_budget_bytes: int = DEFAULT_TABLE_BUDGET_BYTES,
        mmap: bool = True,
        cache_rows: int = 4096,
    ) -> "HopDistances":
        """Load a saved graph; the hop table is memory-mapped when present, recomputed if it fits the budget."""
        d = Path(directory)
        meta_path = d / GRAPH_META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: graph metadata missing (not a graph folder written by HopDistances.save)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        edges = np.load(d / EDGES_FILE)
        graph = InteractionGraph(edges, meta["num_users"], meta["num_items"])
        sha = graph.sha256
        if sha != meta["sha256"]:
            raise ValueError(f"{d / EDGES_FILE}: graph sha256 {sha} does not match {meta_path} ({meta['sha256']})")
        if expected_sha256 is not None and sha != expected_sha256:
            raise ValueError(
                f"{d}: graph sha256 {sha} does not match the manifest's {expected_sha256}: this graph comes from another split"
            )
        table = None
        if meta.get("hop_table"):
            table = np.load(d / meta["hop_table"], mmap_mode="r" if mmap else None)
        return cls(graph, meta["max_hops"], table=table, table_budget_bytes=table_budget_bytes, cache_rows=cache_rows)
