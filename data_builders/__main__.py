"""``python -m data_builders build --source <raw folder | synthetic> --out <folder> ...``

Reads the source, filters and splits it (data-1's readers/preprocess), builds the tokenizer, the train-only
graph and the prompt corpora, writes the dataset folder and prints a statistics table like the paper's Table 1.
"""
from __future__ import annotations

import argparse
import sys
import time

from .build import BuildConfig, add_build_arguments, build, build_config_from_args
from .sources import DownloadUnavailable
from .textclean import printable


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_builders", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    add_build_arguments(sub.add_parser("build", help="build a dataset folder"))
    return p


def stats_table(manifest: dict) -> str:
    """The paper's Table 1 columns plus rows per prompt kind."""
    n_train, n_valid, n_test = (int(manifest["split"]["split_sizes"][s]) for s in ("train", "valid", "test"))
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


def cmd_build(cfg: BuildConfig) -> int:
    t0 = time.perf_counter()
    result = build(cfg)
    print(stats_table(result.manifest))
    print(f"wrote {result.folder} in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.command == "build":
        return report_user_errors(lambda: cmd_build(build_config_from_args(args)), args.debug)
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
