"""The real Amazon files in ../shared/data: statistics checked against independent recounts and calibration.md."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from data_builders.preprocess import build_split
from data_builders.readers import read_source


def _recount_kcore(pairs: set, k: int) -> set:
    """Independent iterated k-core (set arithmetic, whole sweeps) for cross-checking build_split."""
    while True:
        users = Counter(u for u, _ in pairs)
        items = Counter(i for _, i in pairs)
        kept = {(u, i) for u, i in pairs if users[u] >= k and items[i] >= k}
        if kept == pairs:
            return pairs
        pairs = kept


@pytest.fixture(scope="module")
def mi(shared_data: Path):
    folder = shared_data / "amazon-musical-instruments-2014"
    return folder, read_source(folder)


def test_musical_instruments_2014_stats(mi):
    folder, raw = mi
    split = build_split(raw, rating_threshold=3.0, k_core=5, seed=98765)
    m = split.manifest
    print(
        f"\nMusical Instruments 2014: read {m['counts']['read']}, after rating > 3 {m['counts']['after_rating']}, "
        f"after 5-core {m['counts']['after_k_core']} ({m['counts']['k_core_iterations']} passes); "
        f"split {m['split_sizes']}; split hash {m['split_hash'][:16]}"
    )
    # independent recount straight from the gzip file, no project code
    lines = gzip.open(folder / "reviews_Musical_Instruments_5.json.gz", "rt", encoding="utf-8").read().splitlines()
    records = [json.loads(line) for line in lines]
    positives = {(r["reviewerID"], r["asin"]) for r in records if float(r["overall"]) > 3}
    core = _recount_kcore(positives, 5)
    assert m["counts"]["read"]["interactions"] == len(records) == 10261
    assert m["counts"]["after_rating"]["interactions"] == len(positives)
    assert m["counts"]["after_k_core"] == {
        "interactions": len(core), "users": len({u for u, _ in core}), "items": len({i for _, i in core})}
    recovered = {(split.user_ids[u], split.item_ids[i]) for s in ("train", "valid", "test") for u, i in split.pairs(s)}
    assert recovered == core
    # calibration.md: 526 users, 347 items, 3,615 interactions (train 2,551 / val 532 / test 532)
    assert (split.num_users, split.num_items, m["num_interactions"]) == (526, 347, 3615)
    assert m["split_sizes"] == {"train": 2551, "valid": 532, "test": 532}
    # metadata and reviews of the surviving items/pairs
    assert m["items_with_metadata"] == 347
    assert sum(it.title is not None for it in split.items) == 347
    assert all(it.categories[0] == "Musical Instruments" for it in split.items)
    assert not any("&quot;" in (it.title or "") for it in split.items)  # entities unescaped
    assert len(split.reviews) == len([p for p in core if p in raw.reviews])


def test_musical_instruments_seeds(mi):
    _, raw = mi
    a, b, c = build_split(raw), build_split(raw), build_split(raw, seed=7)
    assert a.manifest["split_hash"] == b.manifest["split_hash"] != c.manifest["split_hash"]
    assert c.manifest["split_sizes"] == a.manifest["split_sizes"]  # sizes depend on counts only


def test_gift_cards_2018_duplicates_counted(shared_data: Path):
    folder = shared_data / "amazon-2018-gift-cards"
    raw = read_source(folder)
    assert raw.source["format"] == "amazon2018" and raw.report.total_skipped == 0
    lines = gzip.open(folder / "Gift_Cards_5.json.gz", "rt", encoding="utf-8").read().splitlines()
    pairs = [(r["reviewerID"], r["asin"]) for r in map(json.loads, lines)]
    expected_dups = len(pairs) - len(set(pairs))
    assert expected_dups > 0
    split = build_split(raw)
    assert split.manifest["counts"]["read"]["interactions"] == len(pairs) == 2972
    assert split.manifest["counts"]["duplicates_removed"] == expected_dups
    meta = [raw.items[i] for i in raw.items]
    assert sum(bool(m.categories) for m in meta) >= len(meta) - 2  # two items have an empty category list
    assert all(m.categories[0] == "Gift Cards" for m in meta if m.categories)
    assert all(len(m.categories) == len(set(m.categories)) for m in meta)  # ["Gift Cards", "Gift Cards"] collapsed
    assert not any("<" in (m.description or "") and ">" in (m.description or "") for m in meta)  # HTML stripped


def test_magazine_2018_junk_titles_dropped(shared_data: Path):
    raw = read_source(shared_data / "amazon-2018-magazine-subscriptions")
    # this dump's titles are a cut-off HTML tag ('<span class="a-size-medium ...'): cleaned to None, not kept
    assert not any((m.title or "").startswith("<") for m in raw.items.values())
    assert raw.report.skipped.get("duplicate_metadata", 0) > 0  # counted, not silently dropped


def test_beauty_atomic_read(shared_data: Path):
    raw = read_source(shared_data / "amazon-beauty-2014")
    assert raw.source["format"] == "atomic" and raw.report.total_skipped == 0
    assert len(raw.interactions) == 198502
    assert len({r.user for r in raw.interactions}) == 22363
    assert len({r.item for r in raw.interactions}) == 12101
    assert all(r.rating is None for r in raw.interactions[:1000])
    # README: title non-empty for 12,094 items, brand for 7,474, categories for all
    assert sum(m.title is not None for m in raw.items.values()) == 12094
    assert sum(m.brand is not None for m in raw.items.values()) == 7474
    assert all(m.categories for m in raw.items.values())
    assert not any("&#39;" in (m.title or "") + (m.brand or "") for m in raw.items.values())
    split = build_split(raw)  # no rating column: every row positive; already 5-core
    assert (split.num_users, split.num_items, split.manifest["num_interactions"]) == (22363, 12101, 198502)
    assert split.manifest["counts"]["unrated_kept_as_positive"] == 198502


def test_toys_without_item_file(shared_data: Path):
    raw = read_source(shared_data / "amazon-toys-2014")
    assert raw.items == {} and raw.source["metadata"].startswith("missing")
    assert len(raw.interactions) == 167597
