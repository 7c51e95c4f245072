"""Pieces shared by the pre-training and fine-tuning loops: model construction, optimiser, schedule, Accelerator."""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader

from data_builders.corpus import Corpus, shard_rows
from data_builders.item_graph import (edge_buckets, graph_svd_vectors, ideal_lowpass_basis, normalized_adjacency,
                                     residual_matrix)
from data_builders.item_text import item_token_counts, text_svd_vectors
from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation
from train.config import ModelConfig, RunConfig, StageConfig, model_config_fields


TORCH_DEFAULT_THREADS = torch.get_num_threads()  # before any set_threads call of this process


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a container's --cpus)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def set_threads(num_threads: int) -> str:
    """Set torch's intra-op threads and say how they were chosen: ``num_threads`` when > 0, else (auto) torch's
    default capped at the cores this process may use, shared by the launch's local processes. Auto does not follow
    the machine's load, so reruns keep their thread count (and their numbers); when other work keeps cores busy the
    message says so: more threads than free cores make every step wait on the others (a demo step took 2.5 s with
    two threads beside another job and 0.27 s with one), and ``num_threads=1`` is then faster."""
    if os.environ.get("OMP_NUM_THREADS"):
        return f"{torch.get_num_threads()} (OMP_NUM_THREADS)"
    if num_threads > 0:
        torch.set_num_threads(num_threads)
        return f"{num_threads} (num_threads)"
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    cores = usable_cores()
    chosen = max(1, min(TORCH_DEFAULT_THREADS, cores // local))
    torch.set_num_threads(chosen)
    text = f"{chosen} (auto: {cores} usable cores, {local} local process{'es' if local > 1 else ''})"
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if chosen > 1 and busy + chosen > cores + 0.5:
        text += f"; the machine is busy (load {busy:.1f}): num_threads=1 may be faster"
    return text


def make_accelerator(cfg: RunConfig, project_dir: str | Path):
    """One Accelerator per stage (each stage registers its own model/optimizer for save_state)."""

    set_threads(cfg.num_threads)
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        project_config=ProjectConfiguration(project_dir=str(project_dir)),
        # each task uses one ID-embedding set only (content or collab), so DDP must allow unused parameters
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def model_config_kwargs(m: ModelConfig, corpus: Corpus) -> dict:
    """GraphGPT2Config kwargs from the run config's model section and the dataset folder's counts and hop cap."""
    corpus.check_max_hops(m.max_hops, "model.max_hops")  # fixed when the folder was built: compared, not passed in
    kw = dict(model_config_fields(m), num_users=corpus.num_users, num_items=corpus.num_items,
              base_vocab_size=corpus.base_vocab_size, max_hops=corpus.max_hops)
    if m.id_propagation_layers > 0:  # sizes the stored train adjacency
        kw["graph_train_edges"] = int(corpus.interaction_matrix("train").nnz)
    pad = getattr(corpus.tokenizer, "pad_token_id", None)
    eos = getattr(corpus.tokenizer, "eos_token_id", None)
    if eos is not None and eos < corpus.base_vocab_size:
        kw.update(bos_token_id=eos, eos_token_id=eos)
    if pad is not None and pad < corpus.base_vocab_size:
        kw.update(pad_token_id=pad)
    return kw


# How each graph lever's tables are fitted on the TRAIN interactions (X, users x items, CSR), in the order of its
# `tables` (modeling_graphgpt2 GRAPH_LEVERS; the formulas live in data_builders/item_graph.py)
LEVER_TABLES = {
    "graph_residual": lambda x, conf: residual_matrix(
        x, conf.graph_residual, conf.graph_residual_topn, conf.graph_residual_lambda,
        conf.graph_residual_exact_max_items, conf.graph_residual_neighbours),
    "graph_lowpass": lambda x, conf: ideal_lowpass_basis(x, conf.graph_lowpass_rank),
    "id_propagation": lambda x, conf: normalized_adjacency(x),
    "edge_tables": lambda x, conf: edge_buckets(x, conf.graph_edge_topn),
}


def build_model(cfg: RunConfig, corpus: Corpus, fit_seconds: dict | None = None):
    """A fresh GraphGPT2ForRecommendation sized for ``corpus`` (backbone from ``model.init_from`` when set).
    ``fit_seconds``, when given, receives the wall seconds of each graph lever's fit (``graph_residual_fit_s``, ...)."""

    if cfg.model.init_from:
        kw = model_config_kwargs(cfg.model, corpus)
        for key in ("n_layer", "n_embd", "n_head", "n_positions", "base_vocab_size", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
            kw.pop(key, None)  # the GPT-2 checkpoint's own architecture wins
        model = GraphGPT2ForRecommendation.from_gpt2_checkpoint(cfg.model.init_from, **kw)
        if model.config.base_vocab_size != corpus.base_vocab_size:
            raise ValueError(f"model.init_from={cfg.model.init_from} has a text vocabulary of {model.config.base_vocab_size} "
                             f"but the dataset folder's tokenizer has {corpus.base_vocab_size}")
    else:
        model = GraphGPT2ForRecommendation(GraphGPT2Config(**model_config_kwargs(cfg.model, corpus)))
    # the graph levers' tables are fitted on the TRAIN interactions only: no validation/test pair enters them
    conf, train = model.config, corpus.interaction_matrix("train")
    for name, lever in model.levers():
        if name not in LEVER_TABLES:  # fitted on the trained rows after fine-tuning (the cold-item map)
            continue
        t0 = time.time()
        lever.set_tables(*LEVER_TABLES[name](train, conf))
        if fit_seconds is not None:
            fit_seconds[f"{name}_fit_s"] = time.time() - t0
    # fingerprints of the data the ID rows belong to; checked when the model meets a dataset folder again
    model.config.tokenizer_sha256 = corpus.tokenizer_sha256
    model.config.graph_sha256 = corpus.graph_sha256
    model.config.files_sha256 = corpus.files_sha256
    return model


@torch.no_grad()
def init_collab_items(model: torch.nn.Module, corpus: Corpus, how: str, seed: int = 0) -> str:
    """Put content into the collab item IDs before fine-tuning (``finetune.init_collab_items``):
    - "text_svd": both item tables start from the item text's TF-IDF SVD (``data_builders.item_text``), scaled to
      the model's init std; the mutual regulariser then keeps each collab row near its text vector. Items without
      text keep their random rows. A dataset folder without item text (no "content" config, e.g. Toys 2014, which
      ships no metadata) keeps every row random, with a warning: a preset with this option still runs there.
    - "graph_svd": both item tables start from the items' coordinates on the top singular directions of the
      normalised TRAIN interaction matrix (``data_builders.item_graph.graph_svd_vectors``, the directions of the
      low-pass residual), scaled to the model's init std: the collaborative counterpart of "text_svd".
    - "text_or_graph_svd": "text_svd" where the folder has item text, else "graph_svd" (the main preset: Beauty's
      validation preferred the text to the graph and to half of each, Toys ships no text; RESULTS.md).
    - "content_set": the collab item table starts as a copy of the content item table (after content pre-training).
    - "none": nothing changes.
    Returns what was done (e.g. "text_svd: N items", "text_svd: no item text", "graph_svd: N items"), for the run's
    result file."""
    if how == "none":
        return how
    content, collab = model.id_embeddings("content").item.weight, model.id_embeddings("collab").item.weight
    if how == "content_set":
        collab.copy_(content)
        return how
    if how in ("text_svd", "text_or_graph_svd"):
        text, has_text = item_text_vectors(corpus, collab.shape[1], seed, how)
        if text is not None:
            set_item_rows(model, text, np.flatnonzero(has_text))
            return f"text_svd: {int(has_text.sum())} items"
        if how == "text_svd":
            return "text_svd: no item text"
    graph = graph_svd_vectors(corpus.interaction_matrix("train"), collab.shape[1], seed)
    set_item_rows(model, graph, np.arange(len(graph)))
    return f"graph_svd: {len(graph)} items"


def item_text_vectors(corpus: Corpus, width: int, seed: int, how: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The items' text SVD vectors (num_items, width) and which items have text; (None, None), with a warning, where
    the folder has no item text."""
    if "content" in corpus.configs:
        vectors = text_svd_vectors(item_token_counts(corpus), width, seed)
        has_text = np.abs(vectors).sum(axis=1) > 0
        if has_text.any():
            return vectors, has_text
    fallback = "the item IDs start random" if how == "text_svd" else "they start from the graph (graph_svd)"
    warnings.warn(f"finetune.init_collab_items={how}: {corpus.folder} has no item text; {fallback}", stacklevel=3)
    return None, None


def set_item_rows(model: torch.nn.Module, vectors: np.ndarray, rows: np.ndarray) -> None:
    """Write ``vectors[rows]``, scaled to the model's init std over those rows, into both item tables."""
    kept = vectors[rows]
    kept = kept * (model.config.initializer_range / max(float(kept.std()), 1e-12))
    for name in ("content", "collab"):
        table = model.id_embeddings(name).item.weight
        table[torch.from_numpy(rows)] = torch.from_numpy(kept).to(table.dtype)


def data_fingerprint(corpus: Corpus) -> dict:
    """The hashes that identify a dataset folder's split, graph and tokenizer (stored in every checkpoint; a
    resume on a folder with other hashes is refused before training)."""
    return {"split_hash": corpus.split_hash, "graph_sha256": corpus.graph_sha256,
            "tokenizer_sha256": corpus.tokenizer_sha256}


def make_optimizer(model: torch.nn.Module, stage: StageConfig) -> torch.optim.Optimizer:
    """AdamW with the model's own parameter groups (ID embeddings at lr_id; backbone at lr_backbone, decayed
    matrices vs the rest); a LoRA (PEFT) model asks its base model."""
    net = model.get_base_model() if hasattr(model, "get_base_model") else model
    return net.configure_optimizers(stage.lr_id, stage.lr_backbone, stage.weight_decay)


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up over ``warmup_ratio * total_steps`` steps, then linear decay to 0 at ``total_steps``."""
    total = max(1, total_steps)
    warm = int(math.ceil(warmup_ratio * total)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(num_rows: int, batch_size: int, num_processes: int) -> int:
    """Optimizer steps per process for one pass: every rank runs as many batches as the largest shard
    (:func:`rank_rows`) needs (:func:`rank_loader` pads a shorter one)."""
    return math.ceil(math.ceil(num_rows / num_processes) / batch_size)


def rank_rows(accelerator, num_rows: int) -> range:
    """The rows this process reads: its contiguous shard (the whole range with one process)."""
    return shard_rows(num_rows, accelerator.process_index, accelerator.num_processes)


def shard_order(order: np.ndarray, rows: range) -> np.ndarray:
    """The global epoch order restricted to ``rows``, as positions within them: a rank visits its rows in the
    order the one-process run would (the one-process run is unchanged)."""
    order = np.asarray(order)
    return order[(order >= rows.start) & (order < rows.stop)] - rows.start


def rank_loader(accelerator, rows: list, batch_size: int, collate_fn, num_batches: int):
    """Batches over this rank's own rows (already its shard: no second split), moved to the device.

    DDP needs every rank to run ``num_batches`` steps; a shard one row shorter than the largest repeats its
    first row(s) to reach them (as Accelerate's ``even_batches`` pads).
    """

    if num_batches and not rows:
        raise ValueError(f"process {accelerator.process_index} of {accelerator.num_processes} got no rows: "
                         "fewer rows than processes")
    short = max(0, (num_batches - 1) * batch_size + 1 - len(rows))
    rows = list(rows) + [rows[k % len(rows)] for k in range(short)]
    dl = DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    return prepare_data_loader(dl, device=accelerator.device, num_processes=1, process_index=0, put_on_device=True)


def apply_lora(model: torch.nn.Module, r: int, alpha: int, base_dir: str | Path, is_main_process: bool = True):
    """Wrap the backbone's c_attn/c_proj/c_fc in LoRA adapters; ID embeddings (and graph-bias parameters) are
    trained in full (``modules_to_save``). The un-adapted model is saved to ``base_dir`` first (unless it is
    already a saved folder) and recorded as the adapter's base, so ``PeftModel.from_pretrained`` can reload it."""

    base_dir = Path(base_dir)
    if is_main_process and not (base_dir / "config.json").is_file():
        model.save_pretrained(str(base_dir))
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,
        lora_dropout=0.0,
        bias="none",
        task_type=None,
        modules_to_save=model.peft_modules_to_save(),
    )
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = str(base_dir.resolve())
    return peft_model


def seed_everything(seed: int) -> None:

    set_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def freeze_backbone(model: torch.nn.Module) -> None:
    """CLLM4Rec mode: only ID embeddings (and graph-bias parameters) train."""
    model.set_backbone_trainable(False)
