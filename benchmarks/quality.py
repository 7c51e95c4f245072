"""Quality benchmark: baselines and GraphGPT2 variants on ONE split, scored by ONE metric code (train.metrics).

    python -m benchmarks.quality --data <dataset folder | raw data folder> \
        --baselines pop itemknn ease multivae --variants full nogkia --seeds 0 1 2 [--preset cpu|gpu]

``--data`` is either a dataset folder written by ``python -m data_builders build`` (it holds a manifest and
the ``recommendation`` config with train/validation/test) or a raw data folder (e.g.
``../shared/data/amazon-beauty-2014``), which is read and split here with the same data_builders code
(``readers.read_source`` + ``preprocess.build_split``). Either way the split hash goes into every result.

Writes ``benchmarks/results/<dataset>/<date>.json`` (every run: validation and test metrics, wall time, chosen
hyper-parameters), ``<date>.md`` (mean ± std over seeds) and ``<date>.png`` (bar chart). Deterministic
baselines (pop, itemknn, ease, rlae, ease_ilp) run once; stochastic ones and GraphGPT2 variants run once per seed.
Model selection uses validation only; test is evaluated once per run with the selected model.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from benchmarks.baselines import BASELINES, evaluate_recommender, make_baseline, to_csr
from data_builders.atomic import atomic_write, json_default
from data_builders.corpus import Corpus, has_manifest
from data_builders.preprocess import DEFAULT_K_CORE, DEFAULT_RATING_THRESHOLD, DEFAULT_SPLIT_SEED, build_split
from data_builders.readers import read_source
from train.config import EvalConfig, RunConfig, load_config
from train.evaluate import evaluate_scorer
from train.metrics import metric_names

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPORT_METRICS = metric_names((20, 40), (100,))  # recall@20, recall@20_paper, recall@40, recall@40_paper, ndcg@100

RESIDUAL_SCALE_GRID = (0, 0.5, 0.75, 1, 1.25, 1.5, 2, 3)  # standardised residual; Beauty seed 0 (validation) peaks at 1

# GraphGPT2 variants = dotted config overrides of train.config.RunConfig (paper Table 2 / Figs 4-6 ablations).
VARIANTS: dict[str, list[str]] = {
    "full": [],
    "nogkia": ["model.graph_bias=none"],  # no graph-aware attention bias
    "constant": ["model.graph_bias=constant"],  # "meaningless injection": same bias for every hop
    "exp": ["model.graph_bias=exp"],  # decreasing exponential of the hop distance
    "learned": ["model.graph_bias=learned"],  # one learned scalar per hop value
    "noghip": ["data.pretrain_configs=[review]"],  # no heterogeneous-information prompts: interactions/review only
    "nopretrain": ["pretrain.do_pretrain=false"],
    "nofinetune": ["finetune.do_finetune=false"],
    "no2order": ["data.pretrain_configs=[content, review]"],  # without second-order (shared brand) prompts
    "noitem": ["data.pretrain_configs=[review, second_order]"],  # without item content prompts
    # not in the paper: item-item hops measured without the prompt's own user, so the bias of a personalized
    # prompt tells which of the user's items other users also combine (HopDistances.leave_user_out)
    "leaveout": ["data.leave_user_out_hops=true"],
    "leaveout_learned": ["data.leave_user_out_hops=true", "model.graph_bias=learned"],
    # not in the paper: item head + learned scale * (prompt items) @ W, W fitted on the train graph (issue 10)
    "residual": ["model.graph_residual=ease"],
    "residual_cooc": ["model.graph_residual=cooc"],
    # the two-stage recipe: the transformer is fine-tuned alone (scale fixed at 0), then the scale of the EASE
    # residual is chosen on validation; run_variant also reports the same model at scale 0 ("-noresidual")
    "residual_val": ["model.graph_residual=ease", "model.graph_residual_lambda=100", "model.graph_residual_learn_scale=false",
                     "model.graph_residual_scale_init=0", f"finetune.residual_scale_grid={list(RESIDUAL_SCALE_GRID)}"],
    # the paper's target (every train item weighs 1): the ablation of amazon_cpu's visible-target weight
    "alltargets": ["finetune.visible_target_weight=1.0"],
    # user tokens read their own rows (the paper): the ablation of amazon_cpu's model.user_token_dropout=1
    "userid": ["model.user_token_dropout=0.0"],
    # graph levers added to the preset (issue 10 step 4): LightGCN-smoothed collab ID tables, K = 2 ...
    "propagate": ["model.id_propagation_layers=2"],
    # ... and Graphormer's edge encoding: a learned per-head bias over co-holder / degree buckets
    "edgebias": ["model.graph_edge_bias=true"],
    # content into the collab item IDs: both item tables start from the item text's TF-IDF SVD
    "textinit": ["finetune.init_collab_items=text_svd"],
    "propagate_textinit": ["model.id_propagation_layers=2", "finetune.init_collab_items=text_svd"],
    # after content pre-training (mi_cpu, beauty_cpu): the collab item rows start as the pre-trained content rows
    "contentinit": ["finetune.init_collab_items=content_set"],
    # random item IDs (the paper): the ablation of amazon_cpu's finetune.init_collab_items=text_svd
    "notext": ["finetune.init_collab_items=none"],
}

# --preset picks sizes: the train.config preset for variants and the Multi-VAE budget for baselines.
PRESETS = {
    "cpu": {"train_config": "quick", "multivae": {"epochs": 100, "eval_every": 5}, "lightgcn": {"epochs": 300, "eval_every": 10}},
    "gpu": {"train_config": "paper", "multivae": {"epochs": 200, "eval_every": 1}, "lightgcn": {"epochs": 1000, "eval_every": 10}},
}


@dataclass
class SplitData:
    """Binary (U, I) CSR matrices of one split, plus where they came from."""

    name: str
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    split_hash: str
    source: dict = field(default_factory=dict)
    folder: str | None = None  # the dataset folder, when loaded from one (variants need it)

    @property
    def num_users(self) -> int:
        return self.train.shape[0]

    @property
    def num_items(self) -> int:
        return self.train.shape[1]

    def check_disjoint(self) -> None:
        """No (user, item) pair may sit in two splits (that would leak targets into training)."""
        for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
            both = getattr(self, a).multiply(getattr(self, b)).nnz
            if both:
                raise ValueError(f"{self.name}: {both} (user, item) pairs are in both {a} and {b}")


def split_from_corpus(corpus: Corpus) -> SplitData:
    """The train/validation/test interaction matrices of a dataset folder (``Corpus`` checks them against the
    split hashes its build recorded)."""
    data = SplitData(
        name=corpus.name,
        train=corpus.interaction_matrix("train"),
        valid=corpus.interaction_matrix("validation"),
        test=corpus.interaction_matrix("test"),
        split_hash=corpus.split_hash,
        source={"folder": str(corpus.folder), "split_hashes": corpus.split_hashes, "manifest_source": corpus.split_manifest.get("source")},
        folder=str(corpus.folder),
    )
    data.check_disjoint()
    return data


def load_split_from_raw(
    raw: str | Path, rating_threshold: float | None = DEFAULT_RATING_THRESHOLD, k_core: int = DEFAULT_K_CORE,
    seed: int = DEFAULT_SPLIT_SEED, name: str | None = None
) -> SplitData:
    """Read raw files with data_builders and split them with the project's recipe (calibration.md)."""
    rawds = read_source(raw, name=name)
    split = build_split(rawds, rating_threshold=rating_threshold, k_core=k_core, seed=seed)
    I = split.num_items
    data = SplitData(
        name=split.name,
        train=to_csr(split.train, I),
        valid=to_csr(split.valid, I),
        test=to_csr(split.test, I),
        split_hash=split.manifest["split_hash"],
        source={"raw": str(raw), "preprocess": split.manifest["preprocess"], "split_hashes": split.manifest["split_hashes"],
                "read_report": split.manifest["read_report"]},
    )
    data.check_disjoint()
    return data


