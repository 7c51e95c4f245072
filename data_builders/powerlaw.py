"""A synthetic power-law interaction set of any size (scale benchmarks and tests; not a quality benchmark).

``make_powerlaw(num_users, num_items, num_edges, exponent, seed)`` returns the same ``RawDataset`` the readers
return, so ``build_split`` and the dataset-folder build run on it unchanged. All draws come from one
``numpy.random.default_rng(seed)``.

- Item popularity is Zipf-like: the item of rank r is drawn with probability proportional to r**-exponent
  (ranks shuffled over item indices). Every item first gets ``min_degree`` distinct users and every user
  ``min_degree`` items, so a 5-core keeps almost everything; the remaining edges follow popularity.
- User activity is heavy-tailed too (a Pareto draw with shape ``user_shape``), as in Amazon categories.
- Every item has a title, a brand (Zipf over ``num_items // 40`` brands), a three-level category path
  (root / one of ~sqrt(I)/4 departments / one of ~sqrt(I) leaves), a description and a price, so the
  content and second-order configs exist; a ``review_fraction`` of the interactions carry a short review.
- Ratings are 4 or 5 (all positives) and timestamps increase along each user's list.
Duplicate (user, item) draws are dropped and topped up, so the edge count is close to ``num_edges`` (within a
fraction of a percent; very dense requests may fall short).

As files a user would build from (RecBole atomic ``<name>.inter`` + ``<name>.item``; reviews are not part of that
format)::

    python -m data_builders.powerlaw --users 60000 --items 50000 --edges 600000 --out /tmp/pl60k
    python -m data_builders build --source /tmp/pl60k --out /tmp/pl60k_folder --train-bpe 4000 --max-length 128
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .records import Interaction, ItemMeta, RawDataset, ReadReport

_NOUNS = ["Cable", "Adapter", "Charger", "Headphones", "Speaker", "Mouse", "Keyboard", "Case", "Stand", "Battery", "Hub", "Lens"]
_ADJS = ["compact", "wireless", "rugged", "slim", "fast", "premium", "portable", "braided"]
_WORDS = ["works", "great", "sturdy", "cheap", "recommend", "fast", "quality", "returned", "perfect", "fine"]


def make_powerlaw(
    num_users: int = 20_000,
    num_items: int = 10_000,
    num_edges: int = 200_000,
    exponent: float = 0.9,
    seed: int = 0,
    min_degree: int = 5,
    user_shape: float = 1.5,
    review_fraction: float = 0.2,
) -> RawDataset:
    """A power-law user-item set; see the module docstring. Raises ValueError when the sizes cannot fit."""
    if min(num_users, num_items) < 2 * min_degree:
        raise ValueError(f"need at least {2 * min_degree} users and items, got {num_users}, {num_items}")
    floor = min_degree * (num_users + num_items)
    if num_edges < floor:
        raise ValueError(f"num_edges={num_edges} is below min_degree * (users + items) = {floor}")
    if not 0 <= review_fraction <= 1:
        raise ValueError(f"review_fraction must be in [0, 1], got {review_fraction}")
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, num_items + 1) ** exponent
    pop = pop[rng.permutation(num_items)]
    pop /= pop.sum()

    # user activity: min_degree for everyone plus a heavy-tailed share of the edges left after the floors
    extra = num_edges - floor
    weight = rng.pareto(user_shape, size=num_users) + 1e-3
    user_extra = np.floor(weight / weight.sum() * extra).astype(np.int64)
    user_extra = np.minimum(user_extra, num_items // 2)
    degrees = min_degree + user_extra
    # item slots: every item min_degree times (the item floor), then popularity draws for the rest
    n_slots = int(degrees.sum()) + min_degree * num_items
    slots = np.concatenate([np.repeat(np.arange(num_items), min_degree), rng.choice(num_items, size=n_slots - min_degree * num_items, p=pop)])
    rng.shuffle(slots)
    # the item floor's slots go round-robin to users so every user also gets its own floor
    owners = np.repeat(np.arange(num_users), degrees)
    owners = np.concatenate([owners, rng.integers(0, num_users, size=len(slots) - len(owners))])
    pairs = np.unique(owners.astype(np.int64) * num_items + slots)  # drop duplicate draws
    user_p = degrees / degrees.sum()
    for _ in range(8):  # top up what the duplicates cost, with the same user and item laws
        short = num_edges - len(pairs)
        if short <= 0:
            break
        more = rng.choice(num_users, size=short, p=user_p).astype(np.int64) * num_items + rng.choice(num_items, size=short, p=pop)
        pairs = np.union1d(pairs, more)
    users, items = pairs // num_items, pairs % num_items
    order = rng.permutation(len(pairs))  # file order: not sorted by user
    users, items = users[order], items[order]

    n_brands = max(2, num_items // 40)
    brand_p = 1.0 / np.arange(1, n_brands + 1) ** 1.0
    item_brand = rng.choice(n_brands, size=num_items, p=brand_p / brand_p.sum())
    n_leaves = max(2, int(np.sqrt(num_items)))
    n_depts = max(2, n_leaves // 4)
    item_leaf = rng.integers(0, n_leaves, size=num_items)
    item_ids = [f"PL{j:07d}" for j in range(num_items)]
    user_ids = [f"PLU{u:08d}" for u in range(num_users)]
    meta: dict[str, ItemMeta] = {}
    noun = rng.integers(0, len(_NOUNS), size=num_items)
    adj = rng.integers(0, len(_ADJS), size=num_items)
    price = np.round(rng.uniform(3, 300, size=num_items), 2)
    for j in range(num_items):
        brand = f"Brand{item_brand[j]:05d}"
        leaf = int(item_leaf[j])
        meta[item_ids[j]] = ItemMeta(
            title=f"{brand} {_ADJS[adj[j]].capitalize()} {_NOUNS[noun[j]]} {j % 997}",
            brand=brand,
            categories=["Electronics", f"Department {leaf % n_depts}", f"Leaf {leaf}"],
            description=f"A {_ADJS[adj[j]]} {_NOUNS[noun[j]].lower()} by {brand}.",
            price=float(price[j]),
        )

    ratings = rng.choice([4.0, 5.0], size=len(users))
    times = 1_400_000_000 + np.arange(len(users), dtype=np.int64) * 60  # increasing in file order
    with_review = np.flatnonzero(rng.random(len(users)) < review_fraction)
    words = rng.integers(0, len(_WORDS), size=(len(with_review), 4))
    interactions = [
        Interaction(user=user_ids[u], item=item_ids[j], rating=float(r), timestamp=int(t))
        for u, j, r, t in zip(users.tolist(), items.tolist(), ratings.tolist(), times.tolist())
    ]
    reviews = {
        (user_ids[users[k]], item_ids[items[k]]): " ".join(_WORDS[w] for w in ws).capitalize() + "."
        for k, ws in zip(with_review.tolist(), words)
    }
    return RawDataset(
        name=f"powerlaw-{num_users}u-{num_items}i-{num_edges}e-seed{seed}",
        interactions=interactions,
        items=meta,
        reviews=reviews,
        report=ReadReport(),
        source={
            "format": "synthetic-powerlaw",
            "generator": "data_builders.powerlaw.make_powerlaw",
            "args": {
                "num_users": num_users,
                "num_items": num_items,
                "num_edges": num_edges,
                "exponent": exponent,
                "seed": seed,
                "min_degree": min_degree,
                "user_shape": user_shape,
                "review_fraction": review_fraction,
            },
        },
    )


def _field(text: str | None) -> str:
    """An atomic-file cell: tabs and newlines would split the row."""
    return "" if text is None else " ".join(str(text).split())


def write_atomic(raw: RawDataset, folder: str | os.PathLike, name: str = "powerlaw") -> tuple[Path, Path]:
    """Write ``raw`` as RecBole atomic files ``<folder>/<name>.inter`` and ``<name>.item`` (each written to a temp
    file and renamed into place); returns their paths."""
    folder = Path(folder)
    inter, item = folder / f"{name}.inter", folder / f"{name}.item"

    def write_inter(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
            for r in raw.interactions:
                f.write(f"{r.user}\t{r.item}\t{r.rating}\t{r.timestamp}\n")

    def write_item(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tdescription:token_seq\tprice:float\n")
            for key, m in raw.items.items():
                f.write("\t".join([key, _field(m.title), _field(m.brand), " | ".join(_field(c) for c in m.categories),
                                   _field(m.description), "" if m.price is None else str(m.price)]) + "\n")

    atomic_write(inter, write_inter)
    atomic_write(item, write_item)
    return inter, item


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_builders.powerlaw",
                                 description="Write a synthetic power-law shop as RecBole atomic files.")
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--edges", type=int, required=True)
    ap.add_argument("--exponent", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="folder for <name>.inter and <name>.item")
    ap.add_argument("--name", default="powerlaw")
    args = ap.parse_args(argv)
    raw = make_powerlaw(args.users, args.items, args.edges, exponent=args.exponent, seed=args.seed)
    for path in write_atomic(raw, args.out, args.name):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
