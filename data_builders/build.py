"""One typed entry point for building a dataset folder: ``build(BuildConfig(...))``.

``python -m data_builders build ...`` parses its arguments into a :class:`BuildConfig` and calls the same
function, so the CLI and ``train/main.py`` cannot drift apart. The split recipe's defaults live in
``data_builders.preprocess`` (seed 98765, 5-core, rating > 3).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from .folder import BuildResult, build_dataset_folder
from .graph import DEFAULT_MAX_HOPS
from .preprocess import DEFAULT_K_CORE, DEFAULT_RATING_THRESHOLD, DEFAULT_SPLIT_SEED, build_split
from .prompts import ALL_CONFIGS, PromptConfig
from .readers import read_source
from .synthetic import make_synthetic

SYNTHETIC = "synthetic"


class BuildConfigError(ValueError):
    """A build option is invalid; the message names the option."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything a dataset folder build depends on (the CLI flags of ``python -m data_builders build``)."""

    source: str  # raw data folder/file (Amazon 2014/2018, RecBole atomic) or "synthetic"
    out: str  # dataset folder to write (atomically)
    tokenizer: str | None = None  # GPT-2 folder / Hub name; None = ../shared/tokenizers/gpt2
    train_bpe: int | None = None  # train a byte-level BPE of this vocabulary size instead
    prompts: tuple[str, ...] = ALL_CONFIGS
    max_hops: int = DEFAULT_MAX_HOPS
    max_group_items: int = 50  # second-order chunk size
    max_length: int = 1024
    rating_threshold: float | None = DEFAULT_RATING_THRESHOLD  # keep rating > this (no-op without ratings)
    k_core: int = DEFAULT_K_CORE
    seed: int = DEFAULT_SPLIT_SEED
    strict: bool = False  # stop at the first bad input line
    format: str = "auto"
    synthetic_users: int = 300
    synthetic_items: int = 120
    hop_table_budget_gb: float = 2.0  # dense uint8 hop table when N*N bytes fit
    save_hop_table: bool = True
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", str(self.out))
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.tokenizer is not None and self.train_bpe is not None:
            raise BuildConfigError("tokenizer and train_bpe: give one (a GPT-2 tokenizer or a BPE trained on the corpus)")
        unknown = sorted(set(self.prompts) - set(ALL_CONFIGS))
        if unknown or not self.prompts:
            raise BuildConfigError(f"prompts: unknown {unknown}; choose from {','.join(ALL_CONFIGS)}")
        if self.max_hops < 1:
            raise BuildConfigError(f"max_hops must be >= 1, got {self.max_hops}")
        if self.train_bpe is not None and self.train_bpe < 1:
            raise BuildConfigError(f"train_bpe must be a positive vocabulary size, got {self.train_bpe}")

    def replace(self, **changes) -> "BuildConfig":
        return dataclasses.replace(self, **changes)


def read_raw(cfg: BuildConfig):
    """The raw dataset of ``cfg.source``: the embedded synthetic shop or files read (and fetched) from disk."""
    if cfg.source == SYNTHETIC:
        return make_synthetic(num_users=cfg.synthetic_users, num_items=cfg.synthetic_items)
    return read_source(cfg.source, format=cfg.format, strict=cfg.strict)


def build(cfg: BuildConfig) -> BuildResult:
    """Read, filter and split the source, then write the dataset folder ``cfg.out``."""
    log = (lambda m: None) if cfg.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    raw = read_raw(cfg)
    log(f"read {cfg.source}: {len(raw.interactions):,} interactions, {raw.report.total_skipped:,} skipped lines {raw.report.skipped or ''}")
    split = build_split(raw, rating_threshold=cfg.rating_threshold, k_core=cfg.k_core, seed=cfg.seed)
    return build_dataset_folder(
        split,
        Path(cfg.out),
        tokenizer_source=cfg.tokenizer,
        train_bpe_vocab=cfg.train_bpe,
        prompt_config=PromptConfig(configs=cfg.prompts, max_group_items=cfg.max_group_items, max_length=cfg.max_length),
        max_hops=cfg.max_hops,
        table_budget_bytes=int(cfg.hop_table_budget_gb * 1024**3),
        save_hop_table=cfg.save_hop_table,
        overwrite=cfg.overwrite,
        progress=not cfg.quiet,
        log=log,
    )


