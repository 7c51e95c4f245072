"""Plain records passed between the data-building steps.

raw files --(readers.read_source)--> RawDataset --(preprocess.build_split)--> SplitDataset

These dataclasses are the contract between the readers/split code and everything built on top of it
(graph, tokenizer, prompts, dataset folder). They hold data only; the logic lives in the modules
that produce them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "valid", "test")


def user_token(u: int) -> str:
    """The atomic ID token of user index ``u`` (DESIGN.md section 1)."""
    return f"user_{u}"


def item_token(j: int) -> str:
    """The atomic ID token of item index ``j``."""
    return f"item_{j}"


@dataclass
class ItemMeta:
    """Text side information of one item. Missing or empty fields are None (or an empty list)."""

    title: str | None = None
    brand: str | None = None
    categories: list[str] = field(default_factory=list)  # one category path, top level first, HTML-unescaped
    description: str | None = None
    price: float | None = None


@dataclass(slots=True)  # slots: ~70 bytes an event instead of ~300, so 10M events fit the build's memory bound
class Interaction:
    """One (user, item) event as read from the raw files, before any filtering."""

    user: str
    item: str
    rating: float | None = None
    timestamp: int | None = None


@dataclass
class ReadReport:
    """What a reader skipped; nothing is dropped without being counted here.

    `skipped` maps a reason (e.g. "malformed_json", "missing_field", "non_numeric_rating") to a count;
    `examples` keeps the first few "file:line: field: message" strings so a user can find them.
    """

    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    # kept lines whose text was made safe (control characters, ID-token look-alikes, over-long fields), by rule
    changed: dict[str, int] = field(default_factory=dict)
    changed_examples: list[str] = field(default_factory=list)

    max_examples: int = field(default=10, repr=False, compare=False)

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, reason: str, example: str) -> None:
        """Count one skip under `reason`, keeping its description if we have few examples so far."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(example)

    def note_change(self, reason: str, example: str) -> None:
        """Count one kept field whose text was changed under ``reason`` (not a skip)."""
        self.changed[reason] = self.changed.get(reason, 0) + 1
        if len(self.changed_examples) < self.max_examples:
            self.changed_examples.append(example)

    def merge(self, other: "ReadReport") -> "ReadReport":
        """A new report holding the counts and examples of both."""
        skipped = dict(self.skipped)
        for reason, count in other.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        changed = dict(self.changed)
        for reason, count in other.changed.items():
            changed[reason] = changed.get(reason, 0) + count
        n = max(self.max_examples, other.max_examples)
        examples = (self.examples + other.examples)[:n]
        changed_examples = (self.changed_examples + other.changed_examples)[:n]
        return ReadReport(skipped=skipped, examples=examples, changed=changed, changed_examples=changed_examples, max_examples=n)

    def to_dict(self) -> dict:
        out = {"skipped": dict(self.skipped), "total_skipped": self.total_skipped, "examples": list(self.examples)}
        if self.changed:
            out["changed"] = dict(self.changed)
            out["changed_examples"] = list(self.changed_examples)
        return out


@dataclass
class RawDataset:
    """Output of every reader: interactions as read (duplicates included), item metadata, review texts."""

    name: str
    interactions: list[Interaction]
    items: dict[str, ItemMeta]  # raw item id -> meta (may miss items)
    reviews: dict[tuple[str, str], str]  # (raw user, raw item) -> review text (non-empty only)
    report: ReadReport = field(default_factory=ReadReport)
    source: dict = field(default_factory=dict)  # format, files with sha256, etc.


@dataclass
class SplitDataset:
    """Output of `preprocess.build_split`: dense indices and a per-user train/valid/test split.

    Users are 0..U-1 in the seeded shuffled order; items are 0..I-1 in order of first appearance when
    walking those users' time-sorted lists. `reviews` holds ALL pairs (train, valid and test): builders of
    training prompts must keep train pairs only.
    """

    name: str
    user_ids: list[str]  # index -> raw user id
    item_ids: list[str]  # index -> raw item id
    train: list[np.ndarray]  # per user index: int32 array of item indices
    valid: list[np.ndarray]
    test: list[np.ndarray]
    items: list[ItemMeta]  # per item index (empty ItemMeta when the item has no metadata)
    reviews: dict[tuple[int, int], str]  # (user index, item index) -> text, ALL pairs
    manifest: dict  # seeds, filters, counts per step, split hashes, read report
    # new products (build_split's cold_item_frac): {"validation": item indices, "test": item indices}, else empty
    cold_items: dict[str, list[int]] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def split_lists(self, split: str) -> list[np.ndarray]:
        """The per-user item arrays of "train", "valid" (alias "validation") or "test"."""
        if split == "validation":
            split = "valid"
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)

    def pairs(self, split: str) -> np.ndarray:
        """(n, 2) int32 array of (user index, item index) for one split, users ascending, items in stored order."""
        lists = self.split_lists(split)
        if not lists:
            return np.zeros((0, 2), dtype=np.int32)
        users = np.concatenate([np.full(len(a), u, dtype=np.int32) for u, a in enumerate(lists)])
        items = np.concatenate([np.asarray(a, dtype=np.int32) for a in lists])
        return np.stack([users, items], axis=1).astype(np.int32, copy=False)
