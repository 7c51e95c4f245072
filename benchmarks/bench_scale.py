"""Scale benchmark (issue 8): full dataset-folder builds on synthetic power-law graphs, and the cost of a training
batch's bias inputs against a training step of the CPU preset; with ``--preset``, a whole preset run per size.

    python -m benchmarks.bench_scale --preset amazon_cpu --sizes 60000:50000:600000 --epochs 1 --threads 1 \
        --work /tmp/scale_preset --out benchmarks/results/scale_amazon_cpu.json

    OMP_NUM_THREADS=1 python -m benchmarks.bench_scale --sizes 20000:10000:200000 200000:100000:2000000 \
        --work /tmp/bench_scale --out benchmarks/results/scale.json

Each size runs in its own subprocess (so its peak RSS is its own): generate (``data_builders.powerlaw``), split
(5-core, seed 98765), build every prompt config with the GPT-2 tokenizer (``build_dataset_folder``: tokenizer,
graph, prompts, per-row ``pair_hops``, Parquet), then, in the same process, time on a batch of the CPU preset
(``train/configs/mi_cpu.yaml``: batch 32, max_length 128) (a) the bias inputs: the collator's ``hop_distances``
from the stored matrices, the same for re-masked fine-tuning prompts (``pair_nodes``), and for rows without stored
matrices (measured on the graph, both variants); (b) one fine-tuning training step (forward, backward, AdamW).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from data_builders.collate import MODEL_INPUT_KEYS, GraphCollator
from data_builders.corpus import Corpus
from data_builders.folder import build_dataset_folder
from data_builders.graph import HopDistances, InteractionGraph
from data_builders.pair_hops import attach_pair_hops, row_nodes
from data_builders.powerlaw import make_powerlaw
from data_builders.preprocess import build_split
from data_builders.readers import read_source
from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation
from modeling_graphgpt2.modeling_graphgpt2 import first_columns
from train.common import build_model, init_collab_items, make_optimizer, model_config_kwargs, set_threads, steps_per_epoch
from train.config import load_config
from train.evaluate import ModelScorer, rec_rows, score_batch
from train.finetune import masked_prompts, sweep_rows, train_target_lengths
from train.io_utils import atomic_write_json
from train.metrics import per_user_metrics

ROOT = Path(__file__).resolve().parents[1]


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _cpu_seconds() -> float:
    """User + system CPU time of this process: on a shared machine the wall time also counts other jobs."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run_size(users: int, items: int, edges: int, work: Path, seed: int, exponent: float, repeat: int) -> dict:


    res: dict = {"users": users, "items": items, "edges_requested": edges, "seed": seed, "exponent": exponent,
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    raw = make_powerlaw(users, items, edges, exponent=exponent, seed=seed)
    res["seconds_generate"] = time.perf_counter() - t0
    res["cpu_seconds_before_generate"] = cpu0  # imports
    t = time.perf_counter()
    split = build_split(raw, k_core=5, seed=98765)
    del raw
    res["seconds_split"] = time.perf_counter() - t
    res["split"] = {"users": split.num_users, "items": split.num_items, "train_edges": int(sum(len(a) for a in split.train))}
    out = work / f"pl_{users}_{items}_{edges}"
    t, cpu_build = time.perf_counter(), _cpu_seconds()
    built = build_dataset_folder(split, out, tokenizer_source=ROOT.parent / "shared" / "tokenizers" / "gpt2", overwrite=True)
    res["seconds_build_folder"] = time.perf_counter() - t
    res["cpu_seconds_build_folder"] = _cpu_seconds() - cpu_build
    res["seconds_total"] = time.perf_counter() - t0
    res["cpu_seconds_total"] = _cpu_seconds()
    res["build_stage_seconds"] = built.manifest["build_seconds"]
    res["rows"] = built.manifest["rows"]
    res["peak_rss_gib_build"] = _rss_gib()
    res["folder_bytes"] = _folder_bytes(out)
    del split

    # ---- bias inputs vs one training step, CPU preset (mi_cpu.yaml), one process ----

    cfg = load_config("mi_cpu")
    torch.manual_seed(0)
    corpus = Corpus(out)
    B, L = cfg.finetune.batch_size, cfg.data.max_length
    ds = corpus.dataset("recommendation", "train")
    rng = np.random.default_rng(0)
    pick = rng.choice(len(ds), size=B, replace=False)
    stored = [ds[int(k)] for k in pick]
    remasked, bare = [], []
    for r in stored:
        hist = np.asarray(r["history"])
        keep = rng.permutation(hist)[: max(1, int(0.8 * len(hist)))]
        ids, pos = corpus.encode_rec_prompt(r["user"], keep, L)
        row = {"input_ids": ids, "node_positions": pos, "labels": [-100] * len(ids), "targets": r["targets"]}
        bare.append(dict(row))
        remasked.append(row | {"pair_hops": np.asarray(r["pair_hops"], np.uint8), "pair_hops_luo": np.asarray(r["pair_hops_luo"], np.uint8),
                               "pair_nodes": row_nodes(r["node_positions"])[0]})
    so = corpus.dataset("second_order", "train") if "second_order" in corpus.configs else None
    so_rows = [so[int(k)] for k in rng.choice(len(so), size=min(B, len(so)), replace=False)] if so is not None else []
    so_bare = [{k: v for k, v in r.items() if not k.startswith("pair_hops")} for r in so_rows]
    timings = {}
    for luo in (False, True):
        collate = Corpus(out, leave_user_out=luo).collator(L)
        Lb = L
        tag = "luo" if luo else "full"
        timings[f"bias_remasked_stored_{tag}"] = median_seconds(lambda: collate._hops(remasked, Lb), repeat)
        timings[f"bias_remasked_graph_{tag}"] = median_seconds(lambda: collate._hops(bare, Lb), repeat)
        if so_rows:
            timings[f"bias_second_order_stored_{tag}"] = median_seconds(lambda: collate._hops(so_rows, Lb), repeat)
            timings[f"bias_second_order_graph_{tag}"] = median_seconds(lambda: collate._hops(so_bare, Lb), max(1, repeat // 3))
        timings[f"collate_all_remasked_stored_{tag}"] = median_seconds(lambda: collate(remasked), repeat)
    collate = corpus.collator(L)
    batch = collate(remasked)
    m = cfg.model
    model = GraphGPT2ForRecommendation(GraphGPT2Config(**model_config_kwargs(m, corpus)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step():
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"], hop_distances=batch["hop_distances"],
                    target_items=batch["target_items"], task="rec", reg_weight=m.mutual_reg_weight)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocations)
    timings["train_step"] = median_seconds(step, repeat)
    timings["batch"] = {"rows": B, "max_length": L, "longest_row": int(batch["input_ids"].shape[1])}
    res["timings_seconds"] = timings
    res["bias_over_step"] = {k: timings[k] / timings["train_step"] for k in timings if k.startswith("bias_")}
    res["peak_rss_gib_total"] = _rss_gib()
    return res


def dense_vs_stored(source: Path, repeat: int = 20) -> dict:
    """Milliseconds for the hops of 32 personalized prompts of a small graph (Musical Instruments): the old dense
    table lookup, the stored per-row matrices, and the per-row graph search, both variants."""

    split = build_split(read_source(source))
    g = InteractionGraph.from_split(split)
    U = g.num_users
    t = time.perf_counter()
    dense = HopDistances(g, 6, table_budget_bytes=1 << 30)
    res: dict = {"dense_table_build_s": time.perf_counter() - t, "dense_table_bytes": g.num_nodes**2}
    lazy = HopDistances(g, 6)
    rng = np.random.default_rng(0)
    rows = []
    for u in rng.choice(U, 32, replace=False):
        pos = np.concatenate([[u, -1, -1, -1], U + split.train[u], [-1, u, -1, -1, -1]])
        rows.append({"input_ids": np.zeros(len(pos), np.int64), "node_positions": pos})
    stored = [dict(r) for r in rows]
    attach_pair_hops(stored, g, 6)
    L = max(len(r["node_positions"]) for r in rows)
    pos = np.full((len(rows), L), -1)
    for k, r in enumerate(rows):
        pos[k, : len(r["node_positions"])] = r["node_positions"]
    for luo in (False, True):
        collate = GraphCollator(lazy, 0, leave_user_out=luo)

        def old():
            h = dense.pairwise(pos)
            return dense.leave_user_out(h, pos) if luo else h

        tag = "luo" if luo else "full"
        res[f"ms_dense_table_{tag}"] = 1e3 * median_seconds(old, repeat)
        res[f"ms_stored_{tag}"] = 1e3 * median_seconds(lambda: collate._hops(stored, L), repeat)
        res[f"ms_graph_{tag}"] = 1e3 * median_seconds(lambda: collate._hops(rows, L), repeat)
    return res


def _measured(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` (output to ``log``) under GNU time: wall seconds, peak RSS (GiB) and the exit status."""
    stats = log.with_suffix(".time")
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(stats), *cmd], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    kib, user, system = stats.read_text().split()[-3:]
    return {"command": " ".join(cmd), "returncode": proc.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(float(user) + float(system), 1), "peak_rss_gib": round(int(kib) / 1024**2, 3)}


def run_preset_size(users: int, items: int, edges: int, work: Path, seed: int, exponent: float, preset: str,
                    epochs: int, threads: int, build_only: bool = False) -> dict:
    """A power-law shop run as a user would: its atomic files (``python -m data_builders.powerlaw``), the README's
    build command, then ``graphgpt2-rec run --config <preset> data.folder=... finetune.epochs=<epochs>``. Each step
    is its own process (its own peak RSS); the run's stage times come from its result files."""
    tag = f"{users}_{items}_{edges}"
    raw, folder, out = work / f"raw_{tag}", work / f"folder_{tag}", work / f"run_{tag}"
    py = sys.executable
    steps = {
        "generate": [py, "-m", "data_builders.powerlaw", "--users", str(users), "--items", str(items), "--edges",
                     str(edges), "--exponent", str(exponent), "--seed", str(seed), "--out", str(raw)],
        "build": [py, "-m", "data_builders", "build", "--source", str(raw), "--out", str(folder), "--train-bpe", "4000",
                  "--max-length", "128"],
        "run": [py, "-m", "train.main", "run", "--config", preset, f"data.folder={folder}", f"output.dir={out}",
                f"finetune.epochs={epochs}", f"num_threads={threads}"],
    }
    if build_only:
        del steps["run"]
    res: dict = {"users": users, "items": items, "edges_requested": edges, "seed": seed, "exponent": exponent,
                 "preset": preset, "finetune_epochs": epochs, "num_threads": threads, "steps": {}}
    for name, cmd in steps.items():
        res["steps"][name] = _measured(cmd, work / f"{name}_{tag}.log")
        print(f"[scale] {tag} {name}: {res['steps'][name]}", flush=True)
        if res["steps"][name]["returncode"] != 0:
            return res

    corpus = Corpus(folder)
    res["split"] = {"users": corpus.num_users, "items": corpus.num_items, "train_edges": int(corpus.interaction_matrix("train").nnz)}
    res["rows"] = corpus.manifest["rows"]
    res["build_stage_seconds"] = corpus.manifest["build_seconds"]
    if build_only:
        return res
    pipeline = json.loads((out / "pipeline_result.json").read_text())
    finetune = json.loads((out / "finetune_result.json").read_text())
    res["run_wall_s"] = {k: round(v, 1) for k, v in pipeline["wall"].items()}
    res["finetune_steps"] = finetune["steps"]
    res["test"] = {k: pipeline["test"][k] for k in ("recall@20", "recall@40", "ndcg@100")}
    res["chosen_scales"] = {"ease": (pipeline.get("residual_scale_sweep") or {}).get("chosen"),
                            "lowpass": (pipeline.get("lowpass_scale_sweep") or {}).get("chosen")}
    res["popularity_test_recall@20"] = pipeline.get("popularity_test", {}).get("recall@20")
    return res


@contextlib.contextmanager
def fixed_terms_computed(model):
    """Inside the block the model computes its score terms while training even where their scale is fixed at 0 (what
    every step did before such terms were skipped): the same-process baseline of ``finetune_step_s``."""
    terms = [term for _, term in model.score_terms()]
    for term in terms:
        term.fixed_at_zero = lambda: False
    try:
        yield
    finally:
        for term in terms:
            del term.fixed_at_zero


def preset_stages(folder: Path, preset: str, threads: int, train_steps: int, eval_batches: int, result_path: Path,
                  overrides: tuple[str, ...] = ()) -> dict:
    """Every stage of ``preset`` on a built folder, in this process, where a whole run does not fit the session:
    the graph levers' fits and the item-text init in full, then ``train_steps`` fine-tuning steps and
    ``eval_batches`` evaluation batches (plain, and with the two residual-scale sweeps) timed and extrapolated to
    one epoch and to the whole validation and test splits (the result says which numbers are extrapolated). Each
    step runs twice, as shipped and with the score terms fixed at 0 computed anyway, and the optimizer step is timed
    on its own. ``overrides``: dotted run-config overrides (tests shrink the preset).
    The result is rewritten to ``result_path`` after every stage, so a run stopped part-way keeps what it measured."""


    cfg = load_config(preset, [f"data.folder={folder}", f"num_threads={threads}", *overrides])
    res: dict = {"folder": str(folder), "preset": preset, "torch_threads": set_threads(threads), "measured_s": {},
                 "extrapolated_s": {}}
    torch.manual_seed(cfg.seed)
    t = time.perf_counter()
    corpus = Corpus(folder)
    res["measured_s"]["open_folder"] = time.perf_counter() - t
    res["sizes"] = {"users": corpus.num_users, "items": corpus.num_items,
                    "train_edges": int(corpus.interaction_matrix("train").nnz)}
    atomic_write_json(result_path, res)
    t = time.perf_counter()
    fits: dict = {}
    model = build_model(cfg, corpus, fits)
    res["measured_s"].update(fits)
    res["measured_s"]["model_total"] = time.perf_counter() - t
    res["peak_rss_gib_after_fits"] = _rss_gib()
    atomic_write_json(result_path, res)
    t = time.perf_counter()
    res["text_init"] = init_collab_items(model, corpus, cfg.finetune.init_collab_items, cfg.seed)
    res["measured_s"]["text_init"] = time.perf_counter() - t
    res["peak_rss_gib_after_text_init"] = _rss_gib()
    atomic_write_json(result_path, res)

    f, bs = cfg.finetune, cfg.finetune.batch_size
    num_train = corpus.num_rows("recommendation", "train")
    examples = corpus.rec_examples("train", range(min(num_train, (train_steps + 2) * bs)))
    rows = masked_prompts(corpus, examples, f.mask_fraction, cfg.seed, 0, cfg.data.max_length, train_target_lengths(corpus),
                          f.visible_target_weight)
    collate = corpus.collator(cfg.data.max_length)
    optimizer = make_optimizer(model, f)
    model.train()

    optimizer_s, updated = [], []

    def train_step(batch) -> float:
        t = time.perf_counter()
        out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}, target_items=batch["target_items"],
                    task="rec", reg_weight=cfg.model.mutual_reg_weight)
        out.loss.backward()
        updated.append(sum(p.numel() for p in model.parameters() if p.grad is not None))
        t_opt = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        optimizer_s.append(time.perf_counter() - t_opt)
        return time.perf_counter() - t

    times, with_terms = [], []  # each batch twice: as shipped, then with the fixed-at-0 score terms computed anyway
    for step in range(min(train_steps + 2, len(rows) // bs)):
        t = time.perf_counter()
        batch = collate(rows[step * bs:(step + 1) * bs])
        collate_s = time.perf_counter() - t
        times.append(collate_s + train_step(batch))
        with fixed_terms_computed(model):
            with_terms.append(collate_s + train_step(batch))
    step_s = float(np.median(times[2:] or times))  # the first steps allocate
    epoch_steps = steps_per_epoch(num_train, bs, 1)
    res["finetune_step_s"] = {"median": step_s, "timed_steps": len(times[2:] or times), "steps_per_epoch": epoch_steps,
                              # AdamW's update of every parameter with a gradient (the ID tables are most of them)
                              "median_optimizer_step": float(np.median(optimizer_s[4:] or optimizer_s)),
                              "parameters_with_a_gradient": int(max(updated)),
                              "median_with_fixed_terms_computed": float(np.median(with_terms[2:] or with_terms)),
                              "median_ratio_computed_to_skipped": float(np.median(
                                  np.array(with_terms[2:] or with_terms) / np.array(times[2:] or times)))}
    res["extrapolated_s"]["finetune_epoch"] = step_s * epoch_steps
    res["peak_rss_gib_after_steps"] = _rss_gib()
    atomic_write_json(result_path, res)

    model.eval()
    grids = (f.residual_scale_grid, f.lowpass_scale_grid)
    ebs = cfg.eval.batch_size
    train_ui = corpus.hops.graph.ui
    per_batch = {"plain": [], "sweep": []}
    ranks = f.lowpass_rank_grid
    lowpass_scorer = ModelScorer(Accelerator(cpu=True), model, corpus, cfg, grids[1], "graph_lowpass",
                                 [first_columns(model.graph_lowpass.basis, r) for r in ranks] or None)
    # evaluation reads 64 batches at a time sorted by prompt length (train.evaluate.length_sorted): time batches
    # spread evenly over such a sorted chunk, so their padding is what evaluation's is
    chunk = sorted(next(corpus.iter_rec_examples("test", range(min(corpus.num_rows("recommendation", "test"), 64 * ebs)),
                                                 chunk_rows=64 * ebs)), key=lambda ex: len(ex.input_ids))
    starts = np.linspace(0, max(0, len(chunk) - ebs), eval_batches).astype(int)
    for part in (chunk[start:start + ebs] for start in starts):
        batch = collate(rec_rows(corpus, part, cfg.data.max_length))
        relevant = [np.asarray(ex.targets, dtype=np.int64) for ex in part]
        exclude = train_ui[np.asarray([ex.user for ex in part], dtype=np.int64)]
        t = time.perf_counter()
        for scores in score_batch(model, batch):
            per_user_metrics(scores.numpy(), relevant, exclude, cfg.eval.recall_ks, cfg.eval.ndcg_ks)
        per_batch["plain"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for scores in score_batch(model, batch, grids[0], "graph_residual"):
            per_user_metrics(scores.numpy(), relevant, exclude, cfg.eval.recall_ks, cfg.eval.ndcg_ks)
        # the low-pass sweep at every rank of finetune.lowpass_rank_grid from one forward, as choose_residual_scale does
        for scores in lowpass_scorer.score_users(part):
            per_user_metrics(scores, relevant, exclude, cfg.eval.recall_ks, cfg.eval.ndcg_ks)
        per_batch["sweep"].append(time.perf_counter() - t)
    plain, sweep = float(np.median(per_batch["plain"])), float(np.median(per_batch["sweep"]))
    val_batches = -(-corpus.num_rows("recommendation", "validation") // ebs)
    test_batches = -(-corpus.num_rows("recommendation", "test") // ebs)
    res["eval_batch_s"] = {"plain": plain, "both_sweeps": sweep, "timed_batches": len(per_batch["plain"]), "batch_size": ebs}
    # the sweeps score finetune.sweep_max_users sampled users when validation has more; then one full pass
    sample = sweep_rows(corpus, cfg)
    sweep_batches = val_batches if sample is None else -(-len(sample) // ebs)
    res["sweep_users"] = corpus.num_rows("recommendation", "validation") if sample is None else len(sample)
    res["extrapolated_s"].update({"validation_pass_per_epoch": plain * val_batches,
                                  "residual_sweeps": sweep * sweep_batches + (0 if sample is None else plain * val_batches),
                                  "test": plain * test_batches})
    res["peak_rss_gib"] = _rss_gib()
    atomic_write_json(result_path, res)
    return res


def check_folder(folder: Path, batch: int = 256, epochs: int = 1) -> dict:
    """Every stored row's bias input equals the old dense-table lookup (so a same-seed run sees the same bias):
    all rows of every config and split through the collator, plus ``epochs`` epochs of re-masked fine-tuning
    prompts (``pair_nodes`` into the full-history matrix). Returns rows checked and mismatches per config."""

    corpus = Corpus(folder)
    t = time.perf_counter()
    graph = corpus.hops.graph
    dense = HopDistances(graph, corpus.max_hops, table_budget_bytes=graph.num_nodes**2)
    res: dict = {"folder": str(folder), "nodes": graph.num_nodes, "dense_table_build_s": round(time.perf_counter() - t, 1),
                 "configs": {}}
    collate = corpus.collator(corpus.prompt_max_length)

    def compare(rows: list[dict]) -> tuple[int, int]:
        stored = collate._hops(rows, max(len(r["node_positions"]) for r in rows))
        pos = np.full(stored.shape[:2], -1, dtype=np.int64)
        for b, r in enumerate(rows):
            p = np.asarray(r["node_positions"], dtype=np.int64)[-corpus.prompt_max_length:]
            pos[b, : len(p)] = p
        return len(rows), int((dense.pairwise(pos) != stored).any(axis=(1, 2)).sum())

    for config in corpus.configs:
        for split in ("train", "validation", "test"):
            if config != "recommendation" and split != "train" or not corpus.num_rows(config, split):
                continue
            ds = corpus.dataset(config, split)
            checked = bad = 0
            for start in range(0, len(ds), batch):
                n, b = compare([dict(r) for r in ds.select(range(start, min(len(ds), start + batch)))])
                checked, bad = checked + n, bad + b
            res["configs"][f"{config} {split}"] = {"rows": checked, "mismatched_rows": bad}
    examples = corpus.rec_examples("train")
    for epoch in range(epochs):
        rows = masked_prompts(corpus, examples, 0.2, 0, epoch, corpus.prompt_max_length)
        checked = bad = 0
        for start in range(0, len(rows), batch):
            n, b = compare(rows[start:start + batch])
            checked, bad = checked + n, bad + b
        res["configs"][f"recommendation train re-masked epoch {epoch}"] = {"rows": checked, "mismatched_rows": bad}
    res["seconds"] = round(time.perf_counter() - t, 1)
    return res


def plot(results: list[dict], path: Path) -> Path:
    """Build CPU seconds and peak RSS against train edges (log-log), one point per measured size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = sorted(results, key=lambda r: r["split"]["train_edges"])
    edges = [r["split"]["train_edges"] for r in results]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].loglog(edges, [r.get("cpu_seconds_total", r["seconds_total"]) for r in results], "o-", label="CPU s")
    ax[0].loglog(edges, [r["seconds_total"] for r in results], "s--", label="wall s (shared machine)")
    ax[0].set_xlabel("train edges"), ax[0].set_ylabel("seconds"), ax[0].legend(), ax[0].set_title("full build")
    ax[1].loglog(edges, [r["peak_rss_gib_build"] for r in results], "o-")
    ax[1].set_xlabel("train edges"), ax[1].set_ylabel("GiB"), ax[1].set_title("peak RSS of the build")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


GROWTH_STAGES = (("build", "build (CPU s)"), ("graph_residual_fit_s", "EASE residual fit"),
                 ("graph_lowpass_fit_s", "low-pass fit"), ("text_init", "item-text init"),
                 ("finetune_epoch", "1 fine-tuning epoch*"), ("residual_sweeps", "both residual sweeps*"),
                 ("test", "test evaluation*"))


def growth_rows(builds: list[dict], stages: list[dict]) -> list[dict]:
    """One row per size: its build (``--preset --build-only`` result) joined with its ``--stages`` result by the
    number of train edges; stage seconds, extrapolated ones marked by the plot's legend (*)."""
    by_edges = {r["sizes"]["train_edges"]: r for r in stages}
    rows = []
    for b in sorted(builds, key=lambda r: r["split"]["train_edges"]):
        st = by_edges.get(b["split"]["train_edges"], {})
        seconds = {"build": b["steps"]["build"]["cpu_s"], **st.get("measured_s", {}), **st.get("extrapolated_s", {})}
        rows.append({"train_edges": b["split"]["train_edges"], "users": b["split"]["users"], "items": b["split"]["items"],
                     "seconds": {k: seconds[k] for k, _ in GROWTH_STAGES if k in seconds},
                     "peak_rss_gib": {"build": b["steps"]["build"]["peak_rss_gib"], "stages": st.get("peak_rss_gib",
                                      st.get("peak_rss_gib_after_fits"))}})
    return rows


def plot_growth(rows: list[dict], path: Path) -> Path:
    """Time per stage and peak RSS against train edges (log-log), one point per size that measured the stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in GROWTH_STAGES:
        pts = [(r["train_edges"], r["seconds"][key]) for r in rows if key in r["seconds"]]
        if pts:
            ax[0].loglog(*zip(*pts), "o-", label=label)
    ax[0].set_xlabel("train edges"), ax[0].set_ylabel("seconds (one thread; * extrapolated)")
    ax[0].legend(fontsize=7), ax[0].set_title("amazon_cpu per stage")
    for key in ("build", "stages"):
        pts = [(r["train_edges"], r["peak_rss_gib"][key]) for r in rows if r["peak_rss_gib"][key] is not None]
        if pts:
            ax[1].loglog(*zip(*pts), "o-", label=key)
    ax[1].set_xlabel("train edges"), ax[1].set_ylabel("GiB"), ax[1].legend(), ax[1].set_title("peak RSS")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["20000:10000:200000", "200000:100000:2000000"], help="users:items:edges")
    p.add_argument("--work", default="/tmp/bench_scale", help="where the dataset folders are built")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exponent", type=float, default=0.9)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="instead: run each size as a user would (atomic files, build, `run --config NAME`), per-step "
                        "wall time and peak RSS")
    p.add_argument("--epochs", type=int, default=1, help="with --preset: finetune.epochs")
    p.add_argument("--threads", type=int, default=0, help="with --preset: num_threads of the run (0 = all cores)")
    p.add_argument("--build-only", action="store_true", help="with --preset: the atomic files and the build, no run")
    p.add_argument("--stages", default=None, metavar="DATASET_FOLDER",
                   help="instead: time every stage of --preset on a built folder in one process (fits and text init in "
                        "full; --train-steps steps and --eval-batches batches timed and extrapolated)")
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one size in this process
    p.add_argument("--dense-vs-stored", default=None, metavar="RAW_SOURCE",
                   help="instead: time dense table vs stored vs graph hops on a small source (e.g. Musical Instruments)")
    p.add_argument("--check-folder", default=None, metavar="DATASET_FOLDER",
                   help="instead: check every stored row's hops against the dense-table lookup (same-seed inputs)")
    p.add_argument("--plot", nargs="+", default=None, metavar="RESULTS_JSON", help="instead: plot these result files")
    p.add_argument("--growth", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="instead: join --build-only and --stages result files by size into a growth table (--out) and plot")
    args = p.parse_args(argv)
    if args.growth:
        loaded = [json.loads(Path(f).read_text()) for f in args.growth]
        builds = [r for d in loaded if isinstance(d, list) for r in d]
        rows = growth_rows(builds, [d for d in loaded if isinstance(d, dict)])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, rows)
        print(json.dumps(rows, indent=1))
        print(plot_growth(rows, Path(args.out).with_suffix(".png")))
        return 0
    if args.plot:
        results = [r for f in args.plot for r in json.loads(Path(f).read_text())]
        print(plot(results, Path(args.out).with_suffix(".png")))
        return 0
    if args.check_folder:
        res = check_folder(Path(args.check_folder))
        print(json.dumps(res, indent=1))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
        return 0 if not any(c["mismatched_rows"] for c in res["configs"].values()) else 1
    if args.dense_vs_stored:
        print(json.dumps(dense_vs_stored(Path(args.dense_vs_stored)), indent=1))
        return 0
    if args.stages:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        res = preset_stages(Path(args.stages), args.preset or "amazon_cpu", args.threads, args.train_steps, args.eval_batches,
                            Path(args.out))
        print(json.dumps(res, indent=1))
        return 0
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.preset:
        results = []
        for size in args.sizes:
            u, i, e = (int(x) for x in size.split(":"))
            results.append(run_preset_size(u, i, e, work, args.seed, args.exponent, args.preset, args.epochs, args.threads,
                                           args.build_only))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
            print(json.dumps(results[-1], indent=1), flush=True)
        return 0 if all(s["returncode"] == 0 for r in results for s in r["steps"].values()) else 1
    if args.one:
        u, i, e = (int(x) for x in args.one.split(":"))
        print(json.dumps(run_size(u, i, e, work, args.seed, args.exponent, args.repeat)))
        return 0
    results = []
    for size in args.sizes:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_scale", "--one", size, "--work", str(work), "--seed", str(args.seed),
                               "--exponent", str(args.exponent), "--repeat", str(args.repeat)], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-4000:], file=sys.stderr)
            return proc.returncode
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["wall_seconds_subprocess"] = time.perf_counter() - t
        results.append(res)
        print(json.dumps(res, indent=1), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
