"""Raw interactions -> seeded, recorded train/valid/test split (the authors' recipe, made explicit).

Steps of `build_split`, in order (reference-code-notes.md section 1; every count goes into the manifest):

1. Duplicates: repeated (user, item) pairs are removed; the first row in read order is kept.
2. Rating filter: keep rating > `rating_threshold` (default 3.0). Rows without a rating are kept as
   positives (a source with no rating column is all positives); `rating_threshold=None` keeps every row.
3. Iterated k-core: drop users and items with fewer than `k_core` interactions, repeat until stable.
4. IDs: users in order of first appearance in the file, shuffled with `np.random.default_rng(seed)`,
   get indices 0..U-1 in the shuffled order. Each user's items are sorted by timestamp (stable, so the
   file order decides ties and users with any missing timestamp keep file order). Items get indices
   0..I-1 in order of first appearance walking users 0..U-1 and their time-sorted lists.
5. Split: a *fresh* `np.random.default_rng(seed)` walks users 0..U-1; for each, the time-sorted item
   index array is shuffled in place with `rng.shuffle`; with n items, `m = max(1, int(0.1 * n))`: the
   first m go to test, the next m to validation, the rest to train (the calibration.md recipe; the
   authors' code uses the same sizes with a legacy global numpy RNG). Each split's per-user array is
   kept in that shuffled order.

Cold items (``cold_item_frac`` > 0, the new-products protocol of docs/model.md "New items"): after step 3, that
fraction of the surviving items (sorted raw IDs, ``default_rng([seed, COLD_STREAM])``) is cold, and the cold items
are split in half, validation-cold and test-cold. Every interaction of a validation-cold item goes to validation,
of a test-cold item to test: none reaches training, the graph, a prompt or the residual. Users left with no warm
item are dropped (counted). Step 5 then splits each user's warm items as above; a user with fewer than three warm
items keeps them all in training. ``cold_item_frac=0`` is today's split, bit for bit.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .records import SPLITS, ItemMeta, RawDataset, SplitDataset

# The one place for the split recipe's defaults (the authors' seed, 5-core, rating > 3).
DEFAULT_SPLIT_SEED = 98765
DEFAULT_K_CORE = 5
DEFAULT_RATING_THRESHOLD = 3.0
COLD_STREAM = 1  # the cold-item draw's own random stream, so the warm split's stream is today's


def build_split(
    raw: RawDataset,
    rating_threshold: float | None = DEFAULT_RATING_THRESHOLD,
    k_core: int = DEFAULT_K_CORE,
    seed: int = DEFAULT_SPLIT_SEED,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    cold_item_frac: float = 0.0,
) -> SplitDataset:
    """Filter, index and split a RawDataset; see the module docstring for the exact recipe.

    Args:
        raw: output of a reader or of `make_synthetic`.
        rating_threshold: keep rows with rating strictly greater than this; None keeps all rows.
        k_core: minimum interactions per user and per item (iterated until stable); 0 or 1 disables it.
        seed: seed of both the user shuffle and the per-user split.
        val_frac / test_frac: fraction of each user's items for validation / test, at least one each.
        cold_item_frac: fraction of the items held out whole as new products (module docstring); 0 = none.

    Raises:
        ValueError: when nothing survives the filters, or a user has too few items to give at least one
            train, one validation and one test item.
    """
    if not 0 <= val_frac < 1 or not 0 <= test_frac < 1 or val_frac + test_frac >= 1:
        raise ValueError(f"val_frac and test_frac must be in [0, 1) with sum < 1, got {val_frac}, {test_frac}")
    if not 0 <= cold_item_frac < 1:
        raise ValueError(f"cold_item_frac must be in [0, 1), got {cold_item_frac}")
    counts: dict = {"read": _stats_rows(raw.interactions)}

    # 1. duplicates: first row of each (user, item) pair wins (integer codes, not a set of string pairs: 10M
    # events would hold ~1 GB of tuples)
    user_codes, user_of = _codes([r.user for r in raw.interactions])
    item_codes, _ = _codes([r.item for r in raw.interactions])
    _, first = np.unique(user_codes * (int(item_codes.max(initial=0)) + 1) + item_codes, return_index=True)
    rows = [raw.interactions[k] for k in np.sort(first)]
    del user_codes, item_codes, user_of, first
    counts["duplicates_removed"] = len(raw.interactions) - len(rows)
    counts["after_dedup"] = _stats_rows(rows)

    # 2. rating filter
    unrated = sum(r.rating is None for r in rows)
    if rating_threshold is not None:
        kept = [r for r in rows if r.rating is None or r.rating > rating_threshold]
        counts["rating_removed"] = len(rows) - len(kept)
        rows = kept
    else:
        counts["rating_removed"] = 0
    counts["unrated_kept_as_positive"] = unrated
    counts["after_rating"] = _stats_rows(rows)
    if not rows:
        raise ValueError(f"{raw.name}: no interactions left after the rating filter (rating > {rating_threshold})")

    # 3. iterated k-core on integer codes (vectorised; each pass is O(rows))
    user_codes, user_of = _codes([r.user for r in rows])
    item_codes, item_of = _codes([r.item for r in rows])
    keep = np.ones(len(rows), dtype=bool)
    iterations = 0
    if k_core > 1:
        while True:
            iterations += 1
            u_cnt = np.bincount(user_codes[keep], minlength=len(user_of))
            i_cnt = np.bincount(item_codes[keep], minlength=len(item_of))
            ok = keep & (u_cnt[user_codes] >= k_core) & (i_cnt[item_codes] >= k_core)
            if np.array_equal(ok, keep):
                break
            keep = ok
    rows = [r for r, k in zip(rows, keep) if k]
    counts["k_core_iterations"] = iterations
    counts["after_k_core"] = _stats_rows(rows)
    if not rows:
        raise ValueError(f"{raw.name}: no interactions left after the {k_core}-core filter")
    cold_half: dict[str, str] = {}  # raw item id -> "valid" / "test"
    if cold_item_frac > 0:
        rows, cold_half, counts["cold_items"] = _hold_out_cold_items(rows, cold_item_frac, seed)

    # 4. users: first appearance, then seeded shuffle; items: first appearance along time-sorted lists
    per_user: dict[str, list] = {}
    for r in rows:
        per_user.setdefault(r.user, []).append(r)
    users_in_file_order = list(per_user)
    perm = np.random.default_rng(seed).permutation(len(users_in_file_order))
    user_ids = [users_in_file_order[p] for p in perm]

    item_index: dict[str, int] = {}
    sorted_lists: list[np.ndarray] = []
    for user in user_ids:
        events = per_user[user]
        if all(e.timestamp is not None for e in events):
            events = sorted(events, key=lambda e: e.timestamp)  # stable: file order breaks ties
        idx = []
        for e in events:
            if e.item not in item_index:
                item_index[e.item] = len(item_index)
            idx.append(item_index[e.item])
        sorted_lists.append(np.asarray(idx, dtype=np.int32))
    item_ids = list(item_index)

    # 5. per-user random split with a fresh Generator (calibration.md recipe)
    rng = np.random.default_rng(seed)
    train, valid, test = [], [], []
    half_of = np.asarray([_HALF_CODE.get(cold_half.get(i), 0) for i in item_ids], dtype=np.int8)  # 0 = warm
    for u, items in enumerate(sorted_lists):
        if cold_half:
            cold_valid, cold_test = items[half_of[items] == 1], items[half_of[items] == 2]
            items = items[half_of[items] == 0]
        n = len(items)
        n_test = max(1, int(test_frac * n))
        n_val = max(1, int(val_frac * n))
        if n - n_test - n_val < 1:
            if cold_half:  # a user with few warm items keeps them for training (their cold items are held out)
                train.append(items.copy())
                valid.append(cold_valid)
                test.append(cold_test)
                continue
            raise ValueError(
                f"{raw.name}: user {user_ids[u]!r} has {n} items, too few for >= 1 train, validation and test item "
                f"(raise k_core to at least 3)"
            )
        shuffled = items.copy()
        rng.shuffle(shuffled)
        test.append(np.concatenate([shuffled[:n_test], cold_test]) if cold_half else shuffled[:n_test])
        valid.append(np.concatenate([shuffled[n_test : n_test + n_val], cold_valid]) if cold_half
                     else shuffled[n_test : n_test + n_val])
        train.append(shuffled[n_test + n_val :])

    items_meta = [raw.items.get(i, ItemMeta()) for i in item_ids]
    user_index = {u: k for k, u in enumerate(user_ids)}
    # only pairs that survived the filters: a (user, item) review whose rating failed the threshold is
    # not an interaction, even when both the user and the item survive
    kept_pairs = {(r.user, r.item) for r in rows} if raw.reviews else set()  # no reviews, no pair set to hold
    reviews = {
        (user_index[u], item_index[i]): text
        for (u, i), text in raw.reviews.items()
        if (u, i) in kept_pairs and text
    }

    split = SplitDataset(
        name=raw.name,
        user_ids=user_ids,
        item_ids=item_ids,
        train=train,
        valid=valid,
        test=test,
        items=items_meta,
        reviews=reviews,
        manifest={},
        cold_items={s: [k for k, i in enumerate(item_ids) if cold_half.get(i) == h] for s, h in COLD_SPLITS.items()}
        if cold_half else {},
    )
    split_counts = {s: int(sum(len(a) for a in split.split_lists(s))) for s in SPLITS}
    hashes = {s: split_hash(split.pairs(s)) for s in SPLITS}
    split.manifest = {
        "name": raw.name,
        "source": raw.source,
        "read_report": raw.report.to_dict(),
        "preprocess": {
            "recipe": "dedup(first) -> rating > threshold (unrated kept) -> iterated k-core -> "
            "user shuffle default_rng(seed).permutation -> item ids by first appearance (time-sorted) -> "
            "per-user split with fresh default_rng(seed): test, then validation, rest train",
            "rating_threshold": rating_threshold,
            "k_core": k_core,
            "seed": seed,
            "val_frac": val_frac,
            "test_frac": test_frac,
            **({"cold_item_frac": cold_item_frac, "cold_stream": COLD_STREAM} if cold_half else {}),
        },
        "counts": counts,
        "num_users": split.num_users,
        "num_items": split.num_items,
        "num_interactions": sum(split_counts.values()),
        "split_sizes": split_counts,
        "items_with_metadata": sum(i in raw.items for i in item_ids),
        "reviews": len(reviews),
        "split_hashes": hashes,
        "split_hash": hashlib.sha256("".join(hashes[s] for s in SPLITS).encode()).hexdigest(),
        **({"cold_items": {s: len(v) for s, v in split.cold_items.items()}} if cold_half else {}),
        "id_hashes": {
            "users": hashlib.sha256("\n".join(user_ids).encode()).hexdigest(),
            "items": hashlib.sha256("\n".join(item_ids).encode()).hexdigest(),
        },
    }
    return split


COLD_SPLITS = {"validation": "valid", "test": "test"}  # split name -> the half of the cold items it holds
_HALF_CODE = {"valid": 1, "test": 2}


def _hold_out_cold_items(rows: list, frac: float, seed: int) -> tuple[list, dict[str, str], dict]:
    """The rows of users who keep a warm item, ``{raw item id: "valid" | "test"}`` for the cold items, and counts.

    ``round(frac * items)`` items (at least 2, so each half has one) are drawn from the sorted raw IDs with their own
    random stream; the first half of the draw is validation-cold, the rest test-cold."""
    items = sorted({r.item for r in rows})
    n_cold = max(2, int(round(frac * len(items))))
    if n_cold >= len(items):
        raise ValueError(f"cold_item_frac={frac} leaves no warm item among {len(items)}")
    drawn = np.random.default_rng([seed, COLD_STREAM]).permutation(len(items))[:n_cold]
    half = {items[k]: ("valid" if j < n_cold // 2 else "test") for j, k in enumerate(drawn)}
    warm_users = {r.user for r in rows if r.item not in half}
    kept = [r for r in rows if r.user in warm_users]
    counts = {"drawn": n_cold, "users_without_warm_items_dropped": len({r.user for r in rows}) - len(warm_users),
              "rows_dropped_with_them": len(rows) - len(kept)}
    return kept, half, counts


def split_hash(pairs: np.ndarray) -> str:
    """sha256 of the (user, item) index pairs sorted by (user, item), as little-endian int32 bytes."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return hashlib.sha256(pairs[order].astype("<i4").tobytes()).hexdigest()


def _codes(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Integer codes in order of first appearance, and the code -> value list."""
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return codes, list(index)


def _stats_rows(rows: Sequence) -> dict:
    return {
        "interactions": len(rows),
        "users": len({r.user for r in rows}),
        "items": len({r.item for r in rows}),
    }