def _parse_prompts(value: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = set(names) - set(ALL_CONFIGS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--prompts: unknown {sorted(unknown)}; choose from {','.join(ALL_CONFIGS)}")
    return names


_DEFAULTS = BuildConfig(source="synthetic", out="")  # the parser's defaults are BuildConfig's


def add_build_arguments(b: argparse.ArgumentParser, base: BuildConfig | None = None) -> argparse.ArgumentParser:
    """The flags of ``python -m data_builders build``; defaults are BuildConfig's, or ``base``'s when given."""
    d = base or _DEFAULTS
    b.add_argument("--source", required=base is None, default=d.source, help="raw data folder/file (Amazon 2014/2018, RecBole atomic) or 'synthetic'")
    b.add_argument("--out", required=base is None, default=d.out, help="dataset folder to write (atomically)")
    tok = b.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", default=d.tokenizer, help="GPT-2 tokenizer folder (vocab.json + merges.txt) or Hub name; default ../shared/tokenizers/gpt2")
    tok.add_argument("--train-bpe", type=int, default=d.train_bpe, metavar="VOCAB", help="train a byte-level BPE of this size on the corpus instead")
    b.add_argument("--prompts", type=_parse_prompts, default=d.prompts, help=f"comma-separated configs (default {','.join(ALL_CONFIGS)})")
    b.add_argument("--max-hops", type=int, default=d.max_hops)
    b.add_argument("--max-group-items", type=int, default=d.max_group_items, help="second-order chunk size")
    b.add_argument("--max-length", type=int, default=d.max_length)
    b.add_argument("--rating-threshold", type=float, default=d.rating_threshold, help="keep rating > this (ignored when the source has no ratings)")
    b.add_argument("--k-core", type=int, default=d.k_core)
    b.add_argument("--seed", type=int, default=d.seed, help="split seed")
    b.add_argument("--strict", action="store_true", default=d.strict, help="stop at the first bad input line (default: count and report skips)")
    b.add_argument("--format", default=d.format, help="source format (default: detect)")
    b.add_argument("--synthetic-users", type=int, default=d.synthetic_users)
    b.add_argument("--synthetic-items", type=int, default=d.synthetic_items)
    b.add_argument("--hop-table-budget-gb", type=float, default=d.hop_table_budget_gb, help="dense uint8 hop table when N*N bytes fit")
    b.add_argument("--no-hop-table", action="store_true", default=not d.save_hop_table, help="do not save the hop table (loaders compute it)")
    b.add_argument("--overwrite", action="store_true", default=d.overwrite)
    b.add_argument("--quiet", action="store_true", default=d.quiet)
    return b


def build_config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The parsed ``build`` flags as a typed BuildConfig."""
    return BuildConfig(
        source=args.source, out=args.out, tokenizer=args.tokenizer, train_bpe=args.train_bpe, prompts=args.prompts,
        max_hops=args.max_hops, max_group_items=args.max_group_items, max_length=args.max_length,
        rating_threshold=args.rating_threshold, k_core=args.k_core, seed=args.seed, strict=args.strict,
        format=args.format, synthetic_users=args.synthetic_users, synthetic_items=args.synthetic_items,
        hop_table_budget_gb=args.hop_table_budget_gb, save_hop_table=not args.no_hop_table,
        overwrite=args.overwrite, quiet=args.quiet,
    )


def parse_build_config(argv: list[str], base: BuildConfig | None = None) -> BuildConfig:
    """``python -m data_builders build`` flags -> BuildConfig; with ``base``, the flags change ``base``'s fields."""
    parser = add_build_arguments(argparse.ArgumentParser(prog="python -m data_builders build"), base)
    return build_config_from_args(parser.parse_args(argv))


__all__ = ["add_build_arguments", "build_config_from_args", "parse_build_config", "BuildConfig", "BuildConfigError", "build", "read_raw", "SYNTHETIC"]
