"""Prompt corpora (paper section 3.3/3.4): content, review, second-order, interactions, recommendation.

Every row is a ``[prompt, main]`` pair (loss only on ``main``) with ``input_ids``, ``node_positions`` (-1 for
text tokens, else the graph node = token id - base_vocab_size) and ``labels`` (-100 on the prompt, the main's
token ids elsewhere). Templates are the authors' (reference-code-notes section 3), fixed where ungrammatical:

=================  ==============================================================  ==========================
kind               prompt                                                          main
=================  ==============================================================  ==========================
title              ``The title of item_j is:``                                     `` {title}``
brand              ``The brand of item_j is:``                                     `` {brand}``
categories         ``The categories of item_j are:``                               `` {c1}, {c2}, ...``
description        ``The description of item_j is:``                               `` {description}``
price              ``The price of item_j is:``  (new: the paper lists price)       `` ${price:.2f}``
review             ``user_i wrote the following review for item_j:``               `` {review}`` (TRAIN pairs)
brand_group        ``Items item_a, item_b, ... share the brand:``                  `` {brand}``
                   (authors: "These item ... has the same brand:")
category_group     ``Items item_a, item_b, ... are all in the category:``          `` {category}``
                   (authors: "These items ... are all in the category:")
interactions       ``user_i has interacted with``                                  `` item_a item_b ...`` (train)
recommendation     ``user_i has interacted with item_a item_b ..., user_i will     (none; ``targets``)
                   interact with``
=================  ==============================================================  ==========================

Second-order groups: items grouped by exact brand string and by each category name of their category path;
a category every categorized item shares (the root, e.g. "Musical Instruments") is excluded, singleton groups
are skipped, and groups longer than ``max_group_items`` are split into balanced chunks (all of them emitted,
nothing truncated). Items inside a group are in ascending index order.

Interaction and recommendation item lists follow the split's per-user train order (already randomly shuffled by
the split). Recommendation rows: split "train" has targets = train items (the authors' fine-tuning target);
"validation"/"test" have history = all train items and targets = validation/test items.
Validation/test interactions never enter any prompt: only ``split.train`` and train-pair reviews are read.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

# served too: the remote code counts a new item's text and encodes the recommendation prompt
from modeling_graphgpt2.pipeline_graphgpt2 import CONTENT_TEMPLATES, RecPrompt

from .records import item_token, user_token
from .textclean import MAX_TEXT_CHARS, clean_text, split_long_runs

ALL_CONFIGS = ("content", "review", "second_order", "interactions", "recommendation")
CONTENT_FIELDS = ("title", "brand", "categories", "description", "price")
SECOND_ORDER_FIELDS = ("brand", "category")
CONFIG_SPLITS = {
    "content": ("train",),
    "review": ("train",),
    "second_order": ("train",),
    "interactions": ("train",),
    "recommendation": ("train", "validation", "test"),
}
REVIEW_TEMPLATE = "{user} wrote the following review for {item}:"
GROUP_TEMPLATES = {"brand": "Items {items} share the brand:", "category": "Items {items} are all in the category:"}
INTERACTION_TEMPLATE = "{user} has interacted with"
# Words of every template (for training a BPE that knows them).
TEMPLATE_TEXTS = (
    list(CONTENT_TEMPLATES.values())
    + [REVIEW_TEMPLATE, *GROUP_TEMPLATES.values(), INTERACTION_TEMPLATE]
    + ["user_0 has interacted with item_1 item_2, user_0 will interact with", "A new user has interacted with item_1, the user will interact with"]
)
IGNORE_INDEX = -100
STRUCTURAL_MAIN_KINDS = ("interactions",)  # mains made of ID tokens; every other main is untrusted text


@dataclass
class PromptConfig:
    """Which prompt corpora to build. Ablations are configs: the paper's "LLM-NoGHIP" = ``configs=("review",
    "interactions", "recommendation")``; "Without 2-Order" drops ``second_order``; "Without Item" drops
    ``content`` and ``second_order``."""

    configs: tuple[str, ...] = ALL_CONFIGS
    content_fields: tuple[str, ...] = CONTENT_FIELDS  # which item fields become content rows
    second_order_fields: tuple[str, ...] = SECOND_ORDER_FIELDS
    max_group_items: int = 50  # second-order chunk size (>= 2)
    max_length: int = 1024  # GPT-2 context; mains are cut to fit (counted), rec histories cut from the left

    def __post_init__(self):
        self.configs = tuple(self.configs)
        unknown = set(self.configs) - set(ALL_CONFIGS)
        if unknown:
            raise ValueError(f"unknown prompt config(s) {sorted(unknown)}; choose from {ALL_CONFIGS}")
        if set(self.content_fields) - set(CONTENT_FIELDS):
            raise ValueError(f"unknown content field(s) {sorted(set(self.content_fields) - set(CONTENT_FIELDS))}")
        if set(self.second_order_fields) - set(SECOND_ORDER_FIELDS):
            raise ValueError(f"unknown second-order field(s) {sorted(set(self.second_order_fields) - set(SECOND_ORDER_FIELDS))}")
        if self.max_group_items < 2:
            raise ValueError("max_group_items must be >= 2")

    def to_dict(self) -> dict:
        return {
            "configs": list(self.configs),
            "content_fields": list(self.content_fields),
            "second_order_fields": list(self.second_order_fields),
            "max_group_items": self.max_group_items,
            "max_length": self.max_length,
        }


# ----------------------------------------------------------------------------------------- text pieces
def content_pairs(split, fields: Iterable[str] = CONTENT_FIELDS) -> Iterator[dict]:
    """(kind, prompt, main) for every non-empty item field, item by item."""
    for j, meta in enumerate(split.items):
        item = item_token(j)
        for kind in fields:
            if kind == "categories":
                value = ", ".join(c for c in (meta.categories or []) if c)
            elif kind == "price":
                value = f"${meta.price:.2f}" if meta.price is not None and math.isfinite(meta.price) else ""
            else:
                value = (getattr(meta, kind) or "").strip()
            if value:
                yield {"kind": kind, "prompt": CONTENT_TEMPLATES[kind].format(item=item), "main": " " + value, "user": -1}


def train_reviews(split) -> list[tuple[int, int, str]]:
    """(user, item, text) for TRAIN pairs with a non-empty review; validation/test reviews are never read."""
    out = []
    for u, items in enumerate(split.train):
        for j in sorted(int(x) for x in items):
            text = split.reviews.get((u, j))
            if text and text.strip():
                out.append((u, j, text.strip()))
    return out


def review_pairs(split) -> Iterator[dict]:
    return (
        {"kind": "review", "prompt": REVIEW_TEMPLATE.format(user=user_token(u), item=item_token(j)), "main": " " + text, "user": u}
        for u, j, text in train_reviews(split)
    )


def item_groups(split, field_name: str) -> dict[str, list[int]]:
    """Value -> ascending item indices, for ``brand`` or each ``category`` name; shared-by-all categories removed."""
    groups: dict[str, set[int]] = {}
    for j, meta in enumerate(split.items):
        if field_name == "brand":
            values = [meta.brand.strip()] if meta.brand and meta.brand.strip() else []
        else:
            values = [c.strip() for c in (meta.categories or []) if c and c.strip()]
        for v in values:
            groups.setdefault(v, set()).add(j)
    if field_name == "category":
        categorized = sum(1 for m in split.items if m.categories)
        groups = {k: v for k, v in groups.items() if len(v) < categorized}  # the root says nothing
    return {k: sorted(v) for k, v in sorted(groups.items()) if len(v) >= 2}


def chunk(items: list[int], max_items: int) -> list[list[int]]:
    """Balanced chunks of at most ``max_items`` (each has >= 2 items when len(items) >= 2)."""
    n = math.ceil(len(items) / max_items)
    return [c.tolist() for c in np.array_split(np.asarray(items, dtype=np.int64), n)]


def second_order_pairs(split, fields: Iterable[str] = SECOND_ORDER_FIELDS, max_group_items: int = 50) -> Iterator[dict]:
    for field_name in fields:
        for value, items in item_groups(split, field_name).items():
            for part in chunk(items, max_group_items):
                names = ", ".join(item_token(j) for j in part)
                yield {"kind": f"{field_name}_group", "prompt": GROUP_TEMPLATES[field_name].format(items=names), "main": " " + value, "user": -1}


def interaction_pairs(split) -> Iterator[dict]:
    return (
        {
            "kind": "interactions",
            "prompt": INTERACTION_TEMPLATE.format(user=user_token(u)),
            "main": "".join(" " + item_token(int(j)) for j in items),
            "user": u,
        }
        for u, items in enumerate(split.train)
        if len(items)
    )


# ----------------------------------------------------------------------------------------- tokenisation
def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _text_main(row: dict, stats: dict) -> dict:
    """A text main (title, review, brand, ...) made safe: ID tokens and EOS come only from structure (textclean)."""
    if row["kind"] in STRUCTURAL_MAIN_KINDS:
        return row
    text, reasons = clean_text(row["main"])
    for reason in reasons:
        stats[f"main_{reason}"] = stats.get(f"main_{reason}", 0) + 1
    return {**row, "main": text} if reasons else row


def encode_pairs(rows: list[dict], tokenizer, base_vocab_size: int, max_length: int, stats: dict) -> list[dict]:
    """Tokenise prompt and main separately (so the label boundary is exact) and add ids/positions/labels."""
    rows = [_text_main(r, stats) for r in rows]
    p_ids = _ids(tokenizer, [r["prompt"] for r in rows])
    m_ids = _ids(tokenizer, [r["main"] for r in rows])
    special = set(tokenizer.all_special_ids)
    out = []
    for r, p, m in zip(rows, p_ids, m_ids):
        if r["kind"] not in STRUCTURAL_MAIN_KINDS and any(t >= base_vocab_size or t in special for t in m):
            raise AssertionError(f"bug: text of a {r['kind']} row became an ID/special token: {r['main'][:80]!r}")
        if len(p) >= max_length:
            raise ValueError(f"{r['kind']} prompt of {len(p)} tokens does not fit max_length={max_length}: {r['prompt'][:80]!r}...")
        if len(p) + len(m) > max_length:
            m = m[: max_length - len(p)]
            stats["truncated_mains"] = stats.get("truncated_mains", 0) + 1
        ids = np.asarray(p + m, dtype=np.int64)
        r = dict(r)
        r["input_ids"] = ids.astype(np.int32)
        r["node_positions"] = node_positions(ids, base_vocab_size)
        r["labels"] = np.concatenate([np.full(len(p), IGNORE_INDEX, np.int64), np.asarray(m, np.int64)]).astype(np.int32)
        out.append(r)
    return out


def node_positions(input_ids: np.ndarray, base_vocab_size: int) -> np.ndarray:
    ids = np.asarray(input_ids, dtype=np.int64)
    return np.where(ids >= base_vocab_size, ids - base_vocab_size, -1).astype(np.int32)


# The personalized predictive prompt has one home, the remote code: a published repo encodes a user exactly as the
# build and the trainer did (``RecPrompt.text(user, items)`` is its text; ``encode`` splices ids without BPE).
RecPromptEncoder = RecPrompt


def recommendation_rows(split, encoder: RecPromptEncoder, split_name: str, stats: dict) -> Iterator[dict]:
    """Rows of the ``recommendation`` config for split "train", "validation" or "test", user by user."""
    targets_of = {"train": split.train, "validation": split.valid, "test": split.test}[split_name]
    for u, hist in enumerate(split.train):
        targets = np.asarray(targets_of[u], dtype=np.int32)
        if len(targets) == 0:
            stats[f"recommendation_{split_name}_users_without_targets"] = stats.get(f"recommendation_{split_name}_users_without_targets", 0) + 1
            continue
        enc = encoder.encode(u, hist)
        if len(enc["history"]) < len(hist):
            stats["truncated_histories"] = stats.get("truncated_histories", 0) + 1
        ids = enc["input_ids"]
        yield {
                "kind": "recommendation",
                "prompt": encoder.text(u, enc["history"]),
                "main": "",
                "input_ids": ids.astype(np.int32),
                "node_positions": enc["node_positions"],
                "labels": np.full(len(ids), IGNORE_INDEX, np.int32),
                "user": u,
                "history": enc["history"],
                "targets": targets,
            }


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Lists of ``size`` consecutive rows (the last one shorter; none for no rows)."""
    it = iter(rows)
    while part := list(itertools.islice(it, size)):
        yield part


