"""One training loop for every model of the project: GraphGPT2 pre-training and fine-tuning, Multi-VAE, LightGCN.

Like RecBole's ``Trainer.fit``, one loop owns the step, validation, the choice of the best epoch, early stopping,
checkpoints and logging; the models only say how a batch becomes a loss. Read ``Trainer.fit`` top to bottom:

    for each epoch:   train on the epoch's batches (backward, clip, step, schedule, log)
                      validate (when a ``validate`` callback gives metrics) -> maybe a new best epoch
                      checkpoint (atomic; with Accelerate) -> stop when ``patience`` epochs brought nothing

The best epoch is the argmax of ONE validation metric; ties keep the earlier epoch. ``on_best(epoch)`` is called
when an epoch becomes the best, so the caller saves (or copies) the selected model; test evaluation is the
caller's, once, after ``fit``.

Two modes: with an ``accelerator`` (multi-process, checkpoints every epoch, ``resume=True`` continues from the
last one bit-identically) and without one (a plain PyTorch loop in memory: the neural baselines).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from tqdm.auto import tqdm

from train.checkpointing import injected_kill_point, resume_or_reset, save_checkpoint

ESTIMATE_SKIP_STEPS, ESTIMATE_AFTER_STEPS = 3, 10  # the stage's time estimate: steps 4-13 timed


@dataclass
class Selection:
    """The best epoch so far by one validation metric (strictly greater wins: ties keep the earlier epoch), and
    the count of epochs since it improved (for early stopping)."""

    metric: str | None = None
    patience: int = 0  # stop after this many validated epochs without improvement; 0 = never
    epoch: int = -1
    value: float = -float("inf")
    metrics: dict | None = None
    bad_epochs: int = 0

    def update(self, epoch: int, metrics: dict) -> bool:
        """Record one validation; True when ``epoch`` is the new best."""
        value = float(metrics[self.metric])
        if value > self.value:
            self.epoch, self.value, self.metrics, self.bad_epochs = epoch, value, dict(metrics), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state(self) -> dict:
        return {"epoch": self.epoch, "value": self.value, "metrics": self.metrics, "bad_epochs": self.bad_epochs}

    def load(self, state: dict) -> None:
        self.epoch, self.value, self.metrics = state["epoch"], state["value"], state["metrics"]
        self.bad_epochs = state.get("bad_epochs", 0)


@dataclass
class FitResult:
    best_epoch: int  # -1 when nothing was validated
    best_value: float
    best_metrics: dict | None
    history: list[dict]  # one entry per validated epoch: {"epoch": e, **metrics}
    epoch_losses: list[float]  # mean training loss of each epoch run in this process (not restored on resume)
    global_step: int
    last_loss: float  # the last logged loss (mean across processes)
    stopped_early: bool = False
    resumed_from: int | None = field(default=None)  # the epoch a resumed run continued after


class Trainer:
    """Fit ``model`` with ``optimizer`` (and ``scheduler``, stepped every optimizer step).

    With an ``accelerator``, the trainer prepares the model and optimizer, registers the scheduler, writes a
    checkpoint into ``checkpoint_dir`` after every epoch (keeping ``keep_checkpoints``) and records
    ``data_fingerprint`` in it; resuming from a checkpoint with another fingerprint is refused before any step.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        *,
        accelerator: Any = None,
        stage: str = "train",
        grad_clip: float = 0.0,
        selection_metric: str | None = None,
        patience: int = 0,
        checkpoint_dir: str | Path | None = None,
        keep_checkpoints: int = 2,
        logger: Any = None,
        log_every: int = 10,
        data_fingerprint: dict | None = None,
        progress: bool = True,
    ):
        self.accelerator = accelerator
        if accelerator is not None:
            model, optimizer = accelerator.prepare(model, optimizer)
            if scheduler is not None:
                accelerator.register_for_checkpointing(scheduler)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.stage, self.grad_clip, self.log_every = stage, grad_clip, log_every
        self.selection = Selection(selection_metric, patience)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.keep_checkpoints = keep_checkpoints
        self.logger = logger
        self.data_fingerprint = data_fingerprint
        self.progress = progress  # a tqdm bar per epoch (on the local main process)
        self.global_step = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------------------------------------------ the loop
    def fit(
        self,
        num_epochs: int,
        batches: Callable[[int], Iterable],
        loss_fn: Callable[[torch.nn.Module, Any, int], Any],
        validate: Callable[[int], dict | None] | None = None,
        on_best: Callable[[int], None] | None = None,
        epoch_info: Callable[[int], dict] | None = None,
        resume: bool = False,
        also_clear: tuple[Path, ...] = (),
        epoch_steps: list[int] | None = None,
    ) -> FitResult:
        """Train epochs ``0..num_epochs-1`` (from after the last checkpoint when ``resume``).

        ``batches(epoch)`` gives the epoch's batches; ``loss_fn(model, batch, epoch)`` returns a loss tensor or a
        model output with ``.loss``; ``validate(epoch)`` returns metrics (or None: not validated this epoch);
        ``epoch_info(epoch)`` adds fields (e.g. the task) to the log lines; ``epoch_steps`` (steps of every epoch)
        makes the printed time estimate exact in steps (else each epoch is taken as long as the first).
        """
        start_epoch = self._resume_or_reset(resume, also_clear)
        resumed_from = start_epoch - 1 if start_epoch else None
        epoch_losses: list[float] = []
        last_loss = float("nan")
        stopped = self.selection.should_stop  # a resumed run that had already stopped early stays stopped
        for epoch in range(start_epoch, num_epochs if not stopped else start_epoch):
            info = epoch_info(epoch) if epoch_info else {}
            loader = batches(epoch)
            self.model.train()
            # a bar on a terminal only (disable=None): a redirected log gets lines, not carriage-return updates
            bar = tqdm(loader, desc=f"{self.stage} {epoch + 1}/{num_epochs} {info.get('task', '')}".rstrip(),
                       disable=None if (self.progress and self._is_local_main) else True, leave=False)
            loss_sum, n_batches = 0.0, 0
            t_epoch = time.perf_counter()
            for batch in bar:
                outputs = loss_fn(self.model, batch, epoch)
                loss = outputs.loss if hasattr(outputs, "loss") else outputs
                self._backward(loss)
                if self.grad_clip > 0:
                    self._clip_grad_norm()
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.global_step += 1
                loss_sum += loss.detach().float()
                n_batches += 1
                if self.global_step % self.log_every == 0 or self.global_step == 1:
                    last_loss = self._mean_across_processes(loss)
                    self._log_step(epoch, info, last_loss, outputs)
                    bar.set_postfix(loss=f"{last_loss:.4f}")
                injected_kill_point(self.stage, self.global_step)
                if epoch == start_epoch and n_batches == ESTIMATE_SKIP_STEPS:
                    t_epoch = time.perf_counter()  # the first steps pay one-off costs (allocation, caches)
                if epoch == start_epoch and n_batches == ESTIMATE_SKIP_STEPS + ESTIMATE_AFTER_STEPS:
                    steps = sum(epoch_steps[epoch:num_epochs]) if epoch_steps else len(loader) * (num_epochs - epoch)
                    self._print_estimate(steps, num_epochs - epoch, (time.perf_counter() - t_epoch) / ESTIMATE_AFTER_STEPS)
            epoch_losses.append(float(loss_sum) / max(1, n_batches))

            metrics = validate(epoch) if validate is not None else None
            if metrics is not None:
                self.history.append({"epoch": epoch, **metrics})
                self._log({"stage": self.stage, "event": "validation", "epoch": epoch, "step": self.global_step,
                           "metrics": metrics})
                self._print(f"epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
                if self.selection.metric is not None and self.selection.update(epoch, metrics) and on_best is not None:
                    on_best(epoch)
            self._checkpoint(epoch)
            if self.selection.should_stop:
                self._print(f"no {self.selection.metric} improvement for {self.selection.patience} epochs; stopping")
                stopped = True
                break
        return FitResult(self.selection.epoch, self.selection.value, self.selection.metrics, list(self.history),
                         epoch_losses, self.global_step, last_loss, stopped, resumed_from)

    # ------------------------------------------------------------------------------------------------ plumbing
    @property
    def _is_local_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_local_main_process

    def _backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def _clip_grad_norm(self) -> None:
        if self.accelerator is not None:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)

    def _print_estimate(self, steps: int, epochs: int, seconds_per_step: float) -> None:
        """The stage's remaining time, from the pace of its first steps."""
        name = {"pretrain": "pre-training", "finetune": "fine-tuning"}.get(self.stage, self.stage)
        self._print(f"{name}: {steps:,} steps in {epochs} epoch(s), about {steps * seconds_per_step / 60:.1f} min at "
                    f"{seconds_per_step:.2f} s/step (timed on {ESTIMATE_AFTER_STEPS} steps; validation not included)")

    def _mean_across_processes(self, loss: torch.Tensor) -> float:
        if self.accelerator is None:
            return float(loss.detach())
        return self.accelerator.gather(loss.detach().float().reshape(1)).mean().item()

    def _print(self, text: str) -> None:
        if self.accelerator is not None:
            self.accelerator.print(text)
        else:
            print(text)

    def _log(self, record: dict) -> None:
        if self.logger is not None:
            self.logger.log(record)

    def _log_step(self, epoch: int, info: dict, loss: float, outputs: Any) -> None:
        record = {"stage": self.stage, **info, "epoch": epoch, "step": self.global_step, "loss": loss,
                  "lr_id": self.optimizer.param_groups[0]["lr"]}
        reg_loss = getattr(outputs, "reg_loss", None)
        if reg_loss is not None:
            record["reg_loss"] = float(reg_loss.detach())
        self._log(record)

    def _state(self, epoch: int) -> dict:
        return {"epoch": epoch, "global_step": self.global_step, "best": self.selection.state(),
                "history": self.history, "data": self.data_fingerprint}

    def _checkpoint(self, epoch: int) -> None:
        if self.accelerator is not None and self.checkpoint_dir is not None:
            save_checkpoint(self.accelerator, self.checkpoint_dir, epoch, self._state(epoch), keep=self.keep_checkpoints)

    def _resume_or_reset(self, resume: bool, also_clear: tuple[Path, ...]) -> int:
        """The first epoch to run: after the newest checkpoint when resuming, else 0 (old checkpoints removed)."""
        if self.accelerator is None or self.checkpoint_dir is None:
            return 0
        state = resume_or_reset(self.accelerator, self.logger, self.stage, self.checkpoint_dir, resume, also_clear,
                                data_fingerprint=self.data_fingerprint)
        if state is None:
            return 0
        self.global_step = state["global_step"]
        self.selection.load(state["best"])
        self.history = list(state["history"])
        return state["epoch"] + 1


__all__ = ["FitResult", "Selection", "Trainer"]