def load_split(data: str | Path, **raw_kwargs) -> SplitData:
    """A dataset folder (built by ``python -m data_builders build``) or a raw data folder."""
    return split_from_corpus(Corpus(data)) if has_manifest(data) else load_split_from_raw(data, **raw_kwargs)


# ----------------------------------------------------------------------------------------------------------
# Runs


def baseline_metrics(model, data: SplitData, split: str) -> dict:
    """A fitted baseline's metrics on ``split`` ("validation" or "test"): from a dataset folder, by the model's own
    evaluation loop (a baseline is a ``train.evaluate.Scorer``); from raw files, on the split's matrices."""
    if data.folder is None:
        return evaluate_recommender(model, data.train, data.valid if split == "validation" else data.test)
    metrics = evaluate_scorer(None, model, Corpus(data.folder), split, RunConfig(eval=EvalConfig(batch_size=1024)))[0]
    return {k: v for k, v in metrics.items() if k not in ("split", "users")}


def run_baseline(name: str, data: SplitData, seed: int = 0, **kwargs) -> dict:
    """Fit one baseline on train (validation for its hyper-parameter), then score validation and test once."""
    t0 = time.perf_counter()
    model = make_baseline(name, seed=seed, **kwargs).fit(data.train, data.valid)
    fit_s = time.perf_counter() - t0
    valid, test = (baseline_metrics(model, data, split) for split in ("validation", "test"))
    return {
        "model": name,
        "kind": "baseline",
        "seed": seed if model.stochastic else None,
        "valid": valid,
        "test": test,
        "fit_s": fit_s,
        "wall_s": time.perf_counter() - t0,
        "info": model.info(),
        **({"history": model.history_} if hasattr(model, "history_") else {}),  # neural baselines' curves
    }


