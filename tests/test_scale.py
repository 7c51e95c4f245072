"""Scale pieces (issue 8): the power-law generator and the per-row pair hop distances."""
from __future__ import annotations

import numpy as np
import pytest

from data_builders.powerlaw import make_powerlaw
from data_builders.preprocess import build_split


def test_powerlaw_generator_is_seeded_heavy_tailed_and_builds_every_config_input():
    raw = make_powerlaw(600, 300, 9000, exponent=1.0, seed=3)
    again = make_powerlaw(600, 300, 9000, exponent=1.0, seed=3)
    other = make_powerlaw(600, 300, 9000, exponent=1.0, seed=4)
    key = lambda r: [(x.user, x.item) for x in r.interactions]  # noqa: E731
    assert key(raw) == key(again) and key(raw) != key(other)
    assert 0.97 * 9000 <= len(raw.interactions) <= 1.01 * 9000
    split = build_split(raw, k_core=5, seed=1)
    assert split.num_users > 550 and split.num_items > 280  # the degree floors survive the 5-core
    deg = np.bincount(np.concatenate(split.train), minlength=split.num_items)
    assert deg.max() > 8 * np.median(deg)  # popularity is heavy-tailed
    assert all(m.title and m.brand and len(m.categories) == 3 and m.price for m in split.items)
    assert len(split.reviews) > 0
    with pytest.raises(ValueError, match="num_edges"):
        make_powerlaw(100, 100, 500)


# ------------------------------------------------------------------------------------ pair hop distances
def _random_graph(seed: int, U: int, I: int, p: float):
    from data_builders.graph import InteractionGraph

    rng = np.random.default_rng(seed)
    u, i = np.nonzero(rng.random((U, I)) < p)
    return InteractionGraph(np.stack([u, i], 1), U, I)


def _networkx_hops(g, max_hops: int) -> np.ndarray:
    import networkx as nx

    G = nx.Graph()
    G.add_nodes_from(range(g.num_nodes))
    G.add_edges_from((int(u), g.num_users + int(i)) for u, i in g.edges)
    ref = np.full((g.num_nodes, g.num_nodes), max_hops + 1, dtype=np.uint8)
    for s in range(g.num_nodes):
        for t, d in nx.single_source_shortest_path_length(G, s, cutoff=max_hops).items():
            ref[s, t] = d
    return ref


