"""One typed entry point for building a dataset folder: ``build(BuildConfig(...))``.

``python -m data_builders build ...`` parses its arguments into a :class:`BuildConfig` and calls the same
function, so the CLI and ``train/main.py`` cannot drift apart. The split recipe's defaults live in
``data_builders.preprocess`` (seed 98765, 5-core, rating > 3).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from .folder import BuildResult, build_dataset_folder, check_output_folder
from .graph import DEFAULT_MAX_HOPS
from .preprocess import DEFAULT_K_CORE, DEFAULT_RATING_THRESHOLD, DEFAULT_SPLIT_SEED, build_split
from .prompts import ALL_CONFIGS, PromptConfig
from .readers import read_source
from .synthetic import make_synthetic

SYNTHETIC = "synthetic"
MAX_HOPS_LIMIT = 254  # hop distances are uint8 with max_hops + 1 meaning "farther"
MIN_BPE_VOCAB = 300  # below this a byte-level BPE cannot hold its 256 bytes plus the template words
METADATA_CONFIGS = ("content", "second_order")  # prompt configs made from the metadata file


class BuildConfigError(ValueError):
    """A build option is invalid; the message names the option."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything a dataset folder build depends on (the CLI flags of ``python -m data_builders build``)."""

    source: str  # raw data folder/file (Amazon 2014/2018, RecBole atomic) or "synthetic"
    out: str  # dataset folder to write (atomically)
    tokenizer: str | None = None  # GPT-2 folder / Hub name; None = ../shared/tokenizers/gpt2
    train_bpe: int | None = None  # train a byte-level BPE of this vocabulary size instead
    prompts: tuple[str, ...] | None = None  # None: every config the data allows; named ones are required
    max_hops: int = DEFAULT_MAX_HOPS
    max_group_items: int = 50  # second-order chunk size
    max_length: int = 1024
    rating_threshold: float | None = DEFAULT_RATING_THRESHOLD  # keep rating > this (no-op without ratings)
    k_core: int = DEFAULT_K_CORE
    seed: int = DEFAULT_SPLIT_SEED
    cold_item_frac: float = 0.0  # fraction of items held out whole as new products (docs/model.md "New items")
    strict: bool = False  # stop at the first bad input line
    format: str = "auto"
    synthetic_users: int = 300
    synthetic_items: int = 120
    hop_table_budget_gb: float = 0.0  # opt-in dense uint8 N x N hop table when N*N bytes fit (rows store their own pairs)
    save_hop_table: bool = True
    num_proc: int = 1  # processes that compute the prompt rows' pair hops and write their shards (same folder)
    overwrite: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", str(self.out))
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
            unknown = sorted(set(self.prompts) - set(ALL_CONFIGS))
            if unknown or not self.prompts:
                raise BuildConfigError(f"prompts: unknown {unknown}; choose from {','.join(ALL_CONFIGS)}")
        if self.tokenizer is not None and self.train_bpe is not None:
            raise BuildConfigError("tokenizer and train_bpe: give one (a GPT-2 tokenizer or a BPE trained on the corpus)")
        if not 1 <= self.max_hops <= MAX_HOPS_LIMIT:
            raise BuildConfigError(f"max_hops must be in 1..{MAX_HOPS_LIMIT} (stored as uint8), got {self.max_hops}")
        if self.train_bpe is not None and self.train_bpe < MIN_BPE_VOCAB:
            raise BuildConfigError(f"train_bpe must be a vocabulary size >= {MIN_BPE_VOCAB}, got {self.train_bpe}")
        for name, minimum in (("max_group_items", 2), ("max_length", 16), ("k_core", 0), ("synthetic_users", 1), ("synthetic_items", 1),
                              ("num_proc", 1)):
            if getattr(self, name) < minimum:
                raise BuildConfigError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if not 0 <= self.cold_item_frac < 1:
            raise BuildConfigError(f"cold_item_frac must be in [0, 1), got {self.cold_item_frac}")
        for name in ("rating_threshold", "hop_table_budget_gb"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise BuildConfigError(f"{name} must be a finite number, got {value}")

    @property
    def prompt_configs(self) -> tuple[str, ...]:
        return ALL_CONFIGS if self.prompts is None else self.prompts

    def replace(self, **changes) -> "BuildConfig":
        return dataclasses.replace(self, **changes)


def read_raw(cfg: BuildConfig):
    """The raw dataset of ``cfg.source``: the embedded synthetic shop or files read (and fetched) from disk."""
    if cfg.source == SYNTHETIC:
        return make_synthetic(num_users=cfg.synthetic_users, num_items=cfg.synthetic_items)
    return read_source(cfg.source, format=cfg.format, strict=cfg.strict)


def _missing_metadata(raw) -> str | None:
    """Why the source has no item metadata (a missing file), or None when it was read or is built in."""
    note = str(raw.source.get("metadata", "read"))
    return None if note == "read" else note


def build(cfg: BuildConfig) -> BuildResult:
    """Read, filter and split the source, then write the dataset folder ``cfg.out``."""
    log = (lambda m: None) if cfg.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    # before hours of work: is --out a folder we may write (never the source, never foreign files)?
    check_output_folder(Path(cfg.out), cfg.overwrite, protect=[] if cfg.source == SYNTHETIC else [cfg.source])
    raw = read_raw(cfg)
    log(f"read {cfg.source}: {len(raw.interactions):,} interactions, {raw.report.total_skipped:,} skipped lines {raw.report.skipped or ''}")
    if raw.report.changed:
        log(f"text made safe (kept, changed): {raw.report.changed}")
    missing_meta = _missing_metadata(raw)
    wanted_meta = [c for c in cfg.prompt_configs if c in METADATA_CONFIGS]
    if missing_meta and cfg.prompts is not None and wanted_meta:
        raise ValueError(f"--prompts asks for {','.join(wanted_meta)}, which need item metadata, but the metadata file is {missing_meta}; "
                         "put it there or drop those prompt configs")
    split = build_split(raw, rating_threshold=cfg.rating_threshold, k_core=cfg.k_core, seed=cfg.seed,
                        cold_item_frac=cfg.cold_item_frac)
    result = build_dataset_folder(
        split,
        Path(cfg.out),
        tokenizer_source=cfg.tokenizer,
        train_bpe_vocab=cfg.train_bpe,
        prompt_config=PromptConfig(configs=cfg.prompt_configs, max_group_items=cfg.max_group_items, max_length=cfg.max_length),
        max_hops=cfg.max_hops,
        table_budget_bytes=int(cfg.hop_table_budget_gb * 1024**3),
        save_hop_table=cfg.save_hop_table,
        num_proc=cfg.num_proc,
        overwrite=cfg.overwrite,
        progress=not cfg.quiet,
        log=log,
    )
    if missing_meta and wanted_meta:  # a warning, not a log line: shown even with --quiet
        print(f"warning: no item metadata ({missing_meta}): the {','.join(wanted_meta)} prompts were not built", file=sys.stderr)
    return result


def _parse_prompts(value: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = set(names) - set(ALL_CONFIGS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--prompts: unknown {sorted(unknown)}; choose from {','.join(ALL_CONFIGS)}")
    return names


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (a clean usage error instead of a crash deep in the build)."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {n}")
        return n

    return parse


def _max_hops(value: str) -> int:
    hops = _int_at_least(1)(value)
    if hops > MAX_HOPS_LIMIT:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_HOPS_LIMIT}, got {hops}")
    return hops


def _finite_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return x


_DEFAULTS = BuildConfig(source="synthetic", out="")  # the parser's defaults are BuildConfig's


def add_build_arguments(b: argparse.ArgumentParser, base: BuildConfig | None = None) -> argparse.ArgumentParser:
    """The flags of ``python -m data_builders build``; defaults are BuildConfig's, or ``base``'s when given."""
    d = base or _DEFAULTS
    b.add_argument("--source", required=base is None, default=d.source, help="raw data folder/file (Amazon 2014/2018, RecBole atomic) or 'synthetic'")
    b.add_argument("--out", required=base is None, default=d.out, help="dataset folder to write (atomically)")
    tok = b.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", default=d.tokenizer, help="GPT-2 tokenizer folder (vocab.json + merges.txt) or Hub name; default ../shared/tokenizers/gpt2")
    tok.add_argument("--train-bpe", type=_int_at_least(MIN_BPE_VOCAB), default=d.train_bpe, metavar="VOCAB", help="train a byte-level BPE of this size on the corpus instead")
    b.add_argument("--prompts", type=_parse_prompts, default=d.prompts, help=f"comma-separated configs (default {','.join(ALL_CONFIGS)}; named configs that need missing metadata are an error)")
    b.add_argument("--max-hops", type=_max_hops, default=d.max_hops, help=f"hop distance cap, 1..{MAX_HOPS_LIMIT} (stored as uint8)")
    b.add_argument("--max-group-items", type=_int_at_least(2), default=d.max_group_items, help="second-order chunk size")
    b.add_argument("--max-length", type=_int_at_least(16), default=d.max_length)
    b.add_argument("--rating-threshold", type=_finite_float, default=d.rating_threshold, help="keep rating > this (ignored when the source has no ratings)")
    b.add_argument("--k-core", type=_int_at_least(0), default=d.k_core)
    b.add_argument("--seed", type=int, default=d.seed, help="split seed")
    b.add_argument("--cold-item-frac", type=_finite_float, default=d.cold_item_frac, help="hold out this fraction of the items whole as new products, half for validation, half for test (default 0: none)")
    b.add_argument("--strict", action="store_true", default=d.strict, help="stop at the first bad input line (default: count and report skips)")
    b.add_argument("--format", default=d.format, help="source format (default: detect)")
    b.add_argument("--synthetic-users", type=_int_at_least(1), default=d.synthetic_users)
    b.add_argument("--synthetic-items", type=_int_at_least(1), default=d.synthetic_items)
    b.add_argument("--hop-table-budget-gb", type=_finite_float, default=d.hop_table_budget_gb, help="opt-in dense uint8 N x N hop table when N*N bytes fit (default 0: none; every row stores its own pair matrix)")
    b.add_argument("--no-hop-table", action="store_true", default=not d.save_hop_table, help="do not save the hop table (loaders compute it)")
    b.add_argument("--num-proc", type=_int_at_least(1), default=d.num_proc, help="processes that compute the prompt rows' pair hops and write their Parquet shards (default 1; the folder is the same for any value)")
    b.add_argument("--overwrite", action="store_true", default=d.overwrite)
    b.add_argument("--quiet", action="store_true", default=d.quiet)
    b.add_argument("--debug", action="store_true", help="show Python tracebacks for errors (default: one `error:` line)")
    return b


def build_config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The parsed ``build`` flags as a typed BuildConfig."""
    return BuildConfig(
        source=args.source, out=args.out, tokenizer=args.tokenizer, train_bpe=args.train_bpe, prompts=args.prompts,
        max_hops=args.max_hops, max_group_items=args.max_group_items, max_length=args.max_length,
        rating_threshold=args.rating_threshold, k_core=args.k_core, seed=args.seed,
        cold_item_frac=args.cold_item_frac, strict=args.strict,
        format=args.format, synthetic_users=args.synthetic_users, synthetic_items=args.synthetic_items,
        hop_table_budget_gb=args.hop_table_budget_gb, save_hop_table=not args.no_hop_table, num_proc=args.num_proc,
        overwrite=args.overwrite, quiet=args.quiet,
    )


def parse_build_config(argv: list[str], base: BuildConfig | None = None) -> BuildConfig:
    """``python -m data_builders build`` flags -> BuildConfig; with ``base``, the flags change ``base``'s fields."""
    parser = add_build_arguments(argparse.ArgumentParser(prog="python -m data_builders build"), base)
    return build_config_from_args(parser.parse_args(argv))


__all__ = ["MAX_HOPS_LIMIT", "add_build_arguments", "build_config_from_args", "parse_build_config", "BuildConfig", "BuildConfigError", "build", "read_raw", "SYNTHETIC"]
