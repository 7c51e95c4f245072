"""The run folder (``output.dir``): its layout, its lock, and atomic JSON writes into it.

A run replaces only the folders it wrote itself (``data_builders.atomic.check_replaceable``), checks them all before
any work, and holds an exclusive lock on the folder for its whole length, so two runs never mix their files.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data_builders.atomic import ForeignFolderError, atomic_write_text, check_replaceable, json_default, make_temp_dir

# Sub-folders of output.dir that a run writes whole (temp folder + rename) and so replaces on the next run.
PRETRAINED_DIR = "pretrained"
BEST_DIR = "best"
HUB_MODEL_DIR = "hub_model"
HUB_DATASET_DIR = "hub_dataset"
CHECKPOINTS_DIR = "checkpoints"
REPLACED_DIRS = (PRETRAINED_DIR, BEST_DIR, HUB_MODEL_DIR, HUB_DATASET_DIR)
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{6})$")  # checkpoints/<stage>/ckpt-000003: one finished epoch
CHECKPOINT_TEMP_PREFIX = ".tmp-ckpt-"  # an in-progress checkpoint write
LOCK_FILE = ".graphgpt2-rec.lock"


class OutputDirInUse(ValueError):
    """Another process holds the run folder's lock."""


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


def temp_sibling(final: str | Path) -> Path:
    """A fresh, uniquely named hidden folder beside ``final`` to write it in (two writers never share one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return make_temp_dir(final.parent, prefix=f".tmp-{final.name}-")


def check_run_outputs(out_dir: str | Path, folders: tuple[str, ...] = REPLACED_DIRS,
                      checkpoint_stages: tuple[str, ...] = ("pretrain", "finetune")) -> None:
    """Before any work: every folder of ``output.dir`` that this run may replace holds only what we wrote."""
    out = Path(out_dir)
    for name in folders:
        check_replaceable(out / name, f"output.dir {name}/ folder")
    for stage in checkpoint_stages:
        check_checkpoints(out / CHECKPOINTS_DIR / stage)


def check_checkpoints(root: str | Path) -> None:
    """``checkpoints/<stage>/`` holds only checkpoint folders we wrote (a fresh run removes them all)."""
    root = Path(root)
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if CHECKPOINT_NAME.match(entry.name):
            check_replaceable(entry, "checkpoint folder")
        elif not entry.name.startswith(CHECKPOINT_TEMP_PREFIX):
            raise ForeignFolderError(f"checkpoint folder {root}: holds {entry.name!r}, which this tool did not write; a "
                                     "fresh run would delete it: move it out or choose another output.dir")


_held: dict[Path, Any] = {}  # folder -> its open lock file: the lock is re-entrant within a process


def _is_main_rank() -> bool:
    """Rank 0 of a (possibly multi-process) launch takes the lock for all of them."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def hold_output_dir(out_dir: str | Path):
    """An exclusive lock on ``output.dir`` for the block (re-entrant; released when the process ends, also on a
    crash). A second run into the same folder gets :class:`OutputDirInUse` at once, naming the holder."""
    import fcntl

    out = Path(out_dir).resolve()
    if not _is_main_rank():
        yield
        return
    if out in _held:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutputDirInUse(f"output.dir {out} is in use by another run ({holder}); wait for it to finish or "
                             "choose another output.dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    for name in REPLACED_DIRS:  # temp folders of a killed write: ours by name, and nobody else can be writing now
        for stale in out.glob(f".tmp-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    _held[out] = handle
    try:
        yield
    finally:
        _held.pop(out)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def locks_output_dir(stage):
    """Decorator for a stage function ``stage(cfg, ...)``: it runs holding ``cfg.output.dir``'s lock."""
    @functools.wraps(stage)
    def run(cfg, *args, **kwargs):
        with hold_output_dir(cfg.output.dir):
            return stage(cfg, *args, **kwargs)

    return run