def config_row_chunks(config: str, split, tokenizer, base_vocab_size: int, prompt_config: PromptConfig,
                      stats: dict | None = None, chunk_rows: int = 100_000) -> dict[str, Iterator[list[dict]]]:
    """The rows of one prompt config, ``{split_name: chunks}``, each chunk a list of at most ``chunk_rows``
    consecutive rows, produced as they are consumed: a builder that writes each chunk before it asks for the next
    holds one chunk, however many users and items there are. ``stats`` fills as the chunks are read."""
    stats = {} if stats is None else stats
    L = prompt_config.max_length
    if config == "recommendation":
        enc = RecPromptEncoder(tokenizer, base_vocab_size, split.num_users, split.num_items, L)
        return {s: _chunks(recommendation_rows(split, enc, s, stats), chunk_rows) for s in CONFIG_SPLITS["recommendation"]}
    if config == "content":
        pairs = content_pairs(split, prompt_config.content_fields)
    elif config == "review":
        pairs = review_pairs(split)
    elif config == "second_order":
        pairs = second_order_pairs(split, prompt_config.second_order_fields, prompt_config.max_group_items)
    elif config == "interactions":
        pairs = interaction_pairs(split)
    else:
        raise ValueError(f"unknown prompt config {config!r}; choose from {ALL_CONFIGS}")
    return {"train": (encode_pairs(part, tokenizer, base_vocab_size, L, stats) for part in _chunks(pairs, chunk_rows))}


