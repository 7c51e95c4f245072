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
HUB_WORDS = 2  # 64-bit words of hub bits: the 64 * HUB_WORDS highest-degree nodes are the hubs


def row_nodes(node_positions) -> tuple[np.ndarray, np.ndarray]:
    """(distinct nodes in order of first appearance, per-token index into them with -1 for text tokens)."""
    pos = np.asarray(node_positions, dtype=np.int64).ravel()
    at = {}
    index = np.fromiter((at.setdefault(v, len(at)) if v >= 0 else -1 for v in pos.tolist()), dtype=np.int64, count=len(pos))
    return np.fromiter(at, dtype=np.int64, count=len(at)), index


_TRIU: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _triu(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper-triangle index pairs of a k x k matrix (cached: rows repeat the same few sizes)."""
    if k not in _TRIU:
        if len(_TRIU) > 4096:
            _TRIU.clear()
        _TRIU[k] = np.triu_indices(k, 1)
    return _TRIU[k]


def _adjacency(graph) -> sp.csr_matrix:
    """The symmetric (N, N) adjacency, built once per graph object."""
    adj = getattr(graph, "_pair_adjacency", None)
    if adj is None:
        adj = graph.adjacency().tocsr()
        adj.data[:] = 1.0
        graph._pair_adjacency = adj
    return adj


def _hub_masks(graph, radius: int) -> list[np.ndarray]:
    """Per k <= radius, an (N, HUB_WORDS) uint64 bit set of the hubs within the radius-k ball of every node.

    A hub shared by B_k(a) and B_l(b) proves ``dist(a, b) <= k + l`` in O(1) per pair; on a power-law graph
    almost every 4- and 6-hop pair meets at a hub, so the exact sparse test only sees the rest. Computed
    for all nodes at once: M_k+1[v] = OR of M_k over the neighbours of v, OR M_k-1[v] (O(edges) per k).
    """
    cached = getattr(graph, "_pair_hub_masks", None)
    if cached is not None and len(cached) > radius:
        return cached
    A = _adjacency(graph)
    N = graph.num_nodes
    deg = np.diff(A.indptr)
    hubs = np.argsort(-deg, kind="stable")[: 64 * HUB_WORDS]
    hubs = hubs[deg[hubs] > 0]
    bit = np.arange(len(hubs))
    m0 = np.zeros((N, HUB_WORDS), dtype=np.uint64)
    m0[hubs, bit // 64] = np.left_shift(np.uint64(1), (bit % 64).astype(np.uint64))
    masks = [m0]
    has_nbr = deg > 0
    starts = np.minimum(A.indptr[:-1], max(0, len(A.indices) - 1))
    for k in range(1, radius + 1):
        nxt = np.zeros((N, HUB_WORDS), dtype=np.uint64)
        if len(A.indices):
            nxt[has_nbr] = np.bitwise_or.reduceat(masks[-1][A.indices], starts, axis=0)[has_nbr]
        if k >= 2:
            nxt |= masks[-2]
        masks.append(nxt)
    graph._pair_hub_masks = masks
    return masks


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

    hub = _hub_masks(graph, (max_hops + 1) // 2)

    def resolve(sel: np.ndarray, hit: np.ndarray, D: int):
        nonlocal pending, ia, ib, cross
        out[pending[sel[hit]]] = D
        keep = np.ones(len(pending), dtype=bool)
        keep[sel[hit]] = False
        pending, ia, ib, cross = pending[keep], ia[keep], ib[keep], cross[keep]

    for D in range(1, max_hops + 1):
        k, l = (D + 1) // 2, D // 2
        sel = np.flatnonzero(cross == bool(D % 2))
        if len(sel):  # cheap sufficient test first: a shared hub
            resolve(sel, (hub[k][nodes[ia[sel]]] & hub[l][nodes[ib[sel]]]).any(axis=1), D)
            sel = np.flatnonzero(cross == bool(D % 2))
        if len(sel):
            resolve(sel, _intersections(ball(k), ia[sel], ball(l), ib[sel]) > 0, D)
        if not len(pending):
            break
    return out


def _segment_contains(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Whether ``cols[k]`` is among the (sorted) column indices of CSR row ``rows[k]``: a vectorised binary search."""
    lo, hi = indptr[rows].astype(np.int64), indptr[rows + 1].astype(np.int64)
    while True:
        open_ = lo < hi
        if not open_.any():
            break
        mid = (lo + hi) // 2
        less = np.zeros(len(lo), dtype=bool)
        less[open_] = indices[mid[open_]] < cols[open_]
        lo = np.where(open_ & less, mid + 1, lo)
        hi = np.where(open_ & ~less, mid, hi)
    found = lo < indptr[rows + 1]
    found[found] = indices[lo[found]] == cols[found]
    return found


def is_edge(graph, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether (user index, item index) is a train edge, elementwise."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if not len(users):
        return np.zeros(0, dtype=bool)
    ui = graph.ui
    if not ui.has_sorted_indices:
        ui.sort_indices()
    return _segment_contains(ui.indptr, ui.indices, users, items)


def shared_by_two(graph, a: np.ndarray, b: np.ndarray, block_cost: int = 1 << 24) -> np.ndarray:
    """Whether at least two train users interacted with both items a[k] and b[k] (item indices).

    Co-interaction counts ``iu @ ui`` are formed for a block of items at a time (rows of the queried items
    only, block size bounded by the product's cost), never as a whole I x I matrix.
    """
    a = np.asarray(a, dtype=np.int64).ravel()
    b = np.asarray(b, dtype=np.int64).ravel()
    out = np.zeros(len(a), dtype=bool)
    if not len(a):
        return out
    items, inv = np.unique(a, return_inverse=True)
    inv = inv.ravel()
    user_deg = np.diff(graph.ui.indptr).astype(np.float64)
    cost = np.cumsum(graph.iu[items] @ user_deg + 1)  # upper bound of each block row's nonzeros
    bounds = np.unique(np.concatenate([[0], np.searchsorted(cost, np.arange(block_cost, cost[-1], block_cost)), [len(items)]]))
    order = np.argsort(inv, kind="stable")
    query_at = np.searchsorted(inv[order], bounds)
    for s, e, qs, qe in zip(bounds[:-1], bounds[1:], query_at[:-1], query_at[1:]):
        if qe <= qs:
            continue
        co = (graph.iu[items[s:e]] @ graph.ui).tocsr()
        co.data = (co.data >= 2).astype(np.float32)
        co.eliminate_zeros()
        co.sort_indices()
        q = order[qs:qe]
        out[q] = _segment_contains(co.indptr, co.indices, inv[q] - s, b[q])
    return out


def row_hop_matrices(graph, rows: list, max_hops: int, leave_user_out: bool = False, max_pairs: int = 1 << 22) -> list[np.ndarray]:
    """Per row (its ``node_positions``), the (k, k) uint8 hop matrix over the row's distinct nodes (``row_nodes``).

    Pairs the row itself decides are not searched: the row's user (its first user node) and one of its own
    train items are 1 hop apart, two of its own items 2 (through the user). With ``leave_user_out`` two own
    items are instead 2 when another train user has both, else ``min(4, max_hops + 1)`` (module docstring).
    Every other pair is deduplicated and measured by ``pair_distances``. Rows are processed in chunks of at
    most ``max_pairs`` pairs, so memory stays bounded whatever the number of rows.
    """
    return _row_matrices(graph, rows, max_hops, ("luo",) if leave_user_out else ("full",), max_pairs)[0]


def row_hop_matrix_variants(graph, rows: list, max_hops: int, max_pairs: int = 1 << 22) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(full, leave-user-out) matrices of ``row_hop_matrices`` for the same rows, sharing the search."""
    full, luo = _row_matrices(graph, rows, max_hops, ("full", "luo"), max_pairs)
    return full, luo


def _row_matrices(graph, rows, max_hops, variants, max_pairs):
    out: list[list[np.ndarray]] = [[] for _ in variants]
    nodes = [row_nodes(r)[0] for r in rows]
    start, pairs = 0, 0
    for k, x in enumerate(nodes + [np.zeros(0, np.int64)]):
        pairs += len(x) * (len(x) - 1) // 2
        if k == len(nodes) or (pairs > max_pairs and k > start):
            for acc, part in zip(out, _row_chunk(graph, nodes[start:k], max_hops, variants)):
                acc += part
            start, pairs = k, len(x) * (len(x) - 1) // 2
    return out


def _row_chunk(graph, node_lists: list[np.ndarray], max_hops: int, variants) -> list[list[np.ndarray]]:
    U, N, far = graph.num_users, graph.num_nodes, max_hops + 1
    tri = [_triu(len(x)) for x in node_lists]
    empty = np.zeros(0, np.int64)
    pa = np.concatenate([empty] + [x[i] for x, (i, _) in zip(node_lists, tri)])
    pb = np.concatenate([empty] + [x[j] for x, (_, j) in zip(node_lists, tri)])
    first_user = [next((int(v) for v in x if v < U), -1) for x in node_lists]
    row_user = np.concatenate([empty] + [np.full(len(i), u, dtype=np.int64) for u, (i, _) in zip(first_user, tri)])
    has_user = row_user >= 0
    own_a = np.zeros(len(pa), dtype=bool)
    own_b = np.zeros(len(pa), dtype=bool)
    for own, p in ((own_a, pa), (own_b, pb)):
        idx = np.flatnonzero(has_user & (p >= U))
        own[idx] = is_edge(graph, row_user[idx], p[idx] - U)
    user_item = ((pa == row_user) & own_b) | ((pb == row_user) & own_a)
    item_item = own_a & own_b
    full = np.empty(len(pa), dtype=np.uint8)
    full[user_item] = min(1, far)
    full[item_item] = min(2, far)
    rest = np.flatnonzero(~(user_item | item_item))
    if len(rest):
        lo, hi = np.minimum(pa[rest], pb[rest]), np.maximum(pa[rest], pb[rest])
        uniq, inv = np.unique(lo * N + hi, return_inverse=True)
        full[rest] = pair_distances(graph, uniq // N, uniq % N, max_hops)[inv.ravel()]
    values = {"full": full}
    if "luo" in variants:
        luo = full.copy()
        idx = np.flatnonzero(item_item)
        luo[idx] = np.where(shared_by_two(graph, pa[idx] - U, pb[idx] - U), min(2, far), min(4, far))
        values["luo"] = luo
    out: list[list[np.ndarray]] = [[] for _ in variants]
    start = 0
    for x, (i, j) in zip(node_lists, tri):
        for acc, name in zip(out, variants):
            m = np.zeros((len(x), len(x)), dtype=np.uint8)
            v = values[name][start : start + len(i)]
            m[i, j] = v
            m[j, i] = v
            acc.append(m)
        start += len(i)
    return out


PAIR_COLUMNS = ("pair_hops", "pair_hops_luo")


def attach_pair_hops(rows: list[dict], graph, max_hops: int, cache: dict | None = None) -> None:
    """Add ``pair_hops`` (and ``pair_hops_luo``) to every row in place: the flattened (k, k) uint8 matrix over
    the row's distinct nodes in order of first appearance (DESIGN.md section 4); ``pair_hops_luo`` is empty
    when the leave-user-out matrix equals ``pair_hops`` (every row without two own items of its user).

    ``cache`` (node list -> the two arrays) lets configs that repeat a node list (a user's interactions row
    and its three recommendation rows) share one computation.
    """
    cache = {} if cache is None else cache
    todo: dict[bytes, np.ndarray] = {}
    keys = []
    for r in rows:
        nodes = row_nodes(r["node_positions"])[0]
        key = nodes.tobytes()
        keys.append(key)
        if key not in cache:
            todo[key] = nodes
    if todo:
        fresh = list(todo)
        full, luo = row_hop_matrix_variants(graph, [todo[k] for k in fresh], max_hops)
        for key, f, l in zip(fresh, full, luo):
            cache[key] = (f.ravel(), l.ravel() if (l != f).any() else np.zeros(0, np.uint8))
    for r, key in zip(rows, keys):
        r["pair_hops"], r["pair_hops_luo"] = cache[key]


def stored_token_index(row: dict) -> np.ndarray:
    """Per token of a row, the index into the node list its stored ``pair_hops`` refers to (-1 = text).

    The node list is ``row["pair_nodes"]`` when the row carries one (a re-masked prompt pointing into its
    full-history matrix), else the row's own distinct nodes in order of first appearance.
    """
    pos = np.asarray(row["node_positions"], dtype=np.int64)
    if row.get("pair_nodes") is None:
        return row_nodes(pos)[1]
    at = {int(v): k for k, v in enumerate(np.asarray(row["pair_nodes"]).tolist())}
    try:
        return np.fromiter((at[v] if v >= 0 else -1 for v in pos.tolist()), dtype=np.int64, count=len(pos))
    except KeyError as err:
        raise ValueError(f"node {err.args[0]} of the row is not in its pair_nodes") from None


def gather_row_hops(matrices: list[np.ndarray], token_index: list[np.ndarray], L: int) -> np.ndarray:
    """(B, L, L) int16 token-pair hops from per-row node matrices and per-token node indices (-1 = text/pad)."""
    out = np.full((len(matrices), L, L), -1, dtype=np.int16)
    for r, (m, idx) in enumerate(zip(matrices, token_index)):
        t = np.flatnonzero(idx >= 0)
        if len(t):
            out[r, t[:, None], t[None, :]] = m[idx[t][:, None], idx[t][None, :]]
    return out
