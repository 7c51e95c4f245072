"""A ``datasets.GeneratorBasedBuilder`` yielding the same rows as the dataset folder.

datasets 5.x has no loading scripts (``load_dataset("x.py")`` raises), so this builder is used by
instantiating it directly (hf-stack-notes section 2)::

    b = GraphGPT2RecPrompts(config_name="recommendation", source="../shared/data/amazon-musical-instruments-2014",
                            cache_dir="/tmp/hf")
    b.download_and_prepare()
    ds = b.as_dataset()          # DatasetDict(train, validation, test)

One BuilderConfig per prompt config; the config's fields are the same build options as the CLI. The read,
split and tokenizer are the same functions the folder writer calls, so the rows are identical (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np

from .graph import DEFAULT_MAX_HOPS, InteractionGraph
from .pair_hops import PAIR_COLUMNS, attach_pair_hops
from .preprocess import DEFAULT_K_CORE, DEFAULT_RATING_THRESHOLD, DEFAULT_SPLIT_SEED
from .prompts import ALL_CONFIGS, CONFIG_SPLITS, CONTENT_FIELDS, SECOND_ORDER_FIELDS, PromptConfig, build_config_rows

_STATE_CACHE: dict = {}  # (source options) -> (split, tokenizer, base): shared by the configs of one process


def features_for(config: str) -> datasets.Features:
    ints = datasets.List(datasets.Value("int32"))
    f = {
        "kind": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "main": datasets.Value("string"),
        "input_ids": ints,
        "node_positions": ints,
        "labels": ints,
        "user": datasets.Value("int32"),
    }
    f.update({c: datasets.List(datasets.Value("uint8")) for c in PAIR_COLUMNS})
    if config == "recommendation":
        f.update({"history": ints, "targets": ints})
    return datasets.Features(f)


@dataclass
class GraphGPT2RecPromptsConfig(datasets.BuilderConfig):
    """Build options (see ``python -m data_builders build --help``); ``name`` is the prompt config."""

    source: str = "synthetic"  # raw data folder/file, or "synthetic"
    tokenizer: str | None = None  # GPT-2 folder / Hub name (default ../shared/tokenizers/gpt2)
    train_bpe: int | None = None  # train a byte-level BPE of this vocabulary size instead
    rating_threshold: float | None = DEFAULT_RATING_THRESHOLD
    k_core: int = DEFAULT_K_CORE
    seed: int = DEFAULT_SPLIT_SEED
    strict: bool = False
    content_fields: tuple = CONTENT_FIELDS
    second_order_fields: tuple = SECOND_ORDER_FIELDS
    max_group_items: int = 50
    max_length: int = 1024
    max_hops: int = DEFAULT_MAX_HOPS
    synthetic_users: int = 300
    synthetic_items: int = 120


def prepare_split_and_tokenizer(cfg: GraphGPT2RecPromptsConfig):
    """(split, tokenizer, base_vocab_size) for the config's source options (cached per process)."""
    from .preprocess import build_split
    from .prompts import corpus_texts
    from .tokenization import build_tokenizer

    key = (cfg.source, cfg.tokenizer, cfg.train_bpe, cfg.rating_threshold, cfg.k_core, cfg.seed, cfg.strict, cfg.synthetic_users, cfg.synthetic_items)
    if key not in _STATE_CACHE:
        if cfg.source == "synthetic":
            from .synthetic import make_synthetic

            raw = make_synthetic(num_users=cfg.synthetic_users, num_items=cfg.synthetic_items)
        else:
            from .readers import read_source

            raw = read_source(cfg.source, strict=cfg.strict)
        split = build_split(raw, rating_threshold=cfg.rating_threshold, k_core=cfg.k_core, seed=cfg.seed)
        if cfg.train_bpe:
            tok, base = build_tokenizer(split.num_users, split.num_items, train_texts=list(corpus_texts(split)), vocab_size=cfg.train_bpe)
        else:
            tok, base = build_tokenizer(split.num_users, split.num_items, source=cfg.tokenizer)
        _STATE_CACHE.clear()  # keep one dataset in memory at most
        _STATE_CACHE[key] = (split, tok, base)
    return _STATE_CACHE[key]


class GraphGPT2RecPrompts(datasets.GeneratorBasedBuilder):
    """GraphGPT2-Rec prompt corpora: content, review, second_order, interactions, recommendation."""

    BUILDER_CONFIG_CLASS = GraphGPT2RecPromptsConfig
    BUILDER_CONFIGS = [GraphGPT2RecPromptsConfig(name=c, description=f"GraphGPT2-Rec {c} prompts") for c in ALL_CONFIGS]
    DEFAULT_CONFIG_NAME = "content"

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description="Prompt corpora of GraphGPT2-Rec built from the training split only.",
            features=features_for(self.config.name),
        )

    def _split_generators(self, dl_manager):
        names = {"train": datasets.Split.TRAIN, "validation": datasets.Split.VALIDATION, "test": datasets.Split.TEST}
        return [datasets.SplitGenerator(name=names[s], gen_kwargs={"split_name": s}) for s in CONFIG_SPLITS[self.config.name]]

    def _generate_examples(self, split_name: str):
        cfg = self.config
        split, tok, base = prepare_split_and_tokenizer(cfg)
        prompt_config = PromptConfig(
            configs=(cfg.name,),
            content_fields=tuple(cfg.content_fields),
            second_order_fields=tuple(cfg.second_order_fields),
            max_group_items=cfg.max_group_items,
            max_length=cfg.max_length,
        )
        rows = build_config_rows(cfg.name, split, tok, base, prompt_config)[split_name]
        attach_pair_hops(rows, InteractionGraph.from_split(split), cfg.max_hops)
        for k, row in enumerate(rows):
            yield k, {c: (v.tolist() if isinstance(v, np.ndarray) else v) for c, v in row.items()}
