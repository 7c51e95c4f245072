"""New products (issue "New products"): the main preset's cold-item scorer against the cold-start baselines, on the
"new arrivals" shelf of a dataset folder built with ``--cold-item-frac`` (train/cold_items.py).

    python -m data_builders build --source ../shared/data/amazon-beauty-2014 --out outputs/cold/beauty \
        --train-bpe 4000 --max-length 128 --prompts content,second_order,interactions,recommendation --cold-item-frac 0.2
    graphgpt2-rec run --config amazon_cpu data.folder=outputs/cold/beauty output.dir=outputs/cold/beauty_s0 seed=0
    python -m benchmarks.cold_items outputs/cold/beauty_s0 outputs/cold/beauty_s1 outputs/cold/beauty_s2 \
        --source ../shared/data/amazon-beauty-2014 --out benchmarks/results/Beauty/beauty_cold_items.json

Rows, each on the validation and the test shelf (each user with a cold target ranks that split's cold items only):
- the preset (``amazon_cpu``): the run's saved model (``<run>/best``, its text map and term chosen on validation
  inside the run) on the test shelf and the whole shop (``train.cold_items.cold_item_metrics``), with the run's
  own validation shelf;
- random (seeded by the run's seed);
- category popularity: a cold item scores the train interactions of the warm items in its leaf category (item
  metadata from ``--source``; an item without a category scores 0);
- content kNN, mean and max: the TF-IDF cosine (``data_builders.item_text.tfidf_rows``, item text only) between
  the cold item and each item of the user's train history, averaged or maximised.
The baselines are deterministic (random apart), so they are computed once per folder; the preset has one row per run.

``--refit`` first runs the cold-item stage of the current code (``train.cold_items.fit_cold_item_map``, with the
current defaults of the ``finetune.cold_*`` grids and the run's model config plus the current preset's
``model.cold_item_neighbours``) on each run's saved fine-tuned model, as a run of the current code would after
fine-tuning (fine-tuning never reads this lever: the lever's tables are 0 until then), chosen on validation again;
the report keeps what it chose.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from accelerate import Accelerator

from data_builders.corpus import Corpus
from data_builders.item_text import item_token_counts, tfidf_rows
from data_builders.readers import read_source
from train.cold_items import cold_item_metrics, fit_cold_item_map, shelf_metrics
from train.config import FinetuneConfig, load_config
from train.io_utils import atomic_write_json
from train.modeling_io import load_model

SPLITS = ("validation", "test")
BASELINES = ("random", "category_popularity", "content_knn_mean", "content_knn_max")


def shelf_users(corpus: Corpus, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """The split's users with a cold target, and their cold targets."""
    cold = set(corpus.cold_items(split).tolist())
    cols = corpus.dataset("recommendation", split, columns=["user", "targets"]).to_dict()
    users, targets = [], []
    for u, t in zip(cols["user"], cols["targets"]):
        mine = np.asarray([j for j in t if j in cold], dtype=np.int64)
        if len(mine):
            users.append(u)
            targets.append(mine)
    return np.asarray(users, dtype=np.int64), targets


def category_popularity(corpus: Corpus, source: str) -> np.ndarray:
    """(I,) per item: the train interactions of the warm items in its leaf category."""
    meta = read_source(source).items
    leaf = [(meta[i].categories[-1] if i in meta and meta[i].categories else None) for i in corpus.item_ids]
    counts = np.asarray(corpus.hops.graph.ui.sum(axis=0)).ravel()
    total: dict = {}
    for j, c in enumerate(leaf):
        if c is not None:
            total[c] = total.get(c, 0.0) + counts[j]
    return np.asarray([total.get(c, 0.0) if c is not None else 0.0 for c in leaf])


def content_knn(tfidf: sp.csr_matrix, history: sp.csr_matrix, candidates: np.ndarray, how: str) -> np.ndarray:
    """(users, candidates) TF-IDF cosine of each candidate to the users' train items, "mean" or "max"."""
    sims = (tfidf @ tfidf[candidates].T).tocsc()  # (I, C): cosine of every item to each candidate
    if how == "mean":
        sizes = np.maximum(np.asarray(history.sum(axis=1)).ravel(), 1.0)
        return np.asarray((history @ sims).todense()) / sizes[:, None]
    dense = sims.toarray()
    return np.stack([dense[history.indices[history.indptr[u]:history.indptr[u + 1]]].max(axis=0, initial=0.0)
                     for u in range(history.shape[0])])


