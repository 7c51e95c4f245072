"""Re-run a finished run's post-training selection under other selection grids, from its trained weights.

``select_and_test`` (the residual's scale, then the low-pass term's scale and rank, on validation; then test once)
runs on a copy of the run's selected epoch with both scales back at their initial values, which is the state a fresh
run with the new grids reaches before that step. Only the ``finetune`` selection grids may change: the training is
then the same, so the result equals a fresh run's (the runs are seeded and repeat to the last digit), at the cost of
the selection alone. Used to measure ``finetune.lowpass_rank_grid`` on the main preset's runs (benchmarks/RESULTS.md).

The two training-free residuals may be refitted too (``model.graph_residual_lambda``, ``model.graph_residual_topn``,
``model.graph_lowpass_rank``): on the train pairs, as a fresh run fits them, into a new lever of the new widths. That
is the same as a fresh run only when training never saw them (both scales start at 0 and are not learned, as in
``amazon_cpu``), which is checked.

    python -m benchmarks.reselect outputs/r256/toys_s0 outputs/reselect/toys_s0 "finetune.lowpass_rank_grid=[128,256]"
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from data_builders.corpus import Corpus
from train.common import LEVER_TABLES, make_accelerator
from train.config import load_config
from train.finetune import select_and_test
from train.io_utils import BEST_DIR, atomic_write_json
from train.modeling_io import load_model, save_model

SELECTION_KEYS = ("finetune.residual_scale_grid", "finetune.lowpass_scale_grid", "finetune.lowpass_rank_grid")
REFIT_KEYS = {"model.graph_residual_lambda": "graph_residual", "model.graph_residual_topn": "graph_residual",
              "model.graph_lowpass_rank": "graph_lowpass"}


def reselect(run_dir: Path, out_dir: Path, overrides: list[str], with_test: bool = True) -> dict:
    """The selection and test metrics (``with_test`` False: validation only) of the run in ``run_dir`` with
    ``overrides``, written to ``out_dir/reselect.json``; the run folder is not changed."""
    keys = [o.split("=", 1)[0] for o in overrides]
    bad = [k for k in keys if k not in SELECTION_KEYS and k not in REFIT_KEYS]
    if bad:
        raise SystemExit(f"reselect changes only {', '.join(SELECTION_KEYS + tuple(REFIT_KEYS))}; got {bad}")
    cfg = load_config(run_dir / "run_config.yaml", [*overrides, f"output.dir={out_dir}"])
    refit = list(dict.fromkeys(REFIT_KEYS[k] for k in keys if k in REFIT_KEYS))
    m = cfg.model
    saved = json.loads((run_dir / BEST_DIR / "config.json").read_text())
    if m.graph_lowpass_rank and saved.get("graph_lowpass_rank") != m.graph_lowpass_rank and "graph_lowpass" not in refit:
        refit.append("graph_lowpass")  # the run kept a lower rank than it fitted: the fitted basis is fitted again
    if refit and (m.graph_residual_learn_scale or m.graph_residual_scale_init or m.graph_lowpass_scale_init):
        raise SystemExit("reselect refits a residual only when training never saw it (scales start at 0, not learned)")
    if out_dir.exists():
        raise SystemExit(f"{out_dir} exists: reselect writes a new folder")
    shutil.copytree(run_dir / BEST_DIR, out_dir / BEST_DIR)
    accelerator = make_accelerator(cfg, out_dir)
    model = load_model(out_dir / BEST_DIR)
    corpus = Corpus(cfg.data.folder, cfg.data.leave_user_out_hops)
    for key in REFIT_KEYS:
        name = key.split(".", 1)[1]
        setattr(model.config, name, getattr(m, name))
    for term in refit:  # on the TRAIN pairs, as build_model fits them; a new lever takes the new table widths
        lever = type(getattr(model, term))(model.config)
        lever.set_tables(*LEVER_TABLES[term](corpus.interaction_matrix("train"), model.config))
        setattr(model, term, lever)
    with torch.no_grad():  # the scales a fresh run's selected epoch has before the sweeps
        for term, init in (("graph_residual", cfg.model.graph_residual_scale_init),
                           ("graph_lowpass", cfg.model.graph_lowpass_scale_init)):
            if getattr(model, term, None) is not None:
                getattr(model, term).scale.fill_(init)
    save_model(accelerator, model, out_dir / BEST_DIR)
    stage_s: dict = {}
    t0 = time.time()
    chosen = select_and_test(cfg, corpus, accelerator, None, stage_s, with_test=with_test)
    result = {"run_dir": str(run_dir), "overrides": overrides, "seed": cfg.seed, "seconds": time.time() - t0,
              "validation": {k: v for k, v in chosen.validation.items() if k != "users"},
              "test": None if chosen.test is None else {k: v for k, v in chosen.test.items() if k != "users"},
              "residual_scale_sweep": chosen.residual_scale_sweep, "lowpass_scale_sweep": chosen.lowpass_scale_sweep}
    atomic_write_json(out_dir / "reselect.json", result)
    cfg.save(out_dir / "run_config.yaml")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path, help="a finished run's output.dir (its run_config.yaml and best/)")
    ap.add_argument("out_dir", type=Path, help="a new folder for the copy and reselect.json")
    ap.add_argument("overrides", nargs="*", help=f"dotted overrides of {', '.join(SELECTION_KEYS + tuple(REFIT_KEYS))}")
    ap.add_argument("--validation-only", action="store_true", help="choose on validation, do not score test (probes)")
    args = ap.parse_args(argv)
    result = reselect(args.run_dir, args.out_dir, args.overrides, with_test=not args.validation_only)
    print(json.dumps({k: result[k] for k in ("validation", "test")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
