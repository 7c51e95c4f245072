"""A small, deterministic synthetic review dataset: the default input of the main job (no download).

Generative story (all draws from one `numpy.random.default_rng(seed)`):

- A handful of latent *themes* (e.g. "guitar gear", "studio recording"). Each theme owns a category path,
  a few brands, title nouns and adjectives, a description vocabulary and a price range.
- Each item belongs to one theme and one of its brands; its title, description, categories and price are
  written from the theme's vocabulary, so the *content* tells which items go together.
- Items have a Zipf-like base popularity, so a popularity baseline is reasonable but not strong.
- Each user likes one or two themes (Dirichlet weights) and, inside them, one favourite brand.
  Interactions are drawn from `popularity * theme affinity * brand affinity`, so the *graph* (users
  sharing items) and the *brand/category structure* (second-order prompts) both carry signal that a
  personalised model can learn and popularity cannot.
- A few interactions per user are "misses" from a random theme; those get low ratings (<= 3) and so are
  removed by the usual rating > 3 filter, exercising that step.
- Timestamps increase along each user's history; each interaction has a short review whose words come
  from the item's theme and whose tone follows the rating.
"""
from __future__ import annotations

import numpy as np

from .records import Interaction, ItemMeta, RawDataset, ReadReport

# name, category path, brands, title nouns, adjectives, description phrases, (price low, price high)
_THEMES: list[tuple[str, list[str], list[str], list[str], list[str], list[str], tuple[float, float]]] = [
    (
        "guitar",
        ["Musical Instruments", "Guitars", "Guitar Accessories"],
        ["Fretline", "Stringcraft", "Capo & Co"],
        ["Guitar Strings", "Capo", "Guitar Picks", "Strap", "Tuner", "Fretboard Oil"],
        ["bright", "nickel-wound", "slim", "vintage", "phosphor bronze"],
        ["keeps your guitar in tune", "warm tone on acoustic guitars", "fits electric and acoustic necks"],
        (4.0, 35.0),
    ),
    (
        "studio",
        ["Musical Instruments", "Studio Recording", "Microphones & Accessories"],
        ["Sonica", "Vocalux", "PopGuard"],
        ["Condenser Microphone", "Pop Filter", "Mic Stand", "XLR Cable", "Shock Mount", "Audio Interface"],
        ["low-noise", "cardioid", "studio-grade", "shielded", "USB"],
        ["clear vocal recordings at home", "reduces plosives and hum", "for podcasting and streaming"],
        (12.0, 180.0),
    ),
    (
        "drums",
        ["Musical Instruments", "Drums & Percussion", "Drum Accessories"],
        ["Beatforge", "Rimshot", "Kettle Percussion"],
        ["Drumsticks", "Practice Pad", "Cymbal Felt", "Drum Key", "Snare Wires", "Bass Drum Pedal"],
        ["hickory", "heavy-duty", "quiet", "double-braced", "maple"],
        ["solid rebound for practice", "stands up to hard hitting", "for rock and jazz kits"],
        (6.0, 90.0),
    ),
    (
        "keys",
        ["Musical Instruments", "Keyboards & MIDI", "Keyboard Accessories"],
        ["Keystone", "Octavia", "Midiwave"],
        ["Sustain Pedal", "Keyboard Stand", "MIDI Controller", "Bench", "Dust Cover", "Music Rest"],
        ["adjustable", "weighted", "portable", "foldable", "velocity-sensitive"],
        ["works with digital pianos", "stable for live performance", "plug and play with any DAW"],
        (15.0, 150.0),
    ),
    (
        "live",
        ["Musical Instruments", "Live Sound & Stage", "Stage Accessories"],
        ["Stagehand", "Ampline", "Cablestar"],
        ["Instrument Cable", "Patch Cable", "Speaker Stand", "DI Box", "Power Strip", "Gig Bag"],
        ["rugged", "gold-plated", "road-ready", "braided", "noise-free"],
        ["built for gigging musicians", "no crackle on stage", "survives years on the road"],
        (8.0, 120.0),
    ),
    (
        "strings",
        ["Musical Instruments", "Band & Orchestra", "Bowed Strings"],
        ["Bowmaster", "Cremona Fine", "Rosinworks"],
        ["Violin Rosin", "Cello Strings", "Bow", "Chin Rest", "Shoulder Rest", "Mute"],
        ["dark", "light", "hand-made", "synthetic-core", "ebony"],
        ["smooth bow grip", "rich orchestral tone", "for students and professionals"],
        (5.0, 110.0),
    ),
]

_POSITIVE = ["Love this", "Works great", "Exactly what I needed", "Excellent quality", "Highly recommend"]
_NEGATIVE = ["Not for me", "Disappointed", "Returned it", "Cheaply made", "Did not fit my setup"]