def baseline_rows(corpus: Corpus, source: str, seed: int, ks, ndcg_ks) -> dict:
    """{baseline: {split: shelf metrics}}."""
    tfidf = tfidf_rows(item_token_counts(corpus))
    popularity = category_popularity(corpus, source)
    out: dict = {name: {} for name in BASELINES}
    for split in SPLITS:
        users, targets = shelf_users(corpus, split)
        candidates = corpus.cold_items(split)
        history = corpus.hops.graph.ui[users]
        scores = {
            "random": np.random.default_rng(seed).random((len(users), len(candidates))),
            "category_popularity": np.broadcast_to(popularity[candidates], (len(users), len(candidates))),
            "content_knn_mean": content_knn(tfidf, history, candidates, "mean"),
            "content_knn_max": content_knn(tfidf, history, candidates, "max"),
        }
        for name in BASELINES:
            out[name][split] = shelf_metrics(scores[name], candidates, targets, ks, ndcg_ks)
    return out


def current_cold_stage(cfg, model):
    """The run's config with the current cold-item settings, and its fine-tuned model rebuilt with them (the saved
    weights loaded, the new lever tables at 0 until the fit)."""
    preset, defaults = load_config("amazon_cpu"), FinetuneConfig()
    cfg.model.cold_item_neighbours = preset.model.cold_item_neighbours
    for name in ("cold_map_alpha_grid", "cold_item_text_scale_grid", "cold_item_transfer_grid",
                 "cold_item_neighbour_power_grid", "cold_item_gain_grid",
                 "cold_item_offset_grid", "cold_item_warm_tolerance"):
        setattr(cfg.finetune, name, getattr(defaults, name))
    config = model.config
    config.cold_item_neighbours = cfg.model.cold_item_neighbours
    rebuilt = type(model)(config)
    state = model.state_dict()
    missing, unexpected = rebuilt.load_state_dict(state, strict=False)
    if unexpected or any("cold_item_map" not in k for k in missing):
        raise ValueError(f"the saved model does not fit the current cold-item lever: {missing} {unexpected}")
    return cfg, rebuilt.eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cold_items", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="amazon_cpu run folders on the same cold-item dataset folder")
    ap.add_argument("--source", required=True, help="the raw data the folder was built from (item categories)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--refit", action="store_true", help="re-run the cold-item stage of the current code first")
    args = ap.parse_args(argv)
    runs = []
    accelerator = Accelerator(cpu=True)
    for run in map(Path, args.runs):
        cfg = load_config(run / "run_config.yaml")
        result = json.loads((run / "finetune_result.json").read_text())
        model = load_model(run / "best")
        cold_map = result["cold_item_map"]
        if args.refit:
            cfg, model = current_cold_stage(cfg, model)
            cold_map = fit_cold_item_map(accelerator, model, Corpus(cfg.data.folder), cfg)
        cold_test = cold_item_metrics(accelerator, model, Corpus(cfg.data.folder), "test", cfg)
        runs.append({"run": str(run), "seed": cfg.seed, "folder": cfg.data.folder, "cold_item_map": cold_map,
                     "refit": args.refit, "test": result["test"], "cold_items_test": cold_test})
    folders = {r["folder"] for r in runs}
    if len(folders) != 1:
        sys.exit(f"error: the runs use {len(folders)} dataset folders {sorted(folders)}; give runs of one folder")
    corpus = Corpus(folders.pop())
    baselines = {r["seed"]: baseline_rows(corpus, args.source, r["seed"], cfg.eval.recall_ks, cfg.eval.ndcg_ks)
                 for r in runs}
    atomic_write_json(args.out, {"folder": str(corpus.folder), "source": args.source,
                                 "cold_items": {s: int(len(corpus.cold_items(s))) for s in SPLITS},
                                 "runs": runs, "baselines_by_seed": baselines})
    metric = "recall@20"
    for name in BASELINES:
        vals = [b[name]["test"][metric] for b in baselines.values()]
        print(f"{name:22s} test shelf {metric} {np.mean(vals):.4f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.4f}")
    for name in ("shelf", "shop_warm", "catalog_warm"):
        vals = [r["cold_items_test"][name][metric] for r in runs]
        print(f"{'amazon_cpu ' + name:22s} test {metric} {np.mean(vals):.4f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
