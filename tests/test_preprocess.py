"""build_split: each step against an independent recount, the split recipe, seeds and hashes; synthetic data."""
from __future__ import annotations

import numpy as np
import pytest

from data_builders.preprocess import build_split, split_hash
from data_builders.records import Interaction, ItemMeta, RawDataset, ReadReport
from data_builders.synthetic import make_synthetic


def _raw(rows, items=None, reviews=None) -> RawDataset:
    return RawDataset(name="t", interactions=[Interaction(*r) for r in rows], items=items or {},
                      reviews=reviews or {}, report=ReadReport(), source={"format": "test"})


def _full_grid(n_users: int, n_items: int, rating=5.0) -> list[tuple]:
    return [(f"u{u}", f"i{i}", rating, 1000 * u + i) for u in range(n_users) for i in range(n_items)]


def test_dedup_rating_and_unrated_rows_counted():
    rows = _full_grid(6, 6)
    rows += [("u0", "i0", 1.0, 5)]  # duplicate pair: first row (rating 5) wins
    rows += [("u0", "x", 3.0, 6), ("u1", "x", 2.0, 7)]  # rating <= 3 -> removed
    rows += [("u2", "y", None, 8)]  # no rating -> positive (but then removed by the 5-core)
    split = build_split(_raw(rows), k_core=5)
    c = split.manifest["counts"]
    assert c["read"] == {"interactions": 40, "users": 6, "items": 8}
    assert c["duplicates_removed"] == 1
    assert c["rating_removed"] == 2 and c["unrated_kept_as_positive"] == 1
    assert c["after_rating"]["interactions"] == 37
    assert c["after_k_core"] == {"interactions": 36, "users": 6, "items": 6}
    assert split.num_users == 6 and split.num_items == 6
    # rating_threshold=None keeps every row
    none = build_split(_raw(rows), rating_threshold=None, k_core=1)
    assert none.manifest["counts"]["after_rating"]["interactions"] == 39