def make_synthetic(
    num_users: int = 300,
    num_items: int = 120,
    seed: int = 0,
    min_interactions: int = 8,
    max_interactions: int = 22,
    miss_rate: float = 0.1,
) -> RawDataset:
    """Generate a deterministic review dataset with learnable content, brand and graph structure.

    Args:
        num_users: number of users generated (before any filtering).
        num_items: number of items; spread evenly over the themes.
        seed: seed of the single numpy Generator; the same seed gives the same dataset.
        min_interactions / max_interactions: per-user number of positive (rating >= 4) interactions.
        miss_rate: expected fraction of extra off-taste interactions per user, rated 1-3.

    Returns:
        A RawDataset with ratings, timestamps, reviews and metadata for every item; `source` records the
        generator and its arguments.
    """
    if num_items < len(_THEMES) * 2:
        raise ValueError(f"num_items must be at least {len(_THEMES) * 2} (two per theme), got {num_items}")
    if not 1 <= min_interactions <= max_interactions:
        raise ValueError(f"need 1 <= min_interactions <= max_interactions, got {min_interactions}, {max_interactions}")
    rng = np.random.default_rng(seed)
    num_themes = len(_THEMES)

    # ---- items ----
    item_theme = np.arange(num_items) % num_themes
    rng.shuffle(item_theme)
    item_brand = rng.integers(0, 3, size=num_items)  # index into the theme's brand list
    # Zipf-like base popularity, independent of theme, so popularity is a fair but beatable baseline.
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.6
    rng.shuffle(popularity)
    item_ids = [f"SYN{idx:05d}X" for idx in rng.permutation(num_items) + 1]

    items: dict[str, ItemMeta] = {}
    for j in range(num_items):
        name, cats, brands, nouns, adjs, phrases, (lo, hi) = _THEMES[item_theme[j]]
        brand = brands[item_brand[j]]
        noun = nouns[rng.integers(len(nouns))]
        adj = adjs[rng.integers(len(adjs))]
        model_no = int(rng.integers(100, 999))
        phrase_a, phrase_b = rng.choice(len(phrases), size=2, replace=False)
        items[item_ids[j]] = ItemMeta(
            title=f"{brand} {adj.capitalize()} {noun} {model_no}",
            brand=brand,
            categories=list(cats),
            description=f"{brand} {noun.lower()}: {phrases[phrase_a]}, {phrases[phrase_b]}. A {adj} choice.",
            price=round(float(rng.uniform(lo, hi)), 2),
        )

    # ---- users and interactions ----
    interactions: list[Interaction] = []
    reviews: dict[tuple[str, str], str] = {}
    start = 1_400_000_000  # 2014-05
    for u in range(num_users):
        user = f"SYNU{u:05d}"
        # one or two liked themes (a sparse Dirichlet draw), one favourite brand per theme
        theme_weights = rng.dirichlet(np.full(num_themes, 0.15))
        fav_brand = rng.integers(0, 3, size=num_themes)
        affinity = theme_weights[item_theme] * np.where(item_brand == fav_brand[item_theme], 3.0, 1.0)
        probs = popularity * (affinity + 0.02)  # a floor: some interactions fall outside the user's taste
        probs /= probs.sum()
        n_pos = int(rng.integers(min_interactions, max_interactions + 1))
        n_pos = min(n_pos, num_items)
        liked = rng.choice(num_items, size=n_pos, replace=False, p=probs)
        # off-taste misses, rated low (filtered later by rating > 3)
        n_miss = int(rng.binomial(n_pos, miss_rate))
        others = np.setdiff1d(np.arange(num_items), liked)
        missed = rng.choice(others, size=min(n_miss, len(others)), replace=False) if n_miss else np.array([], int)

        events = [(int(j), float(rng.choice([4.0, 5.0], p=[0.35, 0.65]))) for j in liked]
        events += [(int(j), float(rng.integers(1, 4))) for j in missed]
        order = rng.permutation(len(events))
        t = start + int(rng.integers(0, 86_400 * 365))
        for k in order:
            j, rating = events[k]
            t += int(rng.integers(86_400, 86_400 * 30))
            item = item_ids[j]
            interactions.append(Interaction(user=user, item=item, rating=rating, timestamp=t))
            reviews[(user, item)] = _review(rng, items[item], _THEMES[item_theme[j]], rating)

    return RawDataset(
        name=f"synthetic-{num_users}u-{num_items}i-seed{seed}",
        interactions=interactions,
        items=items,
        reviews=reviews,
        report=ReadReport(),
        source={
            "format": "synthetic",
            "generator": "data_builders.synthetic.make_synthetic",
            "args": {
                "num_users": num_users,
                "num_items": num_items,
                "seed": seed,
                "min_interactions": min_interactions,
                "max_interactions": max_interactions,
                "miss_rate": miss_rate,
            },
            "themes": [t[0] for t in _THEMES],
        },
    )


def _review(rng: np.random.Generator, meta: ItemMeta, theme: tuple, rating: float) -> str:
    """A one- or two-sentence review whose words come from the item's theme and whose tone follows the rating."""
    _, _, _, _, adjs, phrases, _ = theme
    noun = meta.title.split(" ", 2)[-1].rsplit(" ", 1)[0] if meta.title else "product"
    if rating > 3:
        opener = _POSITIVE[rng.integers(len(_POSITIVE))]
        body = f"the {adjs[rng.integers(len(adjs))]} {noun.lower()} {phrases[rng.integers(len(phrases))]}."
        return f"{opener}: {body} {meta.brand} did it again." if rng.random() < 0.4 else f"{opener}: {body}"
    opener = _NEGATIVE[rng.integers(len(_NEGATIVE))]
    return f"{opener}. The {noun.lower()} is not what I use."
