"""Atomic writes: write a temporary sibling, then ``os.replace`` it, so a reader never sees a half-written file.

Used by the data builders, the training scripts and the benchmark harness alike.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

# In every folder this package writes (dataset, model, checkpoint and published folders): the entries it wrote.
# A folder is replaced or removed only when it holds this record and nothing that the record does not list.
OWNED_FILE = ".graphgpt2-rec-owned.json"
OWNED_FORMAT = "graphgpt2-rec-owned"


class ForeignFolderError(ValueError):
    """A folder we were asked to replace or remove holds something we did not write (the data-loss guard)."""


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


def folder_entries(folder: str | os.PathLike) -> list[str]:
    """Every file, link and sub-folder under ``folder`` (relative POSIX paths, folders with a trailing ``/``), the
    ownership record itself left out."""
    folder = Path(folder)
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        out += [(rel / d).as_posix() + "/" for d in dirs]
        out += [(rel / f).as_posix() for f in files if not (rel == Path(".") and f == OWNED_FILE)]
    return sorted(out)


def mark_owned(folder: str | os.PathLike) -> None:
    """Record every entry of a folder we have just written (call it last, before the folder is renamed into place)."""
    record = {"format": OWNED_FORMAT, "entries": folder_entries(folder)}
    atomic_write_text(Path(folder) / OWNED_FILE, json.dumps(record, indent=1) + "\n")


def check_replaceable(folder: str | os.PathLike, what: str = "output folder") -> None:
    """Refuse to replace or remove ``folder`` unless we wrote it and it holds only what we wrote.

    A missing folder passes. Anything else (a file, a link, a folder without our record, one that gained an entry
    since we wrote it, at any depth) raises :class:`ForeignFolderError` naming the folder and the entries.
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise ForeignFolderError(f"{what} {folder}: exists and is not a folder this tool wrote (a file or a link); "
                                 "choose another path or move it away")
    try:
        record = json.loads((folder / OWNED_FILE).read_text(encoding="utf-8"))
        ours = set(record["entries"]) if record.get("format") == OWNED_FORMAT else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        ours = None
    entries = folder_entries(folder)
    if ours is None:
        raise ForeignFolderError(f"{what} {folder}: exists and was not written by this tool (no {OWNED_FILE}, or one "
                                 f"from an older version; it holds {_shown(entries) or 'nothing'}); replacing it could "
                                 "delete your files: choose another path or remove it yourself")
    foreign = [e for e in entries if e not in ours]
    if foreign:
        shown = _shown(foreign)
        raise ForeignFolderError(f"{what} {folder}: holds entries this tool did not write ({shown}); replacing it would "
                                 "delete them: move them out or choose another path")


def _shown(entries: list[str], n: int = 5) -> str:
    return ", ".join(entries[:n]) + (f" and {len(entries) - n} more" if len(entries) > n else "")


def remove_owned(folder: str | os.PathLike, what: str = "output folder") -> None:
    """``rmtree`` a folder we wrote, after :func:`check_replaceable`; a missing folder is fine."""
    check_replaceable(folder, what)
    if Path(folder).exists():
        shutil.rmtree(folder)


def replace_dir(tmp_dir: str | Path, final_dir: str | Path, what: str = "output folder") -> None:
    """Move a fully written ``tmp_dir`` to ``final_dir``, replacing an older one that we wrote (rename is atomic
    per call). ``final_dir`` holding anything we did not write is refused (:func:`check_replaceable`) and kept."""
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    follow_umask(tmp_dir)  # save_pretrained's safetensors are 0600 otherwise
    mark_owned(tmp_dir)
    if final_dir.exists() or final_dir.is_symlink():
        check_replaceable(final_dir, what)
        trash = make_temp_dir(final_dir.parent, prefix=f".{final_dir.name}.old-")
        os.replace(final_dir, trash / "old")
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
