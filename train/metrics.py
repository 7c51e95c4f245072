"""Full-catalog ranking metrics (numpy only).

Protocol (DESIGN.md §5, reference-code-notes §7): every user scores the whole catalogue, the user's train items
are masked to -inf, the top-k is taken with a partition and then sorted. Two recall definitions are
reported side by side because the paper and the authors' code disagree:

- ``recall@k``        = |top-k ∩ rel| / min(k, |rel|)   (authors' code; the headline number)
- ``recall@k_paper``  = |top-k ∩ rel| / |rel|           (paper Eq. 8; lower when |rel| > k)
- ``ndcg@k``          = DCG / IDCG with binary gain, DCG = Σ_{r≤k} rel_r / log2(r+1),
                        IDCG = Σ_{r≤min(k,|rel|)} 1 / log2(r+1)

Users without relevant items get NaN in the per-user arrays and are left out of the means (the count of users
that were averaged is reported as ``num_users``). Per-user arrays are what multi-process evaluation gathers and
what the seed-spread statistics use; :func:`summarize` turns them into means.

Item sets (``relevant`` and ``exclude``) are accepted as a scipy CSR matrix (anything with ``indptr`` and
``indices``), a list of integer arrays (one per user), or -- for ``exclude`` only -- a dense (U, I) bool mask.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "to_item_lists",
    "topk_from_scores",
    "hits_matrix",
    "recall_at_k",
    "ndcg_at_k",
    "per_user_metrics",
    "merge_per_user",
    "summarize",
    "evaluate_scores",
    "metric_names",
]

ItemSets = Any  # CSR-like (indptr/indices), Sequence[array-like of int], or (for exclude) a (U, I) bool array


def to_item_lists(items: ItemSets, num_users: int, num_items: int | None = None, name: str = "items") -> list[np.ndarray]:
    """Normalise a per-user item collection to a list of unique, sorted int64 arrays (one per user).

    Raises ValueError naming ``name`` when the number of rows is wrong or an item index is out of range.
    """
    if hasattr(items, "tocsr") and getattr(items, "format", "csr") != "csr":  # scipy COO/CSC/... -> CSR rows
        items = items.tocsr()
    if hasattr(items, "indptr") and hasattr(items, "indices"):  # scipy CSR (or anything shaped like it)
        shape = getattr(items, "shape", None)
        if shape is not None and shape[0] != num_users:
            raise ValueError(f"{name}: CSR has {shape[0]} rows but scores have {num_users} users")
        if shape is not None and num_items is not None and shape[1] != num_items:
            raise ValueError(f"{name}: CSR has {shape[1]} columns but scores have {num_items} items")
        indptr = np.asarray(items.indptr)
        indices = np.asarray(items.indices, dtype=np.int64)
        data = np.asarray(items.data) if hasattr(items, "data") else None
        if len(indptr) != num_users + 1:
            raise ValueError(f"{name}: CSR has {len(indptr) - 1} rows but scores have {num_users} users")
        out = []
        for u in range(num_users):
            row = indices[indptr[u] : indptr[u + 1]]
            if data is not None:  # explicit zeros stored in a CSR are not items
                row = row[data[indptr[u] : indptr[u + 1]] != 0]
            out.append(np.unique(row))
    else:
        arr = items
        if isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype == np.bool_:
            if arr.shape[0] != num_users or (num_items is not None and arr.shape[1] != num_items):
                raise ValueError(f"{name}: bool mask has shape {arr.shape}, expected ({num_users}, {num_items})")
            return [np.flatnonzero(row).astype(np.int64) for row in arr]
        if len(items) != num_users:
            raise ValueError(f"{name}: got {len(items)} rows but scores have {num_users} users")
        out = []
        for u, row in enumerate(items):
            a = np.asarray(row if row is not None else [], dtype=np.float64).ravel()
            if a.size and (np.any(a != np.floor(a))):
                raise ValueError(f"{name}: row {u} holds non-integer item indices {a[a != np.floor(a)][:3]}")
            out.append(np.unique(a.astype(np.int64)))
    if num_items is not None:
        for u, a in enumerate(out):
            if a.size and (a[0] < 0 or a[-1] >= num_items):
                bad = a[(a < 0) | (a >= num_items)][:3]
                raise ValueError(f"{name}: row {u} holds item indices {bad.tolist()} outside [0, {num_items})")
    return out


def _exclude_coords(exclude: ItemSets, num_users: int, num_items: int) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
    """(rows, cols) of the entries to mask, or a dense bool mask when one was given."""
    if isinstance(exclude, np.ndarray) and exclude.ndim == 2 and exclude.dtype == np.bool_:
        if exclude.shape != (num_users, num_items):
            raise ValueError(f"exclude: bool mask has shape {exclude.shape}, expected ({num_users}, {num_items})")
        return exclude
    lists = to_item_lists(exclude, num_users, num_items, name="exclude")
    rows = np.repeat(np.arange(num_users), [len(a) for a in lists])
    cols = np.concatenate(lists) if lists else np.zeros(0, np.int64)
    return rows, cols.astype(np.int64)


def topk_from_scores(scores: np.ndarray, k: int, exclude: ItemSets | None = None) -> np.ndarray:
    """Top-k item indices per user, best first, with ``exclude`` items masked to -inf.

    A partition finds each row's k-th best score (over a few candidates per row, ``_best_columns_of_candidates``);
    the items above it, and the lowest-indexed items tied with it, are the k kept, and only those are sorted (ties
    broken by lower item index, at the cut too).
    Slots that cannot be filled (k larger than the catalogue, or fewer than k items left after masking) hold
    -1, which is never a hit. ``scores`` is not modified. Returns an int64 array of shape (U, k).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (users, items), got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_users, num_items = scores.shape
    k_req, k = k, min(k, num_items)
    work = np.array(scores, dtype=np.float64 if scores.dtype == np.float64 else np.float32, copy=True)
    if np.isnan(work).any():
        raise ValueError("scores contain NaN; a model produced invalid scores")
    if exclude is not None:
        coords = _exclude_coords(exclude, num_users, num_items)
        if isinstance(coords, np.ndarray):
            work[coords] = -np.inf
        else:
            work[coords[0], coords[1]] = -np.inf
    if k < num_items:
        part = _best_columns_of_candidates(work, k)
    else:
        part = np.broadcast_to(np.arange(num_items), (num_users, num_items)).copy()
    part_scores = np.take_along_axis(work, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)  # primary: score desc, secondary: item index asc
    top = np.take_along_axis(part, order, axis=1).astype(np.int64)
    top[np.take_along_axis(part_scores, order, axis=1) == -np.inf] = -1
    if k_req > k:
        top = np.concatenate([top, np.full((num_users, k_req - k), -1, dtype=np.int64)], axis=1)
    return top