def variant_config(variant: str, data: SplitData, seed: int, train_config: str, out_dir: Path, extra: Sequence[str] = ()):
    """The RunConfig of one GraphGPT2 variant on the split's dataset folder."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    if data.folder is None:
        raise ValueError("GraphGPT2 variants need a dataset folder (--data <folder built by python -m data_builders build>), not raw files")
    overrides = [
        f"seed={seed}",
        f"data.folder={data.folder}",
        "data.build=false",
        f"output.dir={out_dir / variant / f'seed{seed}'}",
        *VARIANTS[variant],
        *extra,
    ]
    return load_config(train_config, overrides), overrides


def run_variant(variant: str, data: SplitData, seed: int, train_config: str, out_dir: Path, extra: Sequence[str] = ()) -> list[dict]:
    """Train and evaluate one GraphGPT2 variant through ``train.main.run_pipeline``: its result row (and, for a
    two-stage residual run, the same model without the residual)."""
    from train.main import run_pipeline

    cfg, overrides = variant_config(variant, data, seed, train_config, out_dir, extra)
    t0 = time.perf_counter()
    result = run_pipeline(cfg)
    wall = time.perf_counter() - t0
    valid, test = _pipeline_metrics(result)
    info = {"train_config": train_config, "overrides": overrides, "history": result.get("history"),
            "residual_scale_sweep": result.get("residual_scale_sweep")}
    rows = [{"model": f"graphgpt2-{variant}", "kind": "graphgpt2", "seed": seed, "valid": valid, "test": test,
             "wall_s": wall, "info": info}]
    if result.get("residual_scale_sweep") and 0 in cfg.finetune.residual_scale_grid:
        rows.append(_without_residual(cfg, result, rows[0]))
    return rows


def _without_residual(cfg, result: dict, row: dict) -> dict:
    """The ablation row of a two-stage run: the selected model with the residual's scale at 0, i.e. the
    transformer that was trained (the residual never entered training); its own single test evaluation."""
    from accelerate import Accelerator

    from train.evaluate import evaluate_model
    from train.modeling_io import load_model

    model = load_model(result["paths"]["best_model"]).eval()
    with torch.no_grad():
        model.graph_residual.scale.fill_(0.0)
    corpus, acc = Corpus(cfg.data.folder, cfg.data.leave_user_out_hops), Accelerator(cpu=True)
    valid = evaluate_model(acc, model, corpus, "validation", cfg)
    test = evaluate_model(acc, model, corpus, "test", cfg)
    strip = lambda m: {k: v for k, v in m.items() if k != "users"}  # noqa: E731
    return {**row, "model": row["model"] + "-noresidual", "valid": strip(valid), "test": strip(test)}


def _pipeline_metrics(result: Any) -> tuple[dict, dict]:
    """Validation (selected epoch) and test metrics out of run_pipeline's return value."""
    if not isinstance(result, dict):
        result = getattr(result, "__dict__", {})
    metrics = result.get("metrics", result)
    valid = metrics.get("valid") or metrics.get("validation") or {}
    test = metrics.get("test")
    if not test:
        raise KeyError(f"run_pipeline returned no test metrics (keys: {sorted(result)})")
    return dict(valid), dict(test)


# ----------------------------------------------------------------------------------------------------------
# Reporting


