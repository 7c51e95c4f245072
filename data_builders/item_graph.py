"""Graph matrices fitted on a (users x items) interaction matrix: EASE's closed form, row-normalised co-occurrence
and their top-N-per-row pruning; the normalised bipartite adjacency; co-occurrence buckets.

One owner for these formulas: the baselines (benchmarks/baselines.py: EASE, LightGCN) and the model's graph levers
(graph residual, ID propagation, edge bias; filled in train/common.py from the TRAIN interactions only) call them.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds
import torch

from modeling_graphgpt2.configuration_graphgpt2 import EDGE_DEGREE_LOW, EDGE_FIRST_DEGREE_BUCKET, EDGE_OTHER_USERS_LOW


def _binary_csr(x: sp.spmatrix) -> sp.csr_matrix:
    x = sp.csr_matrix(x, dtype=np.float32)
    x.data[:] = 1.0
    return x


def ease_closed_form(x: sp.spmatrix, lam: float, dtype=np.float64) -> np.ndarray:
    """EASE (Steck, 2019): B = I - P diag(1/diag(P)), P = (XᵀX + λI)⁻¹, i.e. B_ij = -P_ij / P_jj and diag(B) = 0."""
    gram = sp.coo_matrix(x.T @ x)
    dense = np.zeros(gram.shape, dtype=dtype)  # filled in place: no float32 copy to convert
    dense[gram.row, gram.col] = gram.data
    dense[np.diag_indices_from(dense)] += lam
    # XᵀX + λI is symmetric positive definite: inverting through its Cholesky factor costs a third of a general
    # inverse (Beauty's 12k items: 17 s against 46 s on 2 cores) and B agrees with it to ~4e-16
    factor = torch.linalg.cholesky(torch.from_numpy(dense))
    del dense
    p = torch.cholesky_inverse(factor).numpy()
    del factor
    p /= -np.diag(p).copy()[None, :]  # in place: one n x n array at a time
    p[np.diag_indices_from(p)] = 0.0
    return p


def ease_neighbourhood(x: sp.spmatrix, lam: float, neighbours: int, block_items: int = 512,
                       hub_items: int = 8192) -> sp.csr_matrix:
    """EASE restricted to each item's ``neighbours`` most co-held items (a scalable EASE): column j of B is the
    ridge regression of item j's users on the users of its neighbour set N(j),

        B[N(j), j] = (X_N^T X_N + lambda I)^-1 X_N^T x_j,     B[i, j] = 0 for i outside N(j),

    which is exactly EASE's column j when N(j) holds every other item (EASE's zero-diagonal closed form is this
    leave-one-item-out ridge regression). N(j) is the ``neighbours`` items with the largest co-occurrence count
    (ties: lower index first; items never held together are left out unless ``neighbours`` >= I - 1, which takes
    every other item). Memory O(nnz(X) + block x I sparse + I x K + hub_items^2) and time O(I K^3) for the K x K
    solves, so it follows the catalog, not I^2. Returns B as (I, I) CSR float32 with at most K entries per column.

    The K x K Grams are co-occurrence counts, read from two tables that give the same integers as X_N^T X_N: the
    ``hub_items`` most-held items' dense count table (int32, made once: hub_items^2 x 4 bytes, 256 MiB at 8192),
    and the co-occurrence rows of each block's other neighbours. Neighbour sets are dominated by the popular
    items, whose user lists made the per-item sparse product the fit's cost (15x slower at 1M users / 200k items:
    benchmarks/bench_ease_neighbourhood.py). ``hub_items=0`` uses the co-occurrence rows only."""
    x = _binary_csr(x)
    num_items = x.shape[1]
    by_item = sp.csr_matrix(x.T)  # (I, U): item rows, for the co-occurrence rows
    k = min(int(neighbours), num_items - 1)
    hubs = HubCounts(x, by_item, hub_items)
    rows, cols, vals = [], [], []
    for start in range(0, num_items, block_items):
        targets = np.arange(start, min(start + block_items, num_items))
        counts = (by_item[targets] @ x).tocsr()  # (b, I) co-occurrence counts of the block's items
        counts.sort_indices()
        sets = neighbour_sets(counts, targets, k, num_items)
        gram = hubs.grams(x, by_item, sets)
        rhs = np.zeros((len(targets), k))
        for r in range(len(targets)):
            members = sets[r][sets[r] >= 0]
            rhs[r, : len(members)] = counts[r, members].toarray().ravel()
        # padded slots have a zero row and column plus lambda on the diagonal, so their coefficient is exactly 0
        gram[:, np.arange(k), np.arange(k)] += lam
        factor = torch.linalg.cholesky(torch.from_numpy(gram))
        coef = torch.cholesky_solve(torch.from_numpy(rhs).unsqueeze(-1), factor).squeeze(-1).numpy()
        real = sets >= 0
        rows.append(sets[real])
        cols.append(np.repeat(targets, real.sum(axis=1)))
        vals.append(coef[real].astype(np.float32))
    empty = np.zeros(0, dtype=np.int64)
    b = sp.csr_matrix((np.concatenate(vals) if vals else np.zeros(0, np.float32),
                       (np.concatenate(rows) if rows else empty, np.concatenate(cols) if cols else empty)),
                      shape=(num_items, num_items), dtype=np.float32)
    b.eliminate_zeros()
    return b


def neighbour_sets(counts: sp.csr_matrix, targets: np.ndarray, k: int, num_items: int) -> np.ndarray:
    """(len(targets), k) int64: each target's ``k`` most co-held items, sorted by index, padded with -1, from
    ``counts`` (one sorted co-occurrence row per target). Ties go to the lower index; ``k >= num_items - 1`` takes
    every other item, held together or not."""
    sets = np.full((len(targets), k), -1, dtype=np.int64)
    for r, j in enumerate(targets):
        if k >= num_items - 1:
            sets[r] = np.delete(np.arange(num_items), j)
            continue
        s, e = counts.indptr[r], counts.indptr[r + 1]
        c_idx, c_val = counts.indices[s:e], counts.data[s:e]
        keep = c_idx != j
        c_idx, c_val = c_idx[keep], c_val[keep]
        top = c_idx[np.argsort(-c_val, kind="stable")[:k]]  # stable over sorted indices: ties -> lower index
        sets[r, : len(top)] = np.sort(top)
    return sets


class HubCounts:
    """The co-occurrence counts of the ``hub_items`` most-held items as one dense int32 table (hub_items^2 x 4
    bytes), from which ``grams`` reads every hub pair of a neighbour set; pairs with another item come from that
    item's co-occurrence row. Both give the integers X_N^T X_N holds."""

    def __init__(self, x: sp.csr_matrix, by_item: sp.csr_matrix, hub_items: int):
        num_items = x.shape[1]
        hubs = np.sort(np.argsort(-np.diff(by_item.indptr), kind="stable")[: max(0, min(int(hub_items), num_items))])
        self.slot = np.full(num_items, -1, dtype=np.int64)
        self.slot[hubs] = np.arange(len(hubs))
        x_hubs = x[:, hubs]
        self.counts = (x_hubs.T @ x_hubs).toarray().astype(np.int32)  # exact: float32 counts < 2^24 users

    def grams(self, x: sp.csr_matrix, by_item: sp.csr_matrix, sets: np.ndarray) -> np.ndarray:
        """(len(sets), k, k) float64: X_N^T X_N of each neighbour set (padding -1 gives zero rows and columns)."""
        num_items = x.shape[1]
        members = sets[sets >= 0]
        others = np.unique(members[self.slot[members] < 0])
        other_rows = (by_item[others] @ x).tocsr()  # co-occurrence rows of the non-hub neighbours, once per block
        other_slot = np.full(num_items, -1, dtype=np.int64)
        other_slot[others] = np.arange(len(others))
        column_slot = np.full(num_items, -1, dtype=np.int64)  # a neighbour set's column of each item
        gram = np.zeros((len(sets), sets.shape[1], sets.shape[1]))
        for r in range(len(sets)):
            members = sets[r][sets[r] >= 0]
            n = len(members)
            slot = self.slot[members]
            in_hub, outside = np.flatnonzero(slot >= 0), np.flatnonzero(slot < 0)
            gram[r][np.ix_(in_hub, in_hub)] = self.counts[np.ix_(slot[in_hub], slot[in_hub])]
            if len(outside):
                column_slot[members] = np.arange(n)
                part_rows = other_rows[other_slot[members[outside]]]
                part_cols = column_slot[part_rows.indices]
                part_of = np.repeat(np.arange(len(outside)), np.diff(part_rows.indptr))
                kept = part_cols >= 0
                part = np.zeros((len(outside), n))
                part[part_of[kept], part_cols[kept]] = part_rows.data[kept]
                column_slot[members] = -1
                gram[r][outside, :n] = part
                gram[r][:n, outside] = part.T
        return gram