def _best_columns(work: np.ndarray, k: int) -> np.ndarray:
    """(U, k) column indices, ascending, of each row's k best entries: those above the row's k-th best value and the
    lowest-indexed entries tied with it (what a full sort by value, then index, keeps)."""
    num_cols = work.shape[1]
    kth = np.partition(work, num_cols - k, axis=1)[:, num_cols - k, None]
    keep = work >= kth
    n_keep = np.count_nonzero(keep, axis=1)
    for u in np.flatnonzero(n_keep > k):  # ties at the k-th value: the lower indices take the last slots
        tied = np.flatnonzero(work[u] == kth[u, 0])
        keep[u, tied[k - (n_keep[u] - len(tied)):]] = False
    return np.nonzero(keep)[1].reshape(work.shape[0], k)


def _best_columns_of_candidates(work: np.ndarray, k: int) -> np.ndarray:
    """``_best_columns`` from a few candidates per row: the k-th best of the row's chunk maxima is at most its k-th
    best value, so the entries at or above it hold every entry that the k best need, ties included (a few hundred
    of 100k items on model scores). A partition of the whole catalog was most of a scale sweep's time. Falls back
    to the whole rows when that bound keeps too many (a catalog of few chunks, a row masked down to -inf)."""
    num_users, num_items = work.shape
    chunk = min(64, num_items // (8 * k))  # at least 8k chunks, so the bound sits high in the row
    if chunk < 4:
        return _best_columns(work, k)
    num_chunks = -(-num_items // chunk)
    maxima = np.maximum.reduceat(work, np.arange(0, num_items, chunk), axis=1)
    bound = np.partition(maxima, num_chunks - k, axis=1)[:, num_chunks - k, None]
    rows, cols = np.nonzero(work >= bound)  # row-major: each row's columns ascending
    counts = np.bincount(rows, minlength=num_users)
    width = int(counts.max())
    if width > num_items // 4:
        return _best_columns(work, k)
    slot = np.arange(len(cols)) - np.repeat(np.cumsum(counts) - counts, counts)
    cand_cols = np.zeros((num_users, width), dtype=np.int64)
    cand_values = np.full((num_users, width), -np.inf, dtype=work.dtype)  # padding: below every candidate
    cand_cols[rows, slot], cand_values[rows, slot] = cols, work[rows, cols]
    return np.take_along_axis(cand_cols, _best_columns(cand_values, k), axis=1)


def hits_matrix(topk_items: np.ndarray, relevant: ItemSets) -> np.ndarray:
    """(U, K) bool: whether the item at each rank is relevant for that user. Vectorised via (user, item) keys."""
    topk_items = np.asarray(topk_items, dtype=np.int64)
    if topk_items.ndim != 2:
        raise ValueError(f"topk_items must be 2-D (users, k), got shape {topk_items.shape}")
    num_users = topk_items.shape[0]
    rel = relevant if isinstance(relevant, list) and all(isinstance(a, np.ndarray) for a in relevant) else to_item_lists(relevant, num_users, name="relevant")
    if len(rel) != num_users:
        raise ValueError(f"relevant: got {len(rel)} rows but topk_items has {num_users} users")
    width = int(max(topk_items.max(initial=-1), max((a.max(initial=-1) for a in rel), default=-1))) + 2
    rel_keys = np.concatenate([u * width + a for u, a in enumerate(rel)]) if num_users else np.zeros(0, np.int64)
    top_keys = np.arange(num_users, dtype=np.int64)[:, None] * width + topk_items
    hits = np.isin(top_keys, rel_keys)
    hits &= topk_items >= 0
    return hits


def recall_at_k(topk_items: np.ndarray, relevant: ItemSets, k: int, denominator: str = "min") -> np.ndarray:
    """Per-user Recall@k; NaN for users without relevant items.

    denominator="min": |top-k ∩ rel| / min(k, |rel|) (authors' code); "relevant": / |rel| (paper Eq. 8).
    """
    if denominator not in ("min", "relevant"):
        raise ValueError(f"denominator must be 'min' or 'relevant', got {denominator!r}")
    topk_items = np.asarray(topk_items, dtype=np.int64)
    _check_width(topk_items, k)
    rel = to_item_lists(relevant, topk_items.shape[0], name="relevant")
    return _recall_from_hits(hits_matrix(topk_items[:, :k], rel), _num_relevant(rel), k, denominator)


def _num_relevant(rel: list[np.ndarray]) -> np.ndarray:
    return np.array([len(a) for a in rel], dtype=np.int64)


def _recall_from_hits(hits: np.ndarray, n_rel: np.ndarray, k: int, denominator: str) -> np.ndarray:
    """Recall@k from the (U, >= k) hits of the ranked lists and the users' numbers of relevant items."""
    n_rel = n_rel.astype(np.float64)
    n_hit = hits[:, :k].sum(axis=1).astype(np.float64)
    denom = np.minimum(k, n_rel) if denominator == "min" else n_rel
    with np.errstate(invalid="ignore", divide="ignore"):
        out = n_hit / denom
    out[n_rel == 0] = np.nan
    return out


def _check_width(topk_items: np.ndarray, k: int) -> None:
    # A top-20 list silently scored as @40 would under-count; topk_from_scores pads with -1 to exactly k.
    if topk_items.ndim != 2 or topk_items.shape[1] < k:
        raise ValueError(f"topk_items must be (users, >= {k}) for @{k}, got shape {topk_items.shape}")


def ndcg_at_k(topk_items: np.ndarray, relevant: ItemSets, k: int) -> np.ndarray:
    """Per-user NDCG@k with binary gain and IDCG over min(k, |rel|) ranks; NaN for users without relevant items."""
    topk_items = np.asarray(topk_items, dtype=np.int64)
    _check_width(topk_items, k)
    rel = to_item_lists(relevant, topk_items.shape[0], name="relevant")
    return _ndcg_from_hits(hits_matrix(topk_items[:, :k], rel), _num_relevant(rel), k)


def _ndcg_from_hits(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k from the (U, >= k) hits of the ranked lists and the users' numbers of relevant items."""
    hits = hits[:, :k]
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal_cum = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    idcg = ideal_cum[np.minimum(n_rel, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = dcg / idcg
    out[n_rel == 0] = np.nan
    return out


def item_popularity(train) -> np.ndarray:
    """(num_items,) float32 train-interaction count per item, from a binary (users, items) scipy matrix: the
    popularity baseline's score of every item, for every user (one definition for train/ and benchmarks/)."""
    return np.asarray(train.sum(axis=0), dtype=np.float32).ravel()


def metric_names(ks: Sequence[int] = (20, 40), ndcg_ks: Sequence[int] = (100,)) -> list[str]:
    """The keys :func:`per_user_metrics` produces, in report order."""
    names = []
    for k in ks:
        names += [f"recall@{k}", f"recall@{k}_paper"]
    names += [f"ndcg@{k}" for k in ndcg_ks]
    return names


def per_user_metrics(
    scores: np.ndarray,
    relevant: ItemSets,
    exclude: ItemSets | None = None,
    ks: Sequence[int] = (20, 40),
    ndcg_ks: Sequence[int] = (100,),
) -> dict[str, np.ndarray]:
    """Per-user metric arrays (shape (U,), NaN where a user has no relevant items) plus ``num_relevant``.

    Works on any block of users: evaluate batch by batch (or process by process) and join the blocks with
    :func:`merge_per_user`, then average with :func:`summarize`.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (users, items), got shape {scores.shape}")
    num_users, num_items = scores.shape
    rel = to_item_lists(relevant, num_users, num_items, name="relevant")
    top = topk_from_scores(scores, max(list(ks) + list(ndcg_ks)), exclude)
    hits, n_rel = hits_matrix(top, rel), _num_relevant(rel)  # once for every cut-off: the lists are prefixes
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"recall@{k}"] = _recall_from_hits(hits, n_rel, k, "min")
        out[f"recall@{k}_paper"] = _recall_from_hits(hits, n_rel, k, "relevant")
    for k in ndcg_ks:
        out[f"ndcg@{k}"] = _ndcg_from_hits(hits, n_rel, k)
    out["num_relevant"] = n_rel
    return out


def merge_per_user(parts: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate per-user blocks (e.g. batches, or one block per process after a gather)."""
    parts = list(parts)
    if not parts:
        raise ValueError("merge_per_user: no blocks to merge")
    keys = list(parts[0])
    for p in parts[1:]:
        if list(p) != keys:
            raise ValueError(f"merge_per_user: blocks have different metrics {list(p)} vs {keys}")
    return {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in keys}


def summarize(per_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Means over users with at least one relevant item; ``num_users`` is that count, ``num_skipped`` the rest."""
    n_rel = np.asarray(per_user["num_relevant"])
    valid = n_rel > 0
    out: dict[str, float] = {}
    for key, values in per_user.items():
        if key == "num_relevant":
            continue
        v = np.asarray(values, dtype=np.float64)[valid]
        out[key] = float(v.mean()) if v.size else float("nan")
    out["num_users"] = int(valid.sum())
    out["num_skipped"] = int((~valid).sum())
    return out


def evaluate_scores(
    scores: np.ndarray,
    relevant: ItemSets,
    exclude: ItemSets | None = None,
    ks: Sequence[int] = (20, 40),
    ndcg_ks: Sequence[int] = (100,),
) -> dict[str, float]:
    """Mean Recall@k (both definitions) and NDCG@k over users with relevant items, plus ``num_users``.

    ``scores`` (U, I) higher = better; ``relevant`` the held-out items per user; ``exclude`` the items to mask
    (the user's train items). Keys: "recall@20", "recall@20_paper", "recall@40", "recall@40_paper",
    "ndcg@100", "num_users", "num_skipped".
    """
    return summarize(per_user_metrics(scores, relevant, exclude, ks, ndcg_ks))