def summarize_runs(rows: Sequence[dict], split: str = "test") -> list[dict]:
    """Mean and sample std (ddof=1; 0 with one run) per model over its runs, in first-seen order."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        runs = [r for r in rows if r["model"] == model]
        entry: dict[str, Any] = {"model": model, "runs": len(runs), "seeds": [r["seed"] for r in runs]}
        for m in REPORT_METRICS:
            vals = np.array([r[split][m] for r in runs], dtype=float)
            entry[m] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
        entry["wall_s"] = float(np.mean([r["wall_s"] for r in runs]))
        out.append(entry)
    return out


def markdown_table(summary: Sequence[dict]) -> str:
    """One row per model: mean ± std over runs of both recall definitions and NDCG@100, wall time per run."""
    head = "| model | runs | R@20 | R@20 (Eq. 8) | R@40 | R@40 (Eq. 8) | NDCG@100 | wall s / run |"
    lines = [head, "|" + "---|" * 8]
    for e in summary:
        cells = []
        for m in REPORT_METRICS:
            mean, std = e[m]["mean"], e[m]["std"]
            cells.append(f"{mean:.4f} ± {std:.4f}" if e["runs"] > 1 else f"{mean:.4f}")
        lines.append(f"| {e['model']} | {e['runs']} | " + " | ".join(cells) + f" | {e['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


def bar_chart(summary: Sequence[dict], path: Path, title: str) -> None:
    """Grouped bars (R@20, R@40, NDCG@100) per model with std error bars; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["recall@20", "recall@40", "ndcg@100"]
    x = np.arange(len(summary))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(summary) + 2), 4))
    for j, m in enumerate(metrics):
        ax.bar(x + (j - 1) * width, [e[m]["mean"] for e in summary], width, yerr=[e[m]["std"] for e in summary], label=m, capsize=3)
    ax.set_xticks(x, [e["model"] for e in summary], rotation=30, ha="right")
    ax.set_ylabel("test")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def write_results(rows: Sequence[dict], data: SplitData, out_dir: Path, command: str, tag: str | None = None) -> dict[str, Path]:
    """JSON (all runs), markdown table and PNG chart under ``out_dir/<dataset>/``; returns their paths."""
    tag = tag or _dt.datetime.now().strftime("%Y-%m-%d_%H%M%S")
    base = out_dir / _slug(data.name)
    summary = summarize_runs(rows, "test")
    payload = {
        "dataset": data.name,
        "split_hash": data.split_hash,
        "source": data.source,
        "num_users": data.num_users,
        "num_items": data.num_items,
        "interactions": {"train": int(data.train.nnz), "valid": int(data.valid.nnz), "test": int(data.test.nnz)},
        "command": command,
        "machine": machine_info(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "protocol": "full-catalog ranking, train items masked; model choices on validation; test once per run",
        "runs": list(rows),
        "summary_test": summary,
        "summary_valid": summarize_runs(rows, "valid") if all(r.get("valid") for r in rows) else None,
    }
    paths = {"json": base / f"{tag}.json", "md": base / f"{tag}.md", "png": base / f"{tag}.png"}
    _write_text(paths["json"], json.dumps(payload, indent=2, default=json_default) + "\n")
    md = (
        f"# {data.name}: test metrics (mean ± std over runs)\n\n"
        f"Split hash `{data.split_hash}`; {data.num_users} users, {data.num_items} items; "
        f"train/valid/test interactions {data.train.nnz}/{data.valid.nnz}/{data.test.nnz}.\n\n"
        f"Command: `{command}`\n\n" + markdown_table(summary)
    )
    _write_text(paths["md"], md)
    bar_chart(summary, paths["png"], f"{data.name} (test)")
    return paths


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "dataset"


# ----------------------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="dataset folder (python -m data_builders build) or raw data folder")
    p.add_argument("--baselines", nargs="*", default=["pop", "itemknn", "ease", "multivae"], choices=sorted(BASELINES))
    p.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--train-config", default=None, help="train.config preset or YAML for variants (default: from --preset)")
    p.add_argument("--override", nargs="*", default=[], help="extra dotted overrides for every variant")
    p.add_argument("--ease-lambdas", nargs="+", type=float, default=[10, 50, 100, 250, 500, 1000, 2000])
    p.add_argument("--rlae-lambdas", nargs="+", type=float, default=[50, 100, 250, 500], help="RLAE's L2 grid")
    p.add_argument("--rlae-xis", nargs="+", type=float, default=[0, 0.1, 0.2, 0.3, 0.5], help="RLAE's diagonal bounds (0 = EASE)")
    p.add_argument("--ease-ilp-lambdas", nargs="+", type=float, default=[50, 100, 250], help="ease_ilp: EASE L2 grid")
    p.add_argument("--ease-ilp-ks", nargs="+", type=int, default=[64, 128, 256, 512], help="ease_ilp: low-pass ranks")
    p.add_argument("--ease-ilp-weights", nargs="+", type=float, default=[0.25, 0.5, 0.75, 1], help="ease_ilp: low-pass weights")
    p.add_argument("--ease-ilp-exact-max-items", type=int, default=20000,
                   help="ease_ilp: exact EASE up to this many items, the neighbourhood EASE above (0 = always)")
    p.add_argument("--ease-ilp-neighbours", type=int, default=256, help="ease_ilp: K of the neighbourhood EASE")
    p.add_argument("--itemknn-topk", type=int, default=None, help="neighbours per item (default: all)")
    p.add_argument("--multivae-epochs", type=int, default=None)
    p.add_argument("--lightgcn-epochs", type=int, default=None)
    p.add_argument("--multivae-patience", type=int, default=None, help="stop after this many validations without gain")
    p.add_argument("--lightgcn-patience", type=int, default=None, help="stop after this many validations without gain")
    p.add_argument("--rating-threshold", type=float, default=DEFAULT_RATING_THRESHOLD, help="raw data only: keep rating > this")
    p.add_argument("--k-core", type=int, default=DEFAULT_K_CORE, help="raw data only")
    p.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED, help="raw data only")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--tag", default=None, help="file name stem (default: date and time)")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                   help="no training: gather the runs of these result files (same split as --data) into one table")
    return p.parse_args(argv)


