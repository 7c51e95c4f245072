"""Atomic writes: write a temporary sibling, then ``os.replace`` it, so a reader never sees a half-written file.

Used by the data builders, the training scripts and the benchmark harness alike.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np


def current_umask() -> int:
    """The process umask: from /proc on Linux (no side effect), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # not thread-safe for that instant; only where /proc is missing
    os.umask(mask)
    return mask


def make_temp_file(parent: str | os.PathLike, prefix: str, suffix: str = "") -> str:
    """``mkstemp`` beside the target, but with the mode ``open()`` would give (0666 & ~umask), not 0600,
    so written files stay readable by whoever may read the folder."""
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return tmp


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """``mkdtemp`` with the mode ``mkdir()`` would give (0777 & ~umask), not 0700."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def follow_umask(folder: str | os.PathLike) -> None:
    """Give a written tree the modes ``open()``/``mkdir()`` would: some writers (safetensors, ``mkstemp``) create
    0600 files whatever the umask, which makes a published folder unreadable to the other users of a machine."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o100
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # flush to disk before the rename: a crash leaves the old file or the new one
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars/arrays and paths (the project's one JSON fallback)."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def replace_dir(tmp_dir: str | Path, final_dir: str | Path) -> None:
    """Move a fully written ``tmp_dir`` to ``final_dir``, replacing an older one (rename is atomic per call)."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    follow_umask(tmp_dir)  # save_pretrained's safetensors are 0600 otherwise
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
