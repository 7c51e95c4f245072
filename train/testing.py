"""Helpers for the training tests: a tiny synthetic dataset folder and a tiny run config (seconds on a CPU)."""
from __future__ import annotations

from pathlib import Path

from data_builders.build import BuildConfig, build
from data_builders.corpus import has_manifest


def tiny_build_config(folder: str | Path, users: int = 41, items: int = 60, seed: int = 0, max_length: int = 96) -> BuildConfig:
    """A synthetic dataset with a trained BPE (no download)."""
    return BuildConfig(source="synthetic", out=str(folder), train_bpe=600, synthetic_users=users, synthetic_items=items,
                       seed=seed, max_length=max_length, quiet=True)


def build_tiny_data(folder: str | Path, users: int = 41, items: int = 60, seed: int = 0, max_length: int = 96) -> Path:
    """Build :func:`tiny_build_config`'s folder unless it exists."""
    folder = Path(folder)
    if not has_manifest(folder):
        build(tiny_build_config(folder, users, items, seed, max_length))
    return folder


def tiny_overrides(data_folder: str | Path, out_dir: str | Path, *extra: str) -> list[str]:
    """Dotted overrides that shrink the demo preset to a few seconds per stage."""
    return [
        f"data.folder={data_folder}",
        "data.build=false",
        "data.max_length=96",
        "data.pretrain_configs=[content,second_order]",
        f"output.dir={out_dir}",
        "model.n_layer=1",
        "model.n_embd=32",
        "model.n_head=2",
        "model.n_positions=128",
        "pretrain.content_epochs=1",
        "pretrain.rounds=1",
        "pretrain.content_every=0",
        "pretrain.batch_size=16",
        "pretrain.collab_batch_size=8",
        "finetune.epochs=2",
        "finetune.batch_size=8",
        "eval.batch_size=16",
        "output.log_every=1",
        *extra,
    ]
