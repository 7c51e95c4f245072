"""New products (docs/model.md "New items"): items without a single train interaction, scored from their text.

A dataset folder built with ``--cold-item-frac`` holds cold items out whole (``data_builders.preprocess``): their
collab rows were never a fine-tuning target, so the softmax only pushed them down. After fine-tuning, each cold
item's row is replaced by a ridge map from its item-text vector (the TF-IDF SVD of ``data_builders.item_text``,
item metadata only) to the collab item table, fitted on the warm items' trained rows; the ridge's alpha is chosen
on the validation cold items' shelf. The graph residuals are 0 for a cold item (its EASE column and its low-pass
degree are 0), so its score is the user state times its mapped row.

Metrics, per split ("validation" or "test"), over that split's cold items:
- ``shelf``: the "new arrivals" shelf: each user with a cold item among their targets ranks only the split's cold
  items (nothing masked: a cold item is never in a train history);
- ``shop_warm``: the whole catalog ranked (train items masked), relevant = the user's warm targets only;
- ``catalog_warm``: the same with every held-out cold item (validation and test) left out of the ranking (the shop
  before they arrived): ``shop_warm`` against it is what the new items cost the warm recommendations.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from data_builders.corpus import Corpus
from data_builders.item_text import item_token_counts, text_svd
from train.config import RunConfig
from train.evaluate import model_pass
from train.metrics import metric_names, per_user_metrics, summarize, topk_from_scores

COLD_METRIC_SETS = ("shelf", "shop_warm", "catalog_warm")


def warm_item_mask(corpus: Corpus) -> np.ndarray:
    """(I,) bool: items with at least one train interaction."""
    return np.bincount(np.asarray(corpus.hops.graph.edges)[:, 1], minlength=corpus.num_items) > 0


def item_text_svd(corpus: Corpus, rank: int, seed: int):
    """``text_svd``'s (vectors, idf, basis) of the folder's item text (item metadata only), or None without text."""
    if "content" not in corpus.configs:
        return None
    fitted = text_svd(item_token_counts(corpus), rank, seed)
    return fitted if np.abs(fitted[0]).sum() > 0 else None


def fit_text_map(vectors: np.ndarray, rows: np.ndarray, fit: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge (with intercept) from item-text vectors to collab rows over the items ``fit`` selects: (k, d) weight
    and (d,) bias, so that ``vectors @ weight + bias`` approximates ``rows``."""
    x, y = vectors[fit].astype(np.float64), rows[fit].astype(np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc = x - x_mean
    weight = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return weight, y_mean - x_mean @ weight


def _targets_in(part, items: np.ndarray) -> list[np.ndarray]:
    keep = set(items.tolist())
    return [np.asarray([j for j in ex.targets if j in keep], dtype=np.int64) for ex in part]


def shelf_inputs(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig, powers: Sequence[float] = (1.0,)):
    """For the split's users with a cold target: (n, d) user states, (n, C) the model's standardised cold-item text
    term at the split's cold items (C of them; zeros when the model has none), (P, n, C) their text neighbours' mean
    scores with the cosines to each of the P ``powers`` as weights (``GraphColdItemMap.carried_scores``; zeros without
    neighbours), and their cold targets."""
    cold = corpus.cold_items(split)
    lever = accelerator.unwrap_model(model).cold_item_map
    blank = np.zeros((0, len(cold)))

    def consume(out, part):
        terms = (out.score_terms or {}).get("cold_item_map")
        term = terms[:, cold].float().cpu().numpy() if terms is not None else np.zeros((len(part), len(cold)))
        carried = np.zeros((len(powers), len(part), len(cold)))
        if lever is not None and lever.neighbour_count:
            index = torch.as_tensor(cold, device=out.scores.device)
            neighbours, cosines = lever.neighbours[index], lever.neighbour_weights[index]
            carried = np.stack([lever.carried_scores(out.scores, neighbours, cosines ** p).float().cpu().numpy()
                                for p in powers])
        return out.user_states.float().cpu().numpy(), term, carried, _targets_in(part, cold)

    blocks = model_pass(accelerator, model, corpus, split, cfg, consume)
    states = np.concatenate([b[0] for b in blocks]) if blocks else np.zeros((0, model.config.n_embd))
    terms = np.concatenate([b[1] for b in blocks]) if blocks else blank
    carried = np.concatenate([b[2] for b in blocks], axis=1) if blocks else np.zeros((len(powers), 0, len(cold)))
    targets = [t for b in blocks for t in b[3]]
    keep = np.asarray([len(t) > 0 for t in targets], dtype=bool)
    return states[keep], terms[keep], carried[:, keep], [t for t, k in zip(targets, keep) if k]


def candidate_columns(targets: Sequence[Sequence[int]], candidates: np.ndarray) -> list[np.ndarray]:
    """Each user's targets among ``candidates``, as column indices into ``candidates``."""
    column = {int(j): c for c, j in enumerate(candidates)}
    return [np.asarray([column[int(j)] for j in t if int(j) in column], dtype=np.int64) for t in targets]


def shelf_per_user(scores: np.ndarray, candidates: np.ndarray, targets: Sequence[np.ndarray], ks, ndcg_ks) -> dict:
    """Per-user metrics of ranking only ``candidates`` ((n, C) scores, one column per candidate) against each user's
    targets among them."""
    relevant = candidate_columns(targets, candidates)
    return per_user_metrics(scores, relevant=relevant, exclude=None, ks=ks, ndcg_ks=ndcg_ks)


def shelf_metrics(scores: np.ndarray, candidates: np.ndarray, targets: Sequence[np.ndarray], ks, ndcg_ks) -> dict:
    """The means of ``shelf_per_user``."""
    return summarize(shelf_per_user(scores, candidates, targets, ks, ndcg_ks))


@torch.no_grad()
def cold_neighbour_tables(lever, cold: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(I, K) neighbours and cosine weights of the lever's text-neighbour transfer: for the ``cold`` items their
    nearest items with interactions, found by ``lever.nearest_warm_items`` (the search a new item gets when it is
    scored, so a held-out cold item and the same item sent as new score alike); 0 elsewhere. ``block`` cold items
    at a time bound the (block, I) cosine matrix."""
    neighbours = np.zeros(tuple(lever.neighbours.shape), np.int64)
    weights = np.zeros(tuple(lever.neighbours.shape), np.float32)
    for start in range(0, len(cold), block):
        items = cold[start:start + block]
        index, cosine = lever.nearest_warm_items(lever.item_text[torch.as_tensor(items, device=lever.item_text.device)])
        neighbours[items], weights[items] = index.cpu().numpy(), cosine.float().cpu().numpy()
    return neighbours, weights


@torch.no_grad()
def set_cold_rows(model, items: np.ndarray, rows: np.ndarray) -> None:
    table = model.id_embeddings("collab").item.weight
    table[torch.as_tensor(items)] = torch.as_tensor(rows, dtype=table.dtype, device=table.device)


def held_out_cold_items(corpus: Corpus) -> np.ndarray:
    """The folder's cold items (validation and test), sorted."""
    return np.sort(np.concatenate([corpus.cold_items("validation"), corpus.cold_items("test")]))


def fit_cold_item_map(accelerator, model, corpus: Corpus, cfg: RunConfig) -> dict:
    """Fill the model's cold-item lever (``model.cold_item_map``): the text map from the warm items' trained rows,
    the catalog's text vectors, the held-out cold items' mask; write the cold items' mapped rows into the collab item
    table and set the text term's scale.

    With validation cold items, the ridge alpha, the term's scale and the transfer weight are the triple of
    ``finetune.cold_map_alpha_grid`` x ``cold_item_text_scale_grid`` x ``cold_item_transfer_grid`` with the best
    validation shelf selection metric (first of equals, one pass over validation) at the first neighbour power; then
    the power (``cold_item_neighbour_power_grid``), scale and transfer again at that alpha; then the gain
    (``cold_item_gain_grid``, times 1 / the transfer weight) and the offset (``cold_item_offset_grid``) with the best
    validation whole-shop selection metric among those that keep the warm targets' metric within
    ``cold_item_warm_tolerance`` of the shop without new items (``shop_sweep``, a second pass), the guard pair among
    them (the offset that keeps every cold item out of each validation user's top max(k) warm items); without, each
    grid's first value. Returns the sweeps, or why nothing was fitted."""
    net = accelerator.unwrap_model(model)
    lever = net.cold_item_map
    if lever is None:
        return {"skipped": "model.cold_item_map_rank is 0: the model keeps no text map (new items cannot be scored)"}
    fitted = item_text_svd(corpus, lever.basis.shape[1], cfg.seed)
    if fitted is None:
        return {"skipped": f"{corpus.folder} has no item text: the model cannot score items without interactions"}
    vectors, idf, basis = fitted
    warm, cold = warm_item_mask(corpus), held_out_cold_items(corpus)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    cold_mask = np.zeros(corpus.num_items, dtype=np.float32)
    cold_mask[cold] = 1.0
    zeros = np.zeros(lever.weight.shape, np.float32), np.zeros(lever.bias.shape, np.float32)
    no_neighbours = (np.zeros(lever.neighbours.shape, np.int64), np.zeros(lever.neighbours.shape, np.float32)) \
        if lever.neighbour_count else ()
    lever.set_tables(idf, basis, *zeros, unit, cold_mask, *no_neighbours)  # the text term first: validation reads it
    neighbour_tables = cold_neighbour_tables(lever, cold) if lever.neighbour_count else ()
    lever.set_tables(idf, basis, *zeros, unit, cold_mask, *neighbour_tables)
    rows = net.id_embeddings("collab").item.weight.detach().float().cpu().numpy()
    f, metric = cfg.finetune, cfg.finetune.selection_metric
    transfers = list(f.cold_item_transfer_grid) if lever.neighbour_count else [0.0]
    powers = list(f.cold_item_neighbour_power_grid) if lever.neighbour_count else [lever.neighbour_power]
    report: dict = {"metric": metric, "alphas": list(f.cold_map_alpha_grid),
                    "scales": list(f.cold_item_text_scale_grid), "transfers": transfers, "powers": powers,
                    "cold_items": int(len(cold)), "warm_items": int(warm.sum())}
    alpha, scale, transfer, power = f.cold_map_alpha_grid[0], f.cold_item_text_scale_grid[0], transfers[0], powers[0]
    if len(corpus.cold_items("validation")):
        states, terms, carried, targets = shelf_inputs(accelerator, model, corpus, "validation", cfg, powers)
        candidates = corpus.cold_items("validation")

        def shelf(mapped, s, t, p):
            return shelf_metrics(mapped + s * terms + t * carried[powers.index(p)], candidates, targets,
                                 cfg.eval.recall_ks, cfg.eval.ndcg_ks)

        # (alpha, scale, transfer) jointly at the first power, then (power, scale, transfer) at that alpha: the
        # power moves the best scale and transfer, the alpha barely (a joint 4-D grid would cost 3x the passes)
        grid, sweep = [], []
        for a in f.cold_map_alpha_grid:
            weight, bias = fit_text_map(vectors, rows, warm, a)
            mapped = states @ (vectors[candidates] @ weight + bias).T
            for s, t in itertools.product(f.cold_item_text_scale_grid, transfers):
                grid.append((a, s, t, power))
                sweep.append(shelf(mapped, s, t, power))
        alpha = grid[int(np.argmax([m[metric] for m in sweep]))][0]
        weight, bias = fit_text_map(vectors, rows, warm, alpha)
        mapped = states @ (vectors[candidates] @ weight + bias).T
        for p, s, t in itertools.product(powers[1:], f.cold_item_text_scale_grid, transfers):
            grid.append((alpha, s, t, p))
            sweep.append(shelf(mapped, s, t, p))
        report["values"] = [[a, s, t, p, m[metric]] for (a, s, t, p), m in zip(grid, sweep)]
        best = int(np.argmax([m[metric] for m in sweep]))
        (alpha, scale, transfer, power), report["validation_shelf"] = grid[best], sweep[best]
    lever.neighbour_power = net.config.cold_item_neighbour_power = power  # saved with the config: new items alike
    # The shelf ranks the same at any positive gain on the whole cold score, the whole shop does not. Gain 1 / transfer
    # puts a cold item at its text neighbours' mean score (on the catalog's scale) plus the map and the term as a
    # correction; the whole-shop sweep then picks a multiple of it and the offset (at weight 8 and gain 1 the
    # whole-shop validation R@20 of Beauty fell from 0.114 to 0.073).
    base_gain = 1.0 / transfer if transfer > 0 else 1.0
    weight, bias = fit_text_map(vectors, rows, warm, alpha)

    def apply(gain: float, offset: float) -> None:
        lever.set_tables(idf, basis, gain * weight, gain * bias, unit, cold_mask, *neighbour_tables)
        with torch.no_grad():
            lever.scale.fill_(gain * scale)
            lever.offset.fill_(offset)
            if lever.neighbour_count:
                lever.transfer_weight.fill_(gain * transfer)
        set_cold_rows(net, cold, gain * (vectors[cold] @ weight + bias))

    pairs = list(itertools.product(f.cold_item_gain_grid, f.cold_item_offset_grid))
    apply(base_gain, 0.0)
    multiple, offset = pairs[0]
    if len(corpus.cold_items("validation")):
        every, warm_only, without, guard = shop_sweep(accelerator, model, corpus, cfg, pairs, cold_mask)
        # the guard pair keeps every cold item below each validation user's top max(k) warm items, so the warm
        # targets' metrics are the shop's without new items: the grid's offsets are absolute, and where the cold
        # scores stand far above the catalog's (Musical Instruments, other splits) every pair of the grid pushed the
        # warm targets' R@20 to 0
        pairs.append((pairs[0][0], guard["offset"]))
        every.append(guard["every"])
        warm_only.append(without)
        report["shop_values"] = [[m, d, v, w] for (m, d), v, w in zip(pairs, every, warm_only)]
        report["shop_warm_without_new_items"] = without
        # the best whole shop (every target) among the pairs that keep the warm targets' metric within the
        # tolerance of the shop without new items (the guard always does)
        floor = (1.0 - f.cold_item_warm_tolerance) * without
        best = max((j for j, w in enumerate(warm_only) if w >= floor), key=lambda j: every[j])
        multiple, offset = pairs[best]
    apply(base_gain * multiple, offset)
    report["chosen"] = {"alpha": alpha, "scale": scale, "transfer": transfer, "power": power,
                        "gain": base_gain * multiple, "offset": offset}
    accelerator.print(f"cold items: text map alpha {alpha}, text term scale {scale}, neighbour transfer {transfer} "
                      f"(cosines to the power {power:g}), "
                      f"gain {base_gain * multiple:g}, offset {offset}"
                      + (f", chosen on the validation shelf ({metric} {report['validation_shelf'][metric]:.4f}) and "
                         f"whole shop ({report['shop_values'][pairs.index((multiple, offset))][2]:.4f}; warm targets "
                         f"{report['shop_values'][pairs.index((multiple, offset))][3]:.4f} against "
                         f"{report['shop_warm_without_new_items']:.4f} without new items)"
                         if "validation_shelf" in report else " (each grid's first: no validation cold items)"))
    return report


def shop_sweep(accelerator, model, corpus: Corpus, cfg: RunConfig, pairs: Sequence[tuple[float, float]],
               cold_mask: np.ndarray) -> tuple[list, list, float, dict]:
    """The validation selection metric of the whole shop (every item ranked, train items masked) with the cold items'
    scores s (as the model gives them) set to m * s - d for each pair (m, d): over every validation target (warm or
    cold), over the warm targets only, and over the warm targets of the shop without the cold items (one pass).
    Also the guard: the smallest offset d (at the first pair's m) that puts every cold item below each user's
    max(k)-th best warm item, and the every-target metric there (that of the shop without the cold items)."""
    metric = cfg.finetune.selection_metric
    ks, ndcg_ks = cfg.eval.recall_ks, cfg.eval.ndcg_ks
    depth, gain = max(list(ks) + list(ndcg_ks)), pairs[0][0]
    train_ui = corpus.hops.graph.ui
    cold, warm = np.flatnonzero(cold_mask), np.flatnonzero(cold_mask == 0)

    def consume(out, part):
        scores = out.scores.float().cpu().numpy()
        exclude = train_ui[np.asarray([ex.user for ex in part], dtype=np.int64)]
        every = [np.asarray(ex.targets, dtype=np.int64) for ex in part]
        warm_targets = _targets_in(part, warm)

        def measure(s, relevant):
            m = per_user_metrics(s, relevant=relevant, exclude=exclude, ks=ks, ndcg_ks=ndcg_ks)
            return m[metric], m["num_relevant"].astype(np.float64)

        columns = []
        for m, d in pairs:
            moved = scores.copy()
            moved[:, cold] = m * scores[:, cold] - d
            columns += [*measure(moved, every), *measure(moved, warm_targets)]
        highest_cold = gain * scores[:, cold].max(axis=1)
        scores[:, cold] = -np.inf
        columns += [*measure(scores, warm_targets), *measure(scores, every)]
        top = topk_from_scores(scores, depth, exclude)  # the shop without the cold items: each user's top warm items
        last = np.maximum((top >= 0).sum(axis=1) - 1, 0)[:, None]  # the deepest filled slot (a user may have fewer)
        columns.append(highest_cold - np.take_along_axis(scores, np.take_along_axis(top, last, 1), 1)[:, 0])
        return np.stack(columns, axis=1)

    vals = np.concatenate(model_pass(accelerator, model, corpus, "validation", cfg, consume))

    def mean(j: int) -> float:
        return summarize({metric: vals[:, j], "num_relevant": vals[:, j + 1].astype(np.int64)})[metric]

    needed = vals[:, -1][np.isfinite(vals[:, -1])]  # the offset each user needs
    reach = float(needed.max()) if len(needed) else 0.0
    guard = {"offset": reach + 1e-4 * max(1.0, abs(reach)), "every": mean(4 * len(pairs) + 2)}  # strictly below
    return ([mean(4 * p) for p in range(len(pairs))], [mean(4 * p + 2) for p in range(len(pairs))],
            mean(4 * len(pairs)), guard)


def cold_item_metrics(accelerator, model, corpus: Corpus, split: str, cfg: RunConfig, per_user: bool = False) -> dict:
    """``{"shelf", "shop_warm", "catalog_warm"}`` metrics of the model as it is (one pass over the split).
    ``per_user``: each also holds the per-user arrays it averaged (``"per_user"``) and their users (``"users"``)."""
    ks, ndcg_ks = cfg.eval.recall_ks, cfg.eval.ndcg_ks
    names = metric_names(ks, ndcg_ks)
    cold, every_cold = corpus.cold_items(split), held_out_cold_items(corpus)
    warm = np.flatnonzero(warm_item_mask(corpus))
    train_ui = corpus.hops.graph.ui

    def consume(out, part):
        scores = out.scores.float().cpu().numpy()
        users = np.asarray([ex.user for ex in part], dtype=np.int64)
        shelf = per_user_metrics(scores[:, cold], relevant=candidate_columns([ex.targets for ex in part], cold),
                                 exclude=None, ks=ks, ndcg_ks=ndcg_ks)
        relevant = _targets_in(part, warm)
        shop = per_user_metrics(scores, relevant=relevant, exclude=train_ui[users], ks=ks, ndcg_ks=ndcg_ks)
        scores[:, every_cold] = -np.inf  # the catalog without the new items (train items masked as well, below)
        catalog = per_user_metrics(scores, relevant=relevant, exclude=train_ui[users], ks=ks, ndcg_ks=ndcg_ks)
        return [np.stack([m[n] for n in names] + [m["num_relevant"].astype(np.float64)], axis=1)
                for m in (shelf, shop, catalog)] + [users]

    blocks = model_pass(accelerator, model, corpus, split, cfg, consume)
    users = np.concatenate([b[-1] for b in blocks]) if blocks else np.zeros(0, np.int64)
    out = {}
    for k, name in enumerate(COLD_METRIC_SETS):
        vals = np.concatenate([b[k] for b in blocks]) if blocks else np.zeros((0, len(names) + 1))
        values = {n: vals[:, j] for j, n in enumerate(names)}
        values["num_relevant"] = vals[:, -1].astype(np.int64)
        out[name] = summarize(values)
        if per_user:
            out[name].update(per_user=values, users=users)
    return out

