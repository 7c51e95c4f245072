"""Atomic, resumable checkpoints on top of ``accelerator.save_state``.

Layout under ``<output>/checkpoints/<stage>/``::

    ckpt-000003/            one finished epoch (model, optimizer, scheduler, RNG states of every rank)
        trainer_state.json  counters written LAST inside the temp dir: {"epoch": 3, "global_step": ..., ...}
    .tmp-ckpt-000004/       an in-progress write; never read, removed on the next save

A checkpoint is written to a temporary folder and renamed into place only when complete, so a crash or a full
disk leaves the previous checkpoint intact (and at most a ``.tmp-*`` folder, which :func:`latest_checkpoint`
ignores). Only the last ``keep`` checkpoints are kept. We name folders ourselves instead of Accelerate's
``automatic_checkpoint_naming`` because its counter is not restored by ``load_state`` (hf-stack-notes §4).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from data_builders.atomic import ForeignFolderError, follow_umask, mark_owned, remove_owned
from train.io_utils import CHECKPOINT_NAME as _NAME, CHECKPOINT_TEMP_PREFIX, atomic_write_json, check_checkpoints

STATE_FILE = "trainer_state.json"


def _complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root`` (None when there is none)."""
    found = _complete_checkpoints(Path(root))
    return found[-1] if found else None


def save_checkpoint(accelerator: Any, root: str | Path, index: int, state: dict, keep: int = 2) -> Path:
    """Save model/optimizer/scheduler/RNG + ``state`` as ``root/ckpt-<index>``; all ranks must call this."""
    root = Path(root)
    final = root / f"ckpt-{index:06d}"
    tmp = root / f"{CHECKPOINT_TEMP_PREFIX}{index:06d}"  # one name for every rank; the run folder's lock keeps it ours
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f"{CHECKPOINT_TEMP_PREFIX}*"):  # left by a crashed write
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    if not getattr(accelerator, "_drops_tied_weights", False):
        accelerator.register_save_state_pre_hook(drop_tied_weights)
        accelerator._drops_tied_weights = True
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _fault_point("checkpoint")
            atomic_write_json(tmp / STATE_FILE, state)
            follow_umask(tmp)  # safetensors writes 0600 files whatever the umask
            mark_owned(tmp)
            remove_owned(final, "checkpoint folder")
            os.replace(tmp, final)
            for old in _complete_checkpoints(root)[:-keep] if keep > 0 else []:
                try:
                    remove_owned(old, "checkpoint folder")
                except ForeignFolderError as err:  # somebody's file appeared in it mid-run: keep it, say so
                    warnings.warn(f"old checkpoint kept: {err}", stacklevel=2)
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    return final


def drop_tied_weights(models: list, weights: list[dict], output_dir: str) -> None:
    """save_state pre-hook: leave out the tied copies the model declares (``_tied_weights_keys``, e.g. lm_head ->
    wte) so the checkpoint stores each tensor once, as ``save_pretrained`` does. Without it accelerate's
    safetensors clean-up drops them itself and warns "Removed shared tensor {'lm_head.weight'}" at every save.
    Loading is unchanged: safetensors' strict ``load_model`` accepts a missing key that aliases a present one."""
    for model, state in zip(models, weights):
        net = getattr(model, "module", model)  # DDP wrapper
        net = net.get_base_model() if hasattr(net, "get_base_model") else net  # PEFT wrapper
        tied = getattr(net, "_tied_weights_keys", None) or {}
        for copy, source in (tied.items() if isinstance(tied, dict) else []):
            for key in [k for k in state if k == copy or k.endswith("." + copy)]:
                src = key[: len(key) - len(copy)] + source
                if src in state and state[key].data_ptr() == state[src].data_ptr():
                    del state[key]


def load_checkpoint(accelerator: Any, path: str | Path) -> dict:
    """Restore model/optimizer/scheduler/RNG from ``path``; returns its trainer_state dict."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path}: not a complete checkpoint (missing {STATE_FILE})")
    accelerator.load_state(str(path))
    return json.loads(state_file.read_text())


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to other data (split, graph or tokenizer) than the run that tries to resume from it."""


def check_data_fingerprint(checkpoint: Path, recorded: dict | None, current: dict | None) -> None:
    """Refuse to resume when the dataset folder's hashes differ from those the checkpoint was trained on."""
    if not recorded or not current:
        return
    differ = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if differ:
        raise CheckpointMismatchError(
            f"{checkpoint}: cannot resume: the dataset folder's {', '.join(differ)} differ from the checkpoint's "
            f"(another split, graph or tokenizer); start without --resume or point data.folder at the original folder"
        )


def resume_or_reset(accelerator: Any, logger: Any, stage: str, ckpt_root: Path, resume: bool,
                    also_clear: tuple[Path, ...] = (), data_fingerprint: dict | None = None) -> dict | None:
    """Load the newest checkpoint of ``stage`` when resuming (returns its state), else start clean (returns None).

    Resuming first compares ``data_fingerprint`` with the one stored in the checkpoint (before any state is
    loaded). A fresh run in a used output dir forgets the old run's checkpoints (and ``also_clear``) and log
    lines, so the log and the curve describe one run.
    """
    if resume and (last := latest_checkpoint(ckpt_root)) is not None:
        recorded = json.loads((last / STATE_FILE).read_text()).get("data")
        check_data_fingerprint(last, recorded, data_fingerprint)
        state = load_checkpoint(accelerator, last)
        if logger is not None:
            logger.truncate_after(stage, state["global_step"])
        name = {"pretrain": "pre-training", "finetune": "fine-tuning"}.get(stage, stage)
        accelerator.print(f"resumed {name} from {last} (epoch {state['epoch'] + 1}, step {state['global_step']})")
        return state
    if logger is not None:
        logger.truncate_after(stage, -1)
    if accelerator.is_main_process:
        clear_checkpoints(ckpt_root)
        for folder in also_clear:
            remove_owned(folder)
    accelerator.wait_for_everyone()
    return None


def clear_checkpoints(root: str | Path) -> None:
    """Remove every checkpoint under ``root`` (a fresh run); refused, before anything is removed, when ``root``
    holds anything we did not write (:func:`train.io_utils.check_checkpoints`)."""
    root = Path(root)
    check_checkpoints(root)
    if root.is_dir():
        for entry in root.iterdir():
            shutil.rmtree(entry)


# ---------------------------------------------------------------------------------------------------------------
# Fault injection for the kill/resume tests: GRAPHGPT2_KILL_AFTER_STEP=<stage>:<N> (e.g. "finetune:5") SIGKILLs
# the process right after optimizer step N of that stage (no cleanup, like a pre-empted job);
# GRAPHGPT2_FAIL_AT=checkpoint raises inside a checkpoint write, after save_state and before the rename.


def injected_kill_point(stage: str, global_step: int) -> None:
    """The kill/resume tests' fault injection (above): SIGKILL this process here when GRAPHGPT2_KILL_AFTER_STEP names
    this stage and step; nothing otherwise."""
    at = os.environ.get("GRAPHGPT2_KILL_AFTER_STEP")
    if at is None:
        return
    want_stage, _, step = at.rpartition(":")
    if want_stage in ("", stage) and global_step == int(step):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _fault_point(name: str) -> None:
    if os.environ.get("GRAPHGPT2_FAIL_AT") == name:
        raise OSError(28, f"injected failure during {name} write (GRAPHGPT2_FAIL_AT)")
