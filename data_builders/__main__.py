"""``python -m data_builders build --source <raw folder | synthetic> --out <folder> ...``

Reads the source, filters and splits it (data-1's readers/preprocess), builds the tokenizer, the train-only
graph and the prompt corpora, writes the dataset folder and prints a statistics table like the paper's Table 1.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .prompts import ALL_CONFIGS, PromptConfig
from .sources import DownloadUnavailable
from .textclean import printable


def _parse_prompts(value: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = set(names) - set(ALL_CONFIGS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--prompts: unknown {sorted(unknown)}; choose from {','.join(ALL_CONFIGS)}")
    return names


MAX_HOPS_LIMIT = 254  # hop distances are uint8 with max_hops + 1 meaning "farther"
METADATA_CONFIGS = ("content", "second_order")  # prompt configs made from the metadata file


def _max_hops(value: str) -> int:
    try:
        hops = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-hops: expected an integer, got {value!r}") from None
    if not 1 <= hops <= MAX_HOPS_LIMIT:
        raise argparse.ArgumentTypeError(f"--max-hops: must be in 1..{MAX_HOPS_LIMIT}, got {hops}")
    return hops


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


def _finite_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return x


def _missing_metadata(raw) -> str | None:
    """Why the source has no item metadata (a missing file), or None when it was read or is built in."""
    note = str(raw.source.get("metadata", "read"))
    return None if note == "read" else note


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_builders", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a dataset folder")
    b.add_argument("--source", required=True, help="raw data folder/file (Amazon 2014/2018, RecBole atomic) or 'synthetic'")
    b.add_argument("--out", required=True, help="dataset folder to write (atomically)")
    tok = b.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", default=None, help="GPT-2 tokenizer folder (vocab.json + merges.txt) or Hub name; default ../shared/tokenizers/gpt2")
    tok.add_argument("--train-bpe", type=_int_at_least(300), default=None, metavar="VOCAB", help="train a byte-level BPE of this size on the corpus instead")
    b.add_argument("--prompts", type=_parse_prompts, default=None, help=f"comma-separated configs (default {','.join(ALL_CONFIGS)})")
    b.add_argument("--max-hops", type=_max_hops, default=6, help=f"hop distance cap, 1..{MAX_HOPS_LIMIT} (stored as uint8)")
    b.add_argument("--max-group-items", type=_int_at_least(2), default=50, help="second-order chunk size")
    b.add_argument("--max-length", type=_int_at_least(16), default=1024)
    b.add_argument("--rating-threshold", type=_finite_float, default=3.0, help="keep rating > this (ignored when the source has no ratings)")
    b.add_argument("--k-core", type=_int_at_least(0), default=5)
    b.add_argument("--seed", type=int, default=98765)
    b.add_argument("--strict", action="store_true", help="stop at the first bad input line (default: count and report skips)")
    b.add_argument("--format", default="auto", help="source format (default: detect)")
    b.add_argument("--synthetic-users", type=_int_at_least(1), default=300)
    b.add_argument("--synthetic-items", type=_int_at_least(1), default=120)
    b.add_argument("--hop-table-budget-gb", type=_finite_float, default=2.0, help="dense uint8 hop table when N*N bytes fit")
    b.add_argument("--no-hop-table", action="store_true", help="do not save the hop table (loaders compute it)")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--quiet", action="store_true")
    b.add_argument("--debug", action="store_true", help="show Python tracebacks for errors (default: one `error:` line)")
    return p


def stats_table(manifest: dict, split) -> str:
    """The paper's Table 1 columns plus rows per prompt kind."""
    n_train, n_valid, n_test = (int(sum(len(a) for a in getattr(split, s))) for s in ("train", "valid", "test"))
    n = n_train + n_valid + n_test
    U, I = manifest["num_users"], manifest["num_items"]
    lines = [
        f"dataset: {manifest['name']}",
        "| users | items | interactions | density | train | valid | test |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {U:,} | {I:,} | {n:,} | {n / max(1, U * I):.4%} | {n_train:,} | {n_valid:,} | {n_test:,} |",
        "",
        "| config | kind | rows |",
        "|---|---|---:|",
    ]
    for config, kinds in manifest["row_kinds"].items():
        for kind, count in kinds.items():
            lines.append(f"| {config} | {kind} | {count:,} |")
    content_total = sum(sum(manifest["row_kinds"].get(c, {}).values()) for c in ("content", "review", "second_order"))
    lines.append(f"| content (all text prompts) | total | {content_total:,} |")
    for config, why in manifest.get("skipped_configs", {}).items():
        lines.append(f"| {config} | (not written) | 0 |  {why}")
    if manifest.get("prompt_stats"):
        lines.append(f"notes: {manifest['prompt_stats']}")
    return "\n".join(lines)


def cmd_build(args) -> int:
    from .folder import build_dataset_folder, check_output_folder
    from .preprocess import build_split

    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    explicit_prompts = args.prompts is not None
    prompts = args.prompts or ALL_CONFIGS
    # before hours of work: is --out a folder we may write (never the source, never foreign files)?
    check_output_folder(Path(args.out), args.overwrite, protect=[] if args.source == "synthetic" else [args.source])
    if args.source == "synthetic":
        from .synthetic import make_synthetic

        raw = make_synthetic(num_users=args.synthetic_users, num_items=args.synthetic_items)
    else:
        from .readers import read_source

        raw = read_source(args.source, format=args.format, strict=args.strict)
    log(f"read {args.source}: {len(raw.interactions):,} interactions, {raw.report.total_skipped:,} skipped lines {raw.report.skipped or ''}")
    if raw.report.changed:
        log(f"text made safe (kept, changed): {raw.report.changed}")
    missing_meta = _missing_metadata(raw)
    wanted_meta = [c for c in prompts if c in METADATA_CONFIGS]
    if missing_meta and explicit_prompts and wanted_meta:
        raise ValueError(f"--prompts asks for {','.join(wanted_meta)}, which need item metadata, but the metadata file is {missing_meta}; "
                         "put it there or drop those prompt configs")
    split = build_split(raw, rating_threshold=args.rating_threshold, k_core=args.k_core, seed=args.seed)
    prompt_config = PromptConfig(configs=prompts, max_group_items=args.max_group_items, max_length=args.max_length)
    result = build_dataset_folder(
        split,
        args.out,
        tokenizer_source=args.tokenizer,
        train_bpe_vocab=args.train_bpe,
        prompt_config=prompt_config,
        max_hops=args.max_hops,
        table_budget_bytes=int(args.hop_table_budget_gb * 1024**3),
        save_hop_table=not args.no_hop_table,
        overwrite=args.overwrite,
        progress=not args.quiet,
        log=log,
    )
    print(stats_table(result.manifest, split))
    print(f"wrote {result.folder} in {time.perf_counter() - t0:.1f} s")
    if missing_meta and wanted_meta:
        print(f"warning: no item metadata ({missing_meta}): the {','.join(wanted_meta)} prompts were not built", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "build":
        return report_user_errors(lambda: cmd_build(args), args.debug)
    return 2


def report_user_errors(run, debug: bool = False) -> int:
    """``run()``; bad input, folders or files become one ``error: ...`` line and exit code 2 (bugs keep tracebacks)."""
    if debug:
        return run()
    try:
        return run()
    except (ValueError, OSError, DownloadUnavailable) as err:
        print(f"error: {printable(err)}\n(rerun with --debug for a traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a bug: outputs are written atomically, so nothing is half-written
        print("error: interrupted; finished files are intact, partial ones were never renamed into place", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