def merged_runs(paths: Sequence[Path], split_hash: str) -> list[dict]:
    """The runs of several result files (e.g. one seed each, run in parallel), refusing a file of another split."""
    rows = []
    for path in paths:
        payload = json.loads(Path(path).read_text())
        if payload["split_hash"] != split_hash:
            raise ValueError(f"{path}: split {payload['split_hash'][:12]} is not --data's split {split_hash[:12]}")
        rows.extend(payload["runs"])
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    args = parse_args(argv)
    command = "python -m benchmarks.quality " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    preset = PRESETS[args.preset]
    t0 = time.perf_counter()
    data = load_split(args.data, rating_threshold=args.rating_threshold, k_core=args.k_core, seed=args.split_seed)
    print(f"[quality] {data.name}: {data.num_users} users, {data.num_items} items, train/valid/test "
          f"{data.train.nnz}/{data.valid.nnz}/{data.test.nnz}, split {data.split_hash[:12]} ({time.perf_counter() - t0:.1f} s)", flush=True)
    kwargs = {
        "ease": {"lambdas": args.ease_lambdas},
        "rlae": {"lambdas": args.rlae_lambdas, "xis": args.rlae_xis},
        "ease_ilp": {"lambdas": args.ease_ilp_lambdas, "ks": args.ease_ilp_ks, "weights": args.ease_ilp_weights,
                     "exact_max_items": args.ease_ilp_exact_max_items, "neighbours": args.ease_ilp_neighbours},
        "itemknn": {"topk": args.itemknn_topk},
        "multivae": _budget(preset["multivae"], args.multivae_epochs, args.multivae_patience),
        "lightgcn": _budget(preset["lightgcn"], args.lightgcn_epochs, args.lightgcn_patience),
    }
    rows = merged_runs(args.merge, data.split_hash) if args.merge else []
    for name in args.baselines if not args.merge else []:
        for seed in args.seeds if BASELINES[name].stochastic else [None]:
            row = run_baseline(name, data, seed or 0, **kwargs.get(name, {}))
            rows.append(row)
            print(f"[quality] {name} seed={row['seed']}: test " + _fmt(row["test"]) + f" ({row['wall_s']:.1f} s)", flush=True)
    train_config = args.train_config or preset["train_config"]
    for variant in args.variants if not args.merge else []:
        for seed in args.seeds:
            for row in run_variant(variant, data, seed, train_config, args.out / _slug(data.name) / "runs", args.override):
                rows.append(row)
                print(f"[quality] {row['model']} seed={seed}: test " + _fmt(row["test"]) + f" ({row['wall_s']:.1f} s)", flush=True)
    paths = write_results(rows, data, args.out, command, args.tag)
    print(markdown_table(summarize_runs(rows)))
    print("[quality] wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


def _budget(preset: dict, epochs: int | None, patience: int | None) -> dict:
    """A neural baseline's training budget: the preset's, with the command line's epochs and patience on top."""
    given = {"epochs": epochs, "patience": patience}
    return dict(preset, **{k: v for k, v in given.items() if v is not None})


def _fmt(res: dict) -> str:
    return " ".join(f"{m}={res[m]:.4f}" for m in ("recall@20", "recall@40", "ndcg@100"))


if __name__ == "__main__":
    main()
