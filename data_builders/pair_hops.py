"""Capped hop distances between the nodes of each row, by meet-in-the-middle (no N x N structure, no global BFS).

A row (a prompt) only ever needs the distances among its own few nodes, and the bias only tells apart
``0..max_hops`` (``max_hops + 1`` = farther or unreachable, DESIGN.md section 2). So instead of a BFS from every
source over the whole graph, each node gets its radius-k *ball* for k = 0..ceil(max_hops / 2):

    B_0(s) = {s},  B_1(s) = N(s),  B_k(s) = N(B_{k-1}(s)) | B_{k-2}(s)

On a bipartite graph B_k(s) is exactly the set of nodes within k hops of s on the side of parity k (k even: the
side of s, k odd: the other side). Then ``dist(a, b) <= D`` iff ``B_ceil(D/2)(a)`` and ``B_floor(D/2)(b)`` intersect
(a shortest path of length D has its node number ceil(D/2) in both), and only D of the pair's parity can occur:
user-item pairs are 1, 3, 5; same-side pairs 2, 4, 6. Per D, only the pairs still unresolved are tested, and
only their nodes' balls are grown, so a personalized prompt (a user and its own items: 1 and 2 hops) never goes
past radius 1. The balls are sparse rows over the N node columns; an intersection test is a sparse elementwise
product of two gathered rows (chunked to bound memory), so cost is O(ball sizes), independent of N^2.

Rows: ``row_hop_matrices`` gives, per row, the (k, k) uint8 matrix over the row's *distinct* nodes in order of
first appearance (``row_nodes``): the encoding stored with every dataset row (``pair_hops``, DESIGN.md section 4).
The leave-user-out variant (``HopDistances.leave_user_out``) re-measures pairs of the row user's own items
without that user: 2 when another train user has both items, else ``min(4, max_hops + 1)`` (a lower bound).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

CHUNK_NNZ = 1 << 23  # gathered ball entries per intersection chunk (bounds the temporary memory)


def row_nodes(node_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct nodes in order of first appearance, per-token index into them with -1 for text tokens)."""
    pos = np.asarray(node_positions, dtype=np.int64).ravel()
    is_node = pos >= 0
    uniq, first, inv = np.unique(pos[is_node], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(uniq), dtype=np.int64)
    rank[order] = np.arange(len(uniq))
    index = np.full(len(pos), -1, dtype=np.int64)
    index[is_node] = rank[inv.ravel()]
    return uniq[order], index


def _adjacency(graph) -> sp.csr_matrix:
    """The symmetric (N, N) adjacency, built once per graph object."""
    adj = getattr(graph, "_pair_adjacency", None)
    if adj is None:
        adj = graph.adjacency().tocsr()
        adj.data[:] = 1.0
        graph._pair_adjacency = adj
    return adj


def _binarize(m: sp.csr_matrix) -> sp.csr_matrix:
    m = m.tocsr()
    m.data[:] = 1.0
    return m


def _intersections(X: sp.csr_matrix, ia: np.ndarray, Y: sp.csr_matrix, ib: np.ndarray) -> np.ndarray:
    """|row ia[k] of X  &  row ib[k] of Y| for every k (binary rows), in chunks of bounded gathered size."""
    out = np.zeros(len(ia), dtype=np.int64)
    if not len(ia):
        return out
    cost = np.cumsum(np.diff(X.indptr)[ia] + np.diff(Y.indptr)[ib] + 1)
    bounds = np.searchsorted(cost, np.arange(CHUNK_NNZ, cost[-1], CHUNK_NNZ))
    bounds = np.unique(np.concatenate([[0], bounds, [len(ia)]]))
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        prod = X[ia[start:end]].multiply(Y[ib[start:end]])
        out[start:end] = np.asarray(prod.sum(axis=1)).ravel().astype(np.int64)
    return out