def _kcore_bruteforce(pairs: set, k: int) -> set:
    """Independent k-core: repeatedly drop one under-degree user or item at a time."""
    pairs = set(pairs)
    while True:
        users, items = {}, {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        bad = next(((u, i) for u, i in pairs if users[u] < k or items[i] < k), None)
        if bad is None:
            return pairs
        u, i = bad
        pairs = {p for p in pairs if (users[u] >= k or p[0] != u) and (items[i] >= k or p[1] != i)}


def test_k_core_is_iterated_until_stable():
    rng = np.random.default_rng(3)
    pairs = {(f"u{u}", f"i{i}") for u in range(60) for i in range(40) if rng.random() < 0.15}
    rows = [(u, i, 5.0, None) for u, i in sorted(pairs)]
    split = build_split(_raw(rows), k_core=5)
    got = {(split.user_ids[u], split.item_ids[i]) for s in ("train", "valid", "test") for u, i in split.pairs(s)}
    assert got == _kcore_bruteforce(pairs, 5)
    assert split.manifest["counts"]["k_core_iterations"] > 2  # one pass would not have been enough


def test_ids_and_split_follow_the_recipe():
    raw = make_synthetic(num_users=80, num_items=40, seed=1)
    split = build_split(raw, seed=98765)
    # independent re-implementation of steps 1-5 (see preprocess module docstring)
    seen, rows = set(), []
    for r in raw.interactions:
        if (r.user, r.item) not in seen:
            seen.add((r.user, r.item))
            rows.append(r)
    rows = [r for r in rows if r.rating > 3.0]
    pairs = _kcore_bruteforce({(r.user, r.item) for r in rows}, 5)
    rows = [r for r in rows if (r.user, r.item) in pairs]
    users = list(dict.fromkeys(r.user for r in rows))
    users = [users[p] for p in np.random.default_rng(98765).permutation(len(users))]
    assert split.user_ids == users
    item_ids: dict[str, int] = {}
    per_user = []
    for u in users:
        seq = sorted((r for r in rows if r.user == u), key=lambda r: r.timestamp)
        per_user.append(np.array([item_ids.setdefault(r.item, len(item_ids)) for r in seq], dtype=np.int32))
    assert split.item_ids == list(item_ids)
    rng = np.random.default_rng(98765)
    for u, items in enumerate(per_user):
        m = max(1, int(0.1 * len(items)))
        rng.shuffle(items)
        np.testing.assert_array_equal(split.test[u], items[:m])
        np.testing.assert_array_equal(split.valid[u], items[m:2 * m])
        np.testing.assert_array_equal(split.train[u], items[2 * m:])
        assert split.train[u].dtype == np.int32
    sizes = split.manifest["split_sizes"]
    assert sizes["train"] + sizes["valid"] + sizes["test"] == len(rows) == split.manifest["num_interactions"]


def test_splits_are_disjoint_and_cover_every_pair():
    split = build_split(make_synthetic(num_users=60, num_items=30, seed=2))
    sets = {s: {tuple(p) for p in split.pairs(s).tolist()} for s in ("train", "valid", "test")}
    assert not sets["train"] & sets["valid"] and not sets["train"] & sets["test"] and not sets["valid"] & sets["test"]
    for u in range(split.num_users):
        assert len(split.valid[u]) >= 1 and len(split.test[u]) >= 1 and len(split.train[u]) >= 1
    assert split.pairs("validation").shape == split.pairs("valid").shape
    assert split.pairs("train").dtype == np.int32 and split.pairs("train").shape[1] == 2
    with pytest.raises(ValueError, match="unknown split"):
        split.pairs("dev")


def test_same_seed_same_hash_different_seed_different():
    raw = make_synthetic(num_users=60, num_items=30, seed=4)
    a, b, c = build_split(raw, seed=98765), build_split(raw, seed=98765), build_split(raw, seed=1)
    assert a.manifest["split_hashes"] == b.manifest["split_hashes"]
    assert a.manifest["split_hash"] == b.manifest["split_hash"]
    assert a.manifest["split_hashes"]["test"] != c.manifest["split_hashes"]["test"]
    assert a.manifest["split_hash"] != c.manifest["split_hash"]
    assert a.manifest["split_hashes"]["train"] == split_hash(a.pairs("train")[::-1])  # order-free hash
    assert a.manifest["preprocess"]["seed"] == 98765 and c.manifest["preprocess"]["seed"] == 1


def test_items_reviews_and_untimed_order():
    rows = [(f"u{u}", f"i{i}", None, None) for u in range(6) for i in (4, 3, 2, 1, 0)]
    rows[1 * 5 + 1] = ("u1", "i3", 1.0, None)  # low rating: not an interaction though u1 and i3 both survive
    reviews = {("u0", "i4"): "nice", ("u9", "i4"): "not kept: u9 is not in the data", ("u1", "i3"): "bad"}
    items = {"i4": ItemMeta(title="Four")}
    split = build_split(_raw(rows, items=items, reviews=reviews), k_core=3)
    # no timestamps: file order, so every user lists i4 first and i4 gets index 0
    assert split.item_ids[0] == "i4" and sorted(split.item_ids) == ["i0", "i1", "i2", "i3", "i4"]
    assert split.items[0].title == "Four" and split.items[1] == ItemMeta()
    u0, u1 = split.user_ids.index("u0"), split.user_ids.index("u1")
    assert split.reviews == {(u0, 0): "nice"}
    assert split.item_ids.index("i3") not in {int(i) for s in (split.train, split.valid, split.test) for i in s[u1]}
    assert split.manifest["items_with_metadata"] == 1 and split.manifest["reviews"] == 1


def test_too_few_items_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        build_split(_raw(_full_grid(3, 2)), k_core=1)
    with pytest.raises(ValueError, match="5-core"):
        build_split(_raw(_full_grid(3, 3)), k_core=5)


def test_synthetic_is_deterministic_and_complete():
    a, b, c = make_synthetic(seed=0), make_synthetic(seed=0), make_synthetic(seed=1)
    assert a.interactions == b.interactions and a.items == b.items and a.reviews == b.reviews
    assert a.interactions != c.interactions
    assert len(a.items) == 120 and all(m.title and m.brand and m.categories and m.description and m.price for m in a.items.values())
    assert any(r.rating <= 3 for r in a.interactions) and all(r.timestamp for r in a.interactions)
    assert set(a.reviews) == {(r.user, r.item) for r in a.interactions}


def _recall_at(scores: np.ndarray, train: list, test: list, k: int) -> float:
    recalls = []
    for u in range(len(test)):
        s = scores[u].astype(float).copy()
        s[train[u]] = -np.inf
        top = np.argpartition(-s, k)[:k]
        recalls.append(len(set(top.tolist()) & set(test[u].tolist())) / min(k, len(test[u])))
    return float(np.mean(recalls))


def test_synthetic_carries_signal_beyond_popularity():
    split = build_split(make_synthetic())
    assert split.num_users > 250 and split.num_items == 120  # the default survives the filters nearly whole
    x = np.zeros((split.num_users, split.num_items))
    for u, items in enumerate(split.train):
        x[u, items] = 1.0
    test = [np.concatenate([v, t]) for v, t in zip(split.valid, split.test)]
    pop = np.tile(x.sum(0), (split.num_users, 1))
    norms = np.sqrt(x.sum(0)) + 1e-9
    sim = (x.T @ x) / norms[:, None] / norms[None, :]  # item-item cosine: collaborative signal
    np.fill_diagonal(sim, 0)
    r_pop = _recall_at(pop, split.train, test, 10)
    r_knn = _recall_at(x @ sim, split.train, test, 10)
    # content signal: items sharing a brand with the user's train items
    brands = np.array([m.brand for m in split.items])
    same_brand = (brands[:, None] == brands[None, :]).astype(float)
    r_brand = _recall_at(x @ same_brand + 1e-6 * pop, split.train, test, 10)
    assert r_knn > 1.5 * r_pop, (r_knn, r_pop)
    assert r_brand > 1.5 * r_pop, (r_brand, r_pop)