@pytest.mark.parametrize(
    "seed,U,I,p,max_hops",
    [(0, 40, 30, 0.04, 6), (1, 60, 40, 0.025, 6), (2, 30, 45, 0.06, 6), (3, 25, 20, 0.08, 3), (4, 50, 50, 0.02, 8), (5, 12, 9, 0.0, 6)],
)
@pytest.mark.parametrize("hub_words", [0, 1])
def test_pair_distances_equal_networkx_on_every_pair(seed, U, I, p, max_hops, hub_words, monkeypatch):
    """Sparse graphs with long paths (distances 1..max_hops and unreachable all occur) and one with no edges;
    without hub bits (every pair takes the exact sparse test) and with 64 hubs (most pairs meet at one)."""
    from data_builders import pair_hops
    from data_builders.pair_hops import pair_distances

    monkeypatch.setattr(pair_hops, "HUB_WORDS", hub_words)

    g = _random_graph(seed, U, I, p)
    ref = _networkx_hops(g, max_hops)
    a, b = np.meshgrid(np.arange(g.num_nodes), np.arange(g.num_nodes), indexing="ij")
    got = pair_distances(g, a.ravel(), b.ravel(), max_hops).reshape(ref.shape)
    np.testing.assert_array_equal(got, ref)
    if p >= 0.025 and max_hops == 6:
        assert {1, 2, 3, 4, 5, 6, 7} <= set(np.unique(ref).tolist())  # the test exercises every level


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_row_hop_matrices_equal_networkx_and_the_old_lookup_both_variants(seed):
    from data_builders.graph import HopDistances, InteractionGraph
    from data_builders.pair_hops import gather_row_hops, row_hop_matrices, row_nodes

    g = _random_graph(seed, 35, 30, 0.06)
    ref = _networkx_hops(g, 6)
    rng = np.random.default_rng(seed)
    hd = HopDistances(g, 6)
    rows = [rng.integers(-1, g.num_nodes, size=rng.integers(1, 14)) for _ in range(20)]
    for u in range(5):  # personalized prompts: user, its items, text, the user again
        own = g.num_users + g.ui[u].indices
        rows.append(np.concatenate([[u, -1], own, [-1, u]]))
    L = max(len(r) for r in rows)
    pos = np.full((len(rows), L), -1)
    for k, r in enumerate(rows):
        pos[k, : len(r)] = r
    changed = 0
    for luo in (False, True):
        mats = row_hop_matrices(g, rows, 6, leave_user_out=luo)
        for r, m in zip(rows, mats):
            nodes, _ = row_nodes(r)
            assert m.dtype == np.uint8 and m.shape == (len(nodes), len(nodes))
            if not luo:
                np.testing.assert_array_equal(m, ref[nodes[:, None], nodes[None, :]])
            elif nodes[0] < g.num_users and len(r) > 2 and r[-1] == nodes[0]:  # a personalized prompt
                without = _networkx_hops(InteractionGraph(g.edges[g.edges[:, 0] != nodes[0]], g.num_users, g.num_items), 6)
                items = nodes[1:]
                sub, true = m[1:, 1:], without[items[:, None], items[None, :]]
                off = ~np.eye(len(items), dtype=bool)
                assert ((sub == 2) == (true == 2))[off].all() and (sub <= true)[off].all()
                np.testing.assert_array_equal(m[0], ref[nodes[0], nodes])  # pairs with the user unchanged
                changed += int((sub != ref[items[:, None], items[None, :]]).sum())
        got = gather_row_hops(mats, [row_nodes(r)[1] for r in pos], L)
        want = hd.pairwise(pos)  # the dense table's lookup (+ the old leave-user-out pass)
        if luo:
            want = hd.leave_user_out(want, pos)
        np.testing.assert_array_equal(got, want)
    assert changed > 0  # some own-item pairs were linked only through their user
    # chunking (rows, co-count blocks) changes nothing
    from data_builders.pair_hops import shared_by_two

    for luo in (False, True):
        whole = row_hop_matrices(g, rows, 6, leave_user_out=luo)
        small = row_hop_matrices(g, rows, 6, leave_user_out=luo, max_pairs=7)
        assert all((x == y).all() for x, y in zip(whole, small))
    a, b = rng.integers(0, g.num_items, size=(2, 300))
    co = (g.iu @ g.ui).toarray()
    np.testing.assert_array_equal(shared_by_two(g, a, b, block_cost=5), co[a, b] >= 2)


def test_pair_distances_equal_networkx_on_musical_instruments(shared_data):
    """Every pair of the Musical Instruments train graph (873 nodes, 2,551 edges), both variants."""
    from data_builders.graph import InteractionGraph
    from data_builders.pair_hops import pair_distances, row_hop_matrices
    from data_builders.readers import read_source

    split = build_split(read_source(shared_data / "amazon-musical-instruments-2014"), rating_threshold=3.0, k_core=5, seed=98765)
    g = InteractionGraph.from_split(split)
    ref = _networkx_hops(g, 6)
    a, b = np.meshgrid(np.arange(g.num_nodes), np.arange(g.num_nodes), indexing="ij")
    got = pair_distances(g, a.ravel(), b.ravel(), 6).reshape(ref.shape)
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(ref)) >= 6
    # personalized prompts, leave-user-out: own-item pairs are 2 iff another user shares them
    rows = [np.concatenate([[u], g.num_users + split.train[u], [u]]) for u in range(0, g.num_users, 25)]
    co = (g.iu @ g.ui).toarray()
    for r, m in zip(rows, row_hop_matrices(g, rows, 6, leave_user_out=True)):
        items = np.asarray(r[1:-1]) - g.num_users
        want = np.where(co[items[:, None], items[None, :]] >= 2, 2, 4)
        np.fill_diagonal(want, 0)
        np.testing.assert_array_equal(m[1:, 1:], want)


