"""Hop distances: BFS equals networkx (capped), lookup modes agree, save/load round trip, train edges only."""
import networkx as nx
import numpy as np
import pytest

from data_builders.graph import HopDistances, InteractionGraph, train_edges


def _random_graph(seed: int, U: int, I: int, p: float) -> InteractionGraph:
    rng = np.random.default_rng(seed)
    mask = rng.random((U, I)) < p
    u, i = np.nonzero(mask)
    return InteractionGraph(np.stack([u, i], 1), U, I)


def _networkx_table(g: InteractionGraph, max_hops: int) -> np.ndarray:
    G = nx.Graph()
    G.add_nodes_from(range(g.num_nodes))
    G.add_edges_from((int(u), g.num_users + int(i)) for u, i in g.edges)
    ref = np.full((g.num_nodes, g.num_nodes), max_hops + 1, dtype=np.uint8)
    for s in range(g.num_nodes):
        for t, d in nx.single_source_shortest_path_length(G, s, cutoff=max_hops).items():
            ref[s, t] = d
    return ref


@pytest.mark.parametrize("seed,U,I,p,max_hops", [(0, 30, 20, 0.05, 6), (1, 40, 25, 0.03, 6), (2, 25, 35, 0.08, 3), (3, 10, 8, 0.0, 6)])
def test_bfs_equals_networkx(seed, U, I, p, max_hops):
    g = _random_graph(seed, U, I, p)
    ref = _networkx_table(g, max_hops)
    table = g.hop_table(max_hops, block=7)  # a block size that does not divide N
    np.testing.assert_array_equal(table, ref)
    np.testing.assert_array_equal(table, table.T)
    # the on-demand path (tiny budget, tiny cache) gives the same pairwise lookups as the dense table
    dense = HopDistances(g, max_hops, table_budget_bytes=1 << 30)  # the dense table is opt-in
    lazy = HopDistances(g, max_hops, table_budget_bytes=0, cache_rows=3)
    assert dense.is_dense and not lazy.is_dense
    rng = np.random.default_rng(seed)
    pos = rng.integers(-1, g.num_nodes, size=(4, 9))
    a, b = dense.pairwise(pos), lazy.pairwise(pos)
    np.testing.assert_array_equal(a, b)
    for bi in range(4):
        for x in range(9):
            for y in range(9):
                px, py = pos[bi, x], pos[bi, y]
                assert a[bi, x, y] == (-1 if px < 0 or py < 0 else ref[px, py])


def test_pairwise_self_and_edges():
    g = InteractionGraph(np.array([[0, 0], [1, 0], [1, 1]]), 2, 2)  # user0-item0-user1-item1
    h = HopDistances(g, max_hops=2)
    pos = np.array([[0, 2, 3, -1, 0]])  # user0, item0, item1, text, user0
    out = h.pairwise(pos)
    assert out.shape == (1, 5, 5)
    assert out[0, 0, 0] == 0 and out[0, 0, 4] == 0  # same node
    assert out[0, 0, 1] == 1  # user0-item0 edge
    assert out[0, 0, 2] == 3  # user0-item1 is 3 hops > max_hops=2 -> capped at max_hops+1
    assert (out[0, 3] == -1).all() and (out[0, :, 3] == -1).all()
    with pytest.raises(ValueError):
        h.pairwise(np.array([[7]]))


def test_save_load_roundtrip_and_hash_check(tmp_path):
    g = _random_graph(5, 20, 15, 0.1)
    h = HopDistances(g, 6, table_budget_bytes=1 << 30)
    sha = h.save(tmp_path / "graph")
    back = HopDistances.load(tmp_path / "graph", expected_sha256=sha)
    assert back.is_dense and back.graph.sha256 == sha
    np.testing.assert_array_equal(np.asarray(back.table), h.table)
    with pytest.raises(ValueError, match="another split"):
        HopDistances.load(tmp_path / "graph", expected_sha256="0" * 64)
    # a folder written without the table recomputes or serves rows lazily with the same values
    h.save(tmp_path / "g2", save_table=False)
    lazy = HopDistances.load(tmp_path / "g2", table_budget_bytes=0)
    assert not lazy.is_dense
    np.testing.assert_array_equal(lazy.rows([0, 21]), h.table[[0, 21]])


def test_train_edges_only_from_train_arrays():
    train = [np.array([0, 2], np.int32), np.array([1], np.int32)]
    e = train_edges(train)
    assert e.tolist() == [[0, 0], [0, 2], [1, 1]]
    with pytest.raises(ValueError, match="out of range"):
        InteractionGraph(np.array([[0, 5]]), 1, 3)


def test_leave_user_out_hops_match_networkx_without_the_user():
    """For pairs of the prompt user's own items: 2 iff 2 hops apart once the user is removed, else a lower bound."""
    import networkx as nx

    from data_builders.graph import HopDistances, InteractionGraph

    rng = np.random.default_rng(7)
    U, I = 30, 25
    edges = np.array([(u, j) for u in range(U) for j in rng.choice(I, size=rng.integers(2, 6), replace=False)])
    hd = HopDistances(InteractionGraph(edges, U, I), max_hops=6)
    G = nx.Graph()
    G.add_edges_from((int(u), U + int(j)) for u, j in edges)
    checked = changed = 0
    for u in range(U):
        own = U + np.unique(edges[edges[:, 0] == u, 1])
        row = np.concatenate([[u, -1, -1], own, [-1, u]])[None, :]  # user, text, items, text, user again
        full = hd.pairwise(row)
        out = hd.leave_user_out(full, row)
        changed += int((out != full).sum())
        H = G.copy()
        H.remove_node(u)
        for a in range(row.shape[1]):
            for b in range(row.shape[1]):
                na, nb = row[0, a], row[0, b]
                if na >= U and nb >= U:
                    true = nx.shortest_path_length(H, na, nb) if nx.has_path(H, na, nb) else 99
                    assert (out[0, a, b] == 2) == (true == 2) or na == nb
                    assert out[0, a, b] <= true
                    checked += 1
                else:  # pairs with the user or text are untouched
                    assert out[0, a, b] == full[0, a, b]
    assert checked > 100 and changed > 0  # some item pairs were linked only through their own user
