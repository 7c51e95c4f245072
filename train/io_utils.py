"""Atomic file and folder writes: write to a temporary sibling, then ``os.replace`` (never a half-written file)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_builders.atomic import atomic_write_text, json_default


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n")
