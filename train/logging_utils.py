"""Per-step JSON-lines logs (always), TensorBoard (only when installed), and training-curve PNGs."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from train.io_utils import atomic_write_text


class RunLogger:
    """Append-only JSON-lines log on the main process; mirrors scalars to TensorBoard when it is installed.

    On resume, ``truncate_after(step)`` drops lines logged after the checkpoint so the log and the curve
    describe one uninterrupted run.
    """

    def __init__(self, path: str | Path, enabled: bool = True, tensorboard_dir: str | Path | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard_dir is not None and importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(tensorboard_dir))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(f"{record.get('stage', 'train')}/{key}", value, record["step"])

    def truncate_after(self, stage: str, step: int) -> None:
        """Drop this stage's records with ``step > step`` (written by an interrupted run)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("stage") == stage and rec.get("step", -1) > step:
                continue
            keep.append(line)
        atomic_write_text(self.path, "".join(l + "\n" for l in keep))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_log(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def plot_training_curves(log_path: str | Path, png_path: str | Path, selection_metric: str | None = None) -> Path:
    """One PNG: loss per step for each stage/task, and validation metrics per fine-tuning epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    # one line segment per (stage, task, epoch) so alternating content/collab epochs are not joined
    segments: dict[tuple, tuple[list, list]] = {}
    for r in records:
        if "loss" in r and "step" in r:
            xs, ys = segments.setdefault((r.get("stage"), r.get("task", ""), r.get("epoch")), ([], []))
            xs.append(r["step"])
            ys.append(r["loss"])
    colors: dict[str, str] = {}
    for (stage, task, _), (xs, ys) in segments.items():
        label = f"{stage}:{task}"
        first = label not in colors
        color = colors.setdefault(label, f"C{len(colors)}")
        axes[0].plot(xs, ys, color=color, lw=1, marker="." if len(xs) < 3 else None, label=label if first else None)
    series = colors
    axes[0].set_xlabel("optimizer step (per stage)")
    axes[0].set_ylabel("training loss")
    axes[0].set_yscale("log")
    if series:
        axes[0].legend(fontsize=8)
    val = [r for r in records if r.get("event") == "validation"]
    if val:
        metrics = [k for k in val[0]["metrics"] if k.startswith(("recall", "ndcg")) and not k.endswith("_paper")]
        for m in metrics:
            axes[1].plot([r["epoch"] for r in val], [r["metrics"][m] for r in val], marker="o", label=m)
        axes[1].set_xlabel("fine-tuning epoch")
        axes[1].set_ylabel("validation metric")
        axes[1].legend(fontsize=8)
        if selection_metric:
            axes[1].set_title(f"selection: {selection_metric}")
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


# Display names of a run's wall-time keys (the result files keep the keys).
WALL_LABELS = {"build_s": "build", "pretrain_s": "pre-training", "finetune_s": "fine-tuning",
               "finetune_model_s": "model set-up", "finetune_train_s": "training epochs",
               "finetune_select_s": "selection on validation", "finetune_test_s": "test", "publish_s": "publish",
               "finetune_graph_residual_fit_s": "EASE residual fit", "finetune_graph_lowpass_fit_s": "low-pass fit",
               "finetune_id_propagation_fit_s": "propagation fit", "finetune_edge_tables_fit_s": "edge tables fit",
               "finetune_text_init_s": "item-text init"}


def wall_text(walls: dict[str, float]) -> str:
    """``build 3 s, pre-training 41 s, fine-tuning 30 s (model set-up 1 s, ...), publish 2 s``."""
    def part(key: str) -> str:
        return f"{WALL_LABELS.get(key, key)} {walls[key]:.0f} s"

    inner = [k for k in walls if k.startswith("finetune_") and k != "finetune_s"]
    parts = []
    for key in walls:
        if key in inner:
            continue
        text = part(key)
        if key == "finetune_s" and inner:
            text += " (" + ", ".join(part(k) for k in inner) + ")"
        parts.append(text)
    return ", ".join(parts)