def test_collator_takes_a_remasked_prompt_from_the_stored_full_history_matrix():
    """A prompt over a subset of a stored row's nodes (re-masked, shuffled, cut) indexes the stored matrix via
    pair_nodes and gets the same bias as measuring the graph; a node outside pair_nodes is an error."""
    import torch

    from data_builders.collate import GraphCollator
    from data_builders.graph import HopDistances
    from data_builders.pair_hops import attach_pair_hops, row_nodes

    g = _random_graph(11, 30, 25, 0.15)
    hd = HopDistances(g, 6)
    U = g.num_users
    rng = np.random.default_rng(0)
    full_rows = []
    for u in range(6):
        items = g.ui[u].indices
        full_rows.append({"node_positions": np.concatenate([[u, -1], U + items, [-1, u, -1]]), "input_ids": None})
    attach_pair_hops(full_rows, g, 6)
    for luo in (False, True):
        collate = GraphCollator(hd, pad_token_id=0, leave_user_out=luo, max_length=7)
        masked, bare = [], []
        for u, r in enumerate(full_rows):
            items = g.ui[u].indices
            keep = rng.permutation(items)[: max(1, len(items) - 2)]
            pos = np.concatenate([[u, -1], U + keep, [-1, u, -1]])
            row = {"input_ids": np.arange(len(pos)), "node_positions": pos}
            bare.append(dict(row))
            masked.append(row | {"pair_hops": r["pair_hops"], "pair_hops_luo": r["pair_hops_luo"], "pair_nodes": row_nodes(r["node_positions"])[0]})
        assert torch.equal(collate(masked)["hop_distances"], collate(bare)["hop_distances"])
    other = np.setdiff1d(np.arange(g.num_items), g.ui[0].indices)[0]  # not in user 0's stored matrix
    stray = masked[0] | {"node_positions": np.concatenate([masked[0]["node_positions"][:-1], [U + other]])}
    with pytest.raises(ValueError, match="pair_nodes"):
        GraphCollator(hd, pad_token_id=0)([stray])


