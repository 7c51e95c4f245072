"""Atomic file and folder writes: write to a temporary sibling, then ``os.replace`` (never a half-written file)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from data_builders.atomic import atomic_write_text, follow_umask, json_default


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")


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
