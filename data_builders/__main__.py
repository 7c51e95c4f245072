"""``python -m data_builders build --source <raw folder | synthetic> --out <folder> ...``

Reads the source, filters and splits it (data-1's readers/preprocess), builds the tokenizer, the train-only
graph and the prompt corpora, writes the dataset folder and prints a statistics table like the paper's Table 1.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .prompts import ALL_CONFIGS, PromptConfig


def _parse_prompts(value: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in value.split(",") if p.strip())
    unknown = set(names) - set(ALL_CONFIGS)
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--prompts: unknown {sorted(unknown)}; choose from {','.join(ALL_CONFIGS)}")
    return names


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_builders", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a dataset folder")
    b.add_argument("--source", required=True, help="raw data folder/file (Amazon 2014/2018, RecBole atomic) or 'synthetic'")
    b.add_argument("--out", required=True, help="dataset folder to write (atomically)")
    tok = b.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", default=None, help="GPT-2 tokenizer folder (vocab.json + merges.txt) or Hub name; default ../shared/tokenizers/gpt2")
    tok.add_argument("--train-bpe", type=int, default=None, metavar="VOCAB", help="train a byte-level BPE of this size on the corpus instead")
    b.add_argument("--prompts", type=_parse_prompts, default=ALL_CONFIGS, help=f"comma-separated configs (default {','.join(ALL_CONFIGS)})")
    b.add_argument("--max-hops", type=int, default=6)
    b.add_argument("--max-group-items", type=int, default=50, help="second-order chunk size")
    b.add_argument("--max-length", type=int, default=1024)
    b.add_argument("--rating-threshold", type=float, default=3.0, help="keep rating > this (ignored when the source has no ratings)")
    b.add_argument("--k-core", type=int, default=5)
    b.add_argument("--seed", type=int, default=98765)
    b.add_argument("--strict", action="store_true", help="stop at the first bad input line (default: count and report skips)")
    b.add_argument("--format", default="auto", help="source format (default: detect)")
    b.add_argument("--synthetic-users", type=int, default=300)
    b.add_argument("--synthetic-items", type=int, default=120)
    b.add_argument("--hop-table-budget-gb", type=float, default=0.0,
                   help="opt-in dense uint8 N x N hop table when N*N bytes fit (default 0: none; every row stores its own pair matrix)")
    b.add_argument("--no-hop-table", action="store_true", help="do not save the hop table (loaders compute it)")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--quiet", action="store_true")
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
    from .folder import build_dataset_folder
    from .preprocess import build_split

    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    if args.source == "synthetic":
        from .synthetic import make_synthetic

        raw = make_synthetic(num_users=args.synthetic_users, num_items=args.synthetic_items)
    else:
        from .readers import read_source

        raw = read_source(args.source, format=args.format, strict=args.strict)
    log(f"read {args.source}: {len(raw.interactions):,} interactions, {raw.report.total_skipped:,} skipped lines {raw.report.skipped or ''}")
    split = build_split(raw, rating_threshold=args.rating_threshold, k_core=args.k_core, seed=args.seed)
    prompt_config = PromptConfig(configs=args.prompts, max_group_items=args.max_group_items, max_length=args.max_length)
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
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "build":
        return cmd_build(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