def cooccurrence_row_normalised(x: sp.spmatrix) -> sp.csr_matrix:
    """C_ij = |U_i ∩ U_j| / sum_k |U_i ∩ U_k| (k != i), diagonal 0: row i is "users of i also hold j"."""
    x = _binary_csr(x)
    co = (x.T @ x).tocsr().astype(np.float64)
    co.setdiag(0)
    co.eliminate_zeros()
    sums = np.asarray(co.sum(axis=1)).ravel()
    inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.csr_matrix(sp.diags(inv) @ co)


def top_n_per_row(mat: np.ndarray | sp.spmatrix, n: int, block_rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Keep each row's ``n`` entries of largest magnitude: (rows, n) int64 column indices and float32 values,
    sorted by decreasing magnitude; rows with fewer non-zeros are padded with (column 0, value 0)."""
    num_rows, num_cols = mat.shape
    n = min(int(n), num_cols)
    indices = np.zeros((num_rows, n), dtype=np.int64)
    values = np.zeros((num_rows, n), dtype=np.float32)
    if sp.issparse(mat):
        csr = sp.csr_matrix(mat)
        for i in range(num_rows):
            s, e = csr.indptr[i], csr.indptr[i + 1]
            cols, vals = csr.indices[s:e], csr.data[s:e]
            order = np.argsort(-np.abs(vals), kind="stable")[:n]
            indices[i, : len(order)], values[i, : len(order)] = cols[order], vals[order]
        return indices, values
    for start in range(0, num_rows, block_rows):  # blocks bound the temporary (block, num_cols) arrays
        block = np.asarray(mat[start : start + block_rows])
        mag = np.abs(block)
        part = np.argpartition(-mag, n - 1, axis=1)[:, :n] if n < num_cols else np.tile(np.arange(num_cols), (len(block), 1))
        order = np.argsort(-np.take_along_axis(mag, part, axis=1), axis=1, kind="stable")
        cols = np.take_along_axis(part, order, axis=1)
        indices[start : start + len(block)] = cols
        values[start : start + len(block)] = np.take_along_axis(block, cols, axis=1)
    indices[values == 0] = 0  # structural zeros point nowhere in particular
    return indices, values


def ease_form(num_items: int, exact_max_items: int) -> str:
    """Which EASE the size rule fits: "exact" up to ``exact_max_items`` items, else "neighbourhood"."""
    return "exact" if num_items <= exact_max_items else "neighbourhood"


def residual_matrix(train: sp.spmatrix, kind: str, topn: int, lam: float = 500.0, exact_max_items: int = 20000,
                    neighbours: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The item-item matrix of the model's graph residual, fitted on ``train`` (pass the TRAIN split only) and
    pruned to its ``topn`` largest-magnitude entries per row: (indices, values), each (num_items, min(topn, I)).
    Kind "ease" is exact up to ``exact_max_items`` items and the neighbourhood EASE of ``neighbours`` above
    (``ease_form``; GraphGPT2Config.graph_residual_exact_max_items)."""
    x = _binary_csr(train)
    if kind == "ease":
        exact = ease_form(x.shape[1], exact_max_items) == "exact"
        mat = ease_closed_form(x, lam) if exact else ease_neighbourhood(x, lam, neighbours)
    elif kind == "cooc":
        mat = cooccurrence_row_normalised(x)
    else:
        raise ValueError(f"graph residual kind must be 'ease' or 'cooc' (GraphGPT2Config.graph_residual), got {kind!r}")
    return top_n_per_row(mat, topn)


def _normalised_svd(train: sp.spmatrix, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top singular values (k,) and right singular vectors (num_items, k), values descending, of
    R = D_U^-1/2 X D_I^-1/2 on ``train``, k = min(rank, I, min(U, I) - 1) (ARPACK's limit), and the items' train
    degrees. Truncated ARPACK SVD with a seeded start vector: O(nnz k) per iteration, no item x item matrix."""
    x = _binary_csr(train).astype(np.float64)
    deg_u, deg_i = np.asarray(x.sum(axis=1)).ravel(), np.asarray(x.sum(axis=0)).ravel()
    inv_u = np.power(deg_u, -0.5, out=np.zeros_like(deg_u), where=deg_u > 0)
    inv_i = np.power(deg_i, -0.5, out=np.zeros_like(deg_i), where=deg_i > 0)
    k = min(int(rank), x.shape[1], min(x.shape) - 1)
    if k < 1:
        return np.zeros(0), np.zeros((x.shape[1], 0)), deg_i
    rn = sp.csr_matrix(sp.diags(inv_u) @ x @ sp.diags(inv_i))
    v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, min(rn.shape))
    _, values, vt = svds(rn, k=k, v0=v0, solver="arpack")
    order = np.argsort(-values, kind="stable")
    return values[order], vt[order].T, deg_i


def ideal_lowpass_basis(train: sp.spmatrix, rank: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """GF-CF's ideal low-pass filter (Shen et al., CIKM 2021) fitted on ``train`` (pass the TRAIN split only):
    V_k, the top-``rank`` right singular vectors of R = D_U^-1/2 X D_I^-1/2 as (num_items, min(rank, I)) float32
    columns, singular values descending, and the items' sqrt train degrees (num_items,) float32. The filter of a
    user row x is (x D_I^-1/2 V_k)(V_k^T D_I^1/2). Zero degrees give zero weights; missing columns (past ARPACK's
    rank limit, ``_normalised_svd``) are zeros."""
    _, vectors, deg_i = _normalised_svd(train, rank, seed)
    basis = np.zeros((vectors.shape[0], min(int(rank), vectors.shape[0])), dtype=np.float32)
    basis[:, :vectors.shape[1]] = vectors
    return basis, np.sqrt(deg_i).astype(np.float32)


def graph_svd_vectors(train: sp.spmatrix, dim: int, seed: int = 0) -> np.ndarray:
    """(num_items, dim) float32: each item's coordinates V_k S_k on the top-``dim`` singular directions of the
    normalised TRAIN matrix R (``_normalised_svd``), each column's sign fixed so its largest entry is positive
    (the graph's counterpart of ``item_text.text_svd_vectors``); columns past the rank are 0."""
    values, vectors, _ = _normalised_svd(train, dim, seed)
    vectors = vectors * values
    out = np.zeros((vectors.shape[0], dim), dtype=np.float32)
    if vectors.shape[1]:
        signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
        out[:, :vectors.shape[1]] = vectors * np.where(signs == 0, 1.0, signs)
    return out


def normalized_adjacency(train: sp.spmatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LightGCN's Â = D^-1/2 A D^-1/2 of the bipartite graph (users 0..U-1, items U..U+I-1) as CSR arrays
    (crow_indices (U+I+1,), col_indices (2E,), values (2E,) float32), E = the number of user-item pairs in
    ``train``. Symmetric, so it is its own transpose; isolated nodes get an empty row."""
    x = _binary_csr(train)
    adj = sp.bmat([[None, x], [x.T, None]], format="csr", dtype=np.float32)
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.power(deg, -0.5, out=np.zeros_like(deg), where=deg > 0)
    adj = sp.csr_matrix(sp.diags(inv) @ adj @ sp.diags(inv), dtype=np.float32)
    adj.sort_indices()
    return adj.indptr.astype(np.int64), adj.indices.astype(np.int64), adj.data.astype(np.float32)


def edge_buckets(train: sp.spmatrix, topn: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tables of the model's edge bias, from ``train`` (pass the TRAIN split only):
    - ``columns`` (I, N) int32: per item, the N items most often held together with it (N = min(topn, I)), sorted
      by column so the model can binary-search them; padding is I (sorts last, matches no item);
    - ``buckets`` (I, N) int8: the item-item bucket of each of those pairs, from c - 1 other users;
    - ``degree_buckets`` (I,) int8: the user-item bucket of each item, from its train degree - 1.
    The bucket layout is GraphGPT2Config's (``EDGE_*`` in modeling_graphgpt2/configuration_graphgpt2.py).
    A pair outside an item's top N reads bucket 1 ("no other user"), which is what most such pairs are."""
    x = _binary_csr(train)
    num_items = x.shape[1]
    n = min(int(topn), num_items)
    co = sp.csr_matrix(x.T @ x)
    co.setdiag(0)
    co.eliminate_zeros()
    top_cols, top_counts = top_n_per_row(co, n)
    top_cols[top_counts == 0] = num_items
    order = np.argsort(top_cols, axis=1, kind="stable")
    columns = np.take_along_axis(top_cols, order, axis=1).astype(np.int32)
    others = np.take_along_axis(top_counts, order, axis=1) - 1  # the prompt's own user holds both
    buckets = (np.searchsorted(EDGE_OTHER_USERS_LOW, np.maximum(others, 0), side="right")).astype(np.int8)
    degree = np.asarray(x.sum(axis=0)).ravel() - 1
    degree_buckets = (EDGE_FIRST_DEGREE_BUCKET - 1
                      + np.searchsorted(EDGE_DEGREE_LOW, np.maximum(degree, 0), side="right")).astype(np.int8)
    return columns, buckets, degree_buckets


__all__ = ["cooccurrence_row_normalised", "ease_closed_form", "ease_form", "ease_neighbourhood", "edge_buckets", "HubCounts", "neighbour_sets", "ideal_lowpass_basis", "normalized_adjacency",
           "residual_matrix", "top_n_per_row"]