def pair_distances(graph, a: np.ndarray, b: np.ndarray, max_hops: int) -> np.ndarray:
    """Capped hop distances (uint8, ``max_hops + 1`` = farther) of the node pairs (a[k], b[k])."""
    a = np.asarray(a, dtype=np.int64).ravel()
    b = np.asarray(b, dtype=np.int64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"a and b differ in length ({len(a)} vs {len(b)})")
    N, U = graph.num_nodes, graph.num_users
    if len(a) and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= N):
        raise ValueError(f"node index out of range [0, {N})")
    far = max_hops + 1
    out = np.full(len(a), far, dtype=np.uint8)
    out[a == b] = 0
    pending = np.flatnonzero(a != b)
    if not len(pending) or max_hops < 1:
        return out
    nodes, inv = np.unique(np.concatenate([a[pending], b[pending]]), return_inverse=True)
    ia, ib = inv[: len(pending)], inv[len(pending) :]
    cross = (a[pending] < U) != (b[pending] < U)  # user-item pairs: odd distances only
    A = _adjacency(graph)
    n = len(nodes)
    balls = [sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), nodes)), shape=(n, N))]

    def ball(k: int) -> sp.csr_matrix:
        # grown only for nodes still in an unresolved pair (the pending set only shrinks, so their
        # smaller balls are complete)
        while len(balls) <= k:
            active = np.zeros(n, dtype=np.float32)
            active[ia] = 1.0
            active[ib] = 1.0
            keep = sp.diags(active, format="csr")
            grown = keep @ balls[-1] @ A
            if len(balls) >= 2:
                grown = grown + keep @ balls[-2]
            balls.append(_binarize(grown))
        return balls[k]

    for D in range(1, max_hops + 1):
        sel = np.flatnonzero(cross == bool(D % 2))
        if not len(sel):
            continue
        hit = _intersections(ball((D + 1) // 2), ia[sel], ball(D // 2), ib[sel]) > 0
        out[pending[sel[hit]]] = D
        done = np.zeros(len(pending), dtype=bool)
        done[sel[hit]] = True
        pending, ia, ib, cross = pending[~done], ia[~done], ib[~done], cross[~done]
        if not len(pending):
            break
    return out


def shared_user_counts(graph, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of train users who interacted with both items (item indices a[k], b[k])."""
    a = np.asarray(a, dtype=np.int64).ravel()
    b = np.asarray(b, dtype=np.int64).ravel()
    if not len(a):
        return np.zeros(0, dtype=np.int64)
    items, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    users_of = _binarize(graph.iu[items])
    return _intersections(users_of, inv[: len(a)], users_of, inv[len(a) :])


def row_hop_matrices(graph, rows: list, max_hops: int, leave_user_out: bool = False) -> list[np.ndarray]:
    """Per row (its ``node_positions``), the (k, k) uint8 hop matrix over the row's distinct nodes (``row_nodes``).

    All pairs of all rows are deduplicated and measured in one ``pair_distances`` call. With
    ``leave_user_out`` the pairs of the row user's (its first user node's) own train items are re-measured
    without that user (see the module docstring); every other pair is unchanged.
    """
    U = graph.num_users
    node_lists = [row_nodes(r)[0] for r in rows]
    sizes = np.array([len(x) for x in node_lists], dtype=np.int64)
    iu_list = [np.triu_indices(int(k), 1) for k in sizes]
    pa = np.concatenate([x[i] for x, (i, _) in zip(node_lists, iu_list)]) if len(rows) else np.zeros(0, np.int64)
    pb = np.concatenate([x[j] for x, (_, j) in zip(node_lists, iu_list)]) if len(rows) else np.zeros(0, np.int64)
    lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
    key = lo * graph.num_nodes + hi
    uniq, inv = np.unique(key, return_inverse=True)
    values = pair_distances(graph, uniq // graph.num_nodes, uniq % graph.num_nodes, max_hops)[inv.ravel()]
    if leave_user_out:
        values = values.copy()
        own = _own_item_pairs(graph, node_lists, iu_list, pa, pb)
        if own.any():
            shared = shared_user_counts(graph, pa[own] - U, pb[own] - U)
            values[own] = np.where(shared >= 2, 2, min(4, max_hops + 1))  # >= 2: the row's user plus another
    out, start = [], 0
    for x, (i, j) in zip(node_lists, iu_list):
        k = len(x)
        m = np.zeros((k, k), dtype=np.uint8)
        v = values[start : start + len(i)]
        m[i, j] = v
        m[j, i] = v
        start += len(i)
        out.append(m)
    return out


def _own_item_pairs(graph, node_lists, iu_list, pa, pb) -> np.ndarray:
    """Mask over the concatenated pairs: both nodes are train items of their row's first user node."""
    U, I = graph.num_users, graph.num_items
    row_user = np.concatenate(
        [np.full(len(i), next((int(v) for v in x if v < U), -1), dtype=np.int64) for x, (i, _) in zip(node_lists, iu_list)]
    ) if node_lists else np.zeros(0, np.int64)
    mask = (row_user >= 0) & (pa >= U) & (pb >= U)
    if not mask.any():
        return mask
    edge_keys = graph.edges[:, 0].astype(np.int64) * I + graph.edges[:, 1]  # sorted: edges are np.unique'd

    def is_edge(users, items):
        k = users * I + items
        at = np.clip(np.searchsorted(edge_keys, k), 0, max(0, len(edge_keys) - 1))
        return (edge_keys[at] == k) if len(edge_keys) else np.zeros(len(k), bool)

    idx = np.flatnonzero(mask)
    mask[idx] = is_edge(row_user[idx], pa[idx] - U) & is_edge(row_user[idx], pb[idx] - U)
    return mask


def gather_row_hops(matrices: list[np.ndarray], token_index: list[np.ndarray], L: int) -> np.ndarray:
    """(B, L, L) int16 token-pair hops from per-row node matrices and per-token node indices (-1 = text/pad)."""
    out = np.full((len(matrices), L, L), -1, dtype=np.int16)
    for r, (m, idx) in enumerate(zip(matrices, token_index)):
        t = np.flatnonzero(idx >= 0)
        if len(t):
            out[r, t[:, None], t[None, :]] = m[idx[t][:, None], idx[t][None, :]]
    return out