def build_config_rows(config: str, split, tokenizer, base_vocab_size: int, prompt_config: PromptConfig, stats: dict | None = None) -> dict[str, list[dict]]:
    """All rows of one prompt config: ``{split_name: [row, ...]}`` (``config_row_chunks``, joined)."""
    chunks = config_row_chunks(config, split, tokenizer, base_vocab_size, prompt_config, stats)
    return {s: [r for part in parts for r in part] for s, parts in chunks.items()}


def build_corpora(split, tokenizer, base_vocab_size: int, prompt_config: PromptConfig | None = None) -> tuple[dict, dict]:
    """``({config: {split_name: rows}}, stats)`` for every config in ``prompt_config.configs``."""
    prompt_config = prompt_config or PromptConfig()
    stats: dict = {}
    corpora = {c: build_config_rows(c, split, tokenizer, base_vocab_size, prompt_config, stats) for c in prompt_config.configs}
    return corpora, stats


def row_kinds(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    return counts


def corpus_texts(split, review_texts: bool = True, stats: dict | None = None) -> Iterator[str]:
    """Texts to train a BPE on: item metadata, train reviews and the fixed template words.

    Untrusted text is bounded first (textclean): fields cut to ``MAX_TEXT_CHARS`` and unbroken runs split every
    ``MAX_BPE_RUN_CHARS`` characters, because BPE training time grows quadratically with the longest word
    (a 1 MB run took minutes). Counted in ``stats`` (the manifest's ``tokenizer.training_text``).
    """
    stats = {} if stats is None else stats

    def bounded(text: str) -> str:
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS]
            stats["fields_truncated"] = stats.get("fields_truncated", 0) + 1
        text, n = split_long_runs(text)
        if n:
            stats["long_runs_split"] = stats.get("long_runs_split", 0) + n
        return text

    yield from TEMPLATE_TEXTS
    for meta in split.items:
        for value in (meta.title, meta.brand, meta.description):
            if value:
                yield bounded(value)
        if meta.categories:
            yield bounded(", ".join(meta.categories))
    if review_texts:
        for _u, _j, text in train_reviews(split):  # TRAIN pairs only: no held-out text in the vocabulary
            yield bounded(text)
