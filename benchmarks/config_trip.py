"""Where the run config travels (issue "Architecture 2"): the project files and functions that receive it.

    OMP_NUM_THREADS=1 python -m benchmarks.config_trip --out /tmp/config_trip_demo

Runs ``graphgpt2-rec demo`` (into ``--out``) under a profile hook and records every call, in this checkout's files,
whose arguments or locals at entry hold an instance of a ``train.config`` dataclass (the run config or one of its
sections). Prints the number of files and functions and lists them. Not a timing: the hook slows the demo down.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import train.config as run_config
from train.main import cli

ROOT = Path(__file__).resolve().parents[1]


def config_types() -> tuple[type, ...]:
    return tuple(t for t in vars(run_config).values()
                 if isinstance(t, type) and dataclasses.is_dataclass(t) and t.__module__ == run_config.__name__)


def trace_demo(out: str) -> dict[str, set[str]]:
    """{file relative to the checkout: names of the functions that received the run config} for one demo run."""
    types, seen = config_types(), {}

    def hook(frame, event, arg):
        path = Path(frame.f_code.co_filename)
        if event != "call" or ROOT not in path.parents or ".venv" in path.parts:
            return
        if any(isinstance(v, types) for v in frame.f_locals.values()):
            seen.setdefault(str(path.relative_to(ROOT)), set()).add(frame.f_code.co_name)

    sys.setprofile(hook)
    try:
        cli(["demo", f"output.dir={out}"])
    finally:
        sys.setprofile(None)
    return seen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/config_trip_demo", help="the demo's output.dir")
    args = p.parse_args(argv)
    seen = trace_demo(args.out)
    print(f"files {len(seen)} functions {sum(len(v) for v in seen.values())}")
    for path in sorted(seen):
        print(f"  {path}: {', '.join(sorted(seen[path]))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