def test_powerlaw_data_builds_every_config_with_stored_pair_hops(tmp_path, gpt2_tokenizer_dir):
    """The normal build runs on the generator's output: every config written, every row has its k x k matrix,
    the same values the graph search gives, and no N x N table in the folder."""
    from data_builders.corpus import Corpus
    from data_builders.folder import build_dataset_folder
    from data_builders.pair_hops import row_hop_matrices, row_nodes
    from data_builders.prompts import ALL_CONFIGS

    split = build_split(make_powerlaw(300, 150, 3000, seed=2), k_core=5, seed=1)
    res = build_dataset_folder(split, tmp_path / "pl", tokenizer_source=gpt2_tokenizer_dir)
    assert res.manifest["configs"] == list(ALL_CONFIGS) and not (tmp_path / "pl" / "graph" / "hops.npy").exists()
    c = Corpus(tmp_path / "pl")
    for config in c.configs:
        ds = c.dataset(config, "train")
        rows = [ds[k] for k in range(0, len(ds), max(1, len(ds) // 25))]
        nodes = [row_nodes(r["node_positions"])[0] for r in rows]
        for luo in (False, True):
            want = row_hop_matrices(c.hops.graph, nodes, c.max_hops, leave_user_out=luo)
            for r, w in zip(rows, want):
                got = r["pair_hops_luo"] if (luo and r["pair_hops_luo"]) else r["pair_hops"]
                assert np.array_equal(np.asarray(got, np.uint8).reshape(w.shape), w), config


def test_check_folder_finds_stored_hops_equal_to_the_dense_table_and_flags_a_difference(tmp_path, gpt2_tokenizer_dir, monkeypatch):
    """benchmarks.bench_scale --check-folder (the same-seed argument for real folders): every row of every config,
    and re-masked fine-tuning prompts, give the old dense-table lookup's hops; a table off by one is caught."""
    from benchmarks.bench_scale import check_folder
    from data_builders.corpus import Corpus
    from data_builders.folder import build_dataset_folder
    from data_builders.graph import HopDistances

    split = build_split(make_powerlaw(300, 150, 3000, seed=4), k_core=5, seed=1)
    build_dataset_folder(split, tmp_path / "pl", tokenizer_source=gpt2_tokenizer_dir)
    res = check_folder(tmp_path / "pl", batch=64)
    c = Corpus(tmp_path / "pl")
    assert res["configs"]["recommendation test"]["rows"] == c.num_rows("recommendation", "test") > 0
    assert res["configs"]["recommendation train re-masked epoch 0"]["rows"] == c.num_rows("recommendation", "train")
    assert all(v["mismatched_rows"] == 0 for v in res["configs"].values()), res
    pairwise = HopDistances.pairwise

    def off_by_one(self, pos):
        hops = pairwise(self, pos)
        return np.where(hops > 0, hops + 1, hops) if self.table is not None else hops

    monkeypatch.setattr(HopDistances, "pairwise", off_by_one)
    bad = check_folder(tmp_path / "pl", batch=64)["configs"]
    assert bad["recommendation test"]["mismatched_rows"] == bad["recommendation test"]["rows"]


def test_powerlaw_atomic_files_read_back_as_the_generated_shop(tmp_path):
    from data_builders.powerlaw import main as powerlaw_main
    from data_builders.readers import read_source

    assert powerlaw_main(["--users", "60", "--items", "30", "--edges", "600", "--seed", "3", "--out", str(tmp_path)]) == 0
    made, read = make_powerlaw(60, 30, 600, seed=3), read_source(tmp_path)
    key = lambda r: (r.user, r.item, r.rating, r.timestamp)  # noqa: E731
    assert sorted(map(key, read.interactions)) == sorted(map(key, made.interactions))
    assert read.items == made.items and not read.report.skipped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["powerlaw.inter", "powerlaw.item"]  # no temp file left


def test_the_preset_stages_time_each_step_as_shipped_and_with_the_fixed_terms_computed(tmp_path):
    import json

    import torch

    from benchmarks.bench_scale import fixed_terms_computed, preset_stages
    from train.testing import build_tiny_data
    from test_graph_residual import ITEMS, make_batch, residual_model

    folder = build_tiny_data(tmp_path / "tiny")
    res = preset_stages(folder, "amazon_cpu", 1, 3, 1, tmp_path / "stages.json",
                        ("finetune.batch_size=4", "eval.batch_size=8", "model.graph_lowpass_rank=8",
                         "finetune.lowpass_rank_grid=[4, 8]", "model.cold_item_map_rank=8"))
    step = res["finetune_step_s"]
    assert step["timed_steps"] == 3 and step["median"] > 0 and step["median_with_fixed_terms_computed"] > 0
    assert 0 < step["median_optimizer_step"] < step["median"] and step["parameters_with_a_gradient"] > 0
    assert json.loads((tmp_path / "stages.json").read_text())["finetune_step_s"] == step
    # the baseline's switch: the fixed-at-0 term is computed inside the block only
    model = residual_model(0.0, graph_residual_learn_scale=False).train()
    ids, mask, hop = make_batch(pad=True)
    targets = torch.zeros(ids.shape[0], ITEMS)
    targets[:, 0] = 1
    terms = lambda: model(ids, attention_mask=mask, hop_distances=hop, target_items=targets).score_terms  # noqa: E731
    with fixed_terms_computed(model):
        assert "graph_residual" in terms()
    assert "graph_residual" not in terms()
