"""Atomic writes: a write that fails part-way leaves the old file intact and no temp file behind."""
import numpy as np
import pytest

from data_builders.atomic import atomic_save_npy, atomic_write, atomic_write_text


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_text(target, "old")

    def half_write(tmp):
        with open(tmp, "w") as f:
            f.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_write)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_npy_round_trip_creates_parent(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    atomic_save_npy(tmp_path / "graph" / "hops.npy", arr)
    assert np.array_equal(np.load(tmp_path / "graph" / "hops.npy"), arr)
