"""Levers of issue 10 step 4: LightGCN-smoothed collab ID tables (``id_propagation_layers``) and the edge bias
(``graph_edge_bias``, Graphormer's edge encoding over co-holder / degree buckets), both fitted on the train graph only
and stored with the weights (off, the state dict is unchanged); and content into the collab item IDs
(``finetune.init_collab_items``)."""
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from benchmarks.baselines import to_csr
from data_builders.corpus import Corpus
from data_builders.item_graph import edge_buckets, normalized_adjacency
from data_builders.item_text import item_token_counts, text_svd_vectors
from modeling_graphgpt2 import GraphGPT2ForRecommendation
from modeling_graphgpt2.configuration_graphgpt2 import (
    EDGE_BUCKET_NO_OTHER_USER,
    EDGE_BUCKET_SAME_ITEM,
    EDGE_FIRST_DEGREE_BUCKET,
    GraphGPT2ConfigError,
)
from train.common import build_model, init_collab_items
from train.config import ConfigError, load_config
from train.testing import build_tiny_data, tiny_overrides

from test_graph_residual import random_interactions
from test_model_core import BASE, ITEMS, USERS, item_token, make_batch, tiny_config, tiny_model, user_token


def dense_normalised(x: sp.spmatrix) -> np.ndarray:
    """D^-1/2 A D^-1/2 of the bipartite graph, written out densely."""
    x = x.toarray().astype(np.float64)
    u, i = x.shape
    a = np.zeros((u + i, u + i))
    a[:u, u:], a[u:, :u] = x, x.T
    deg = a.sum(1)
    inv = np.where(deg > 0, 1 / np.sqrt(np.where(deg > 0, deg, 1)), 0.0)
    return inv[:, None] * a * inv[None, :]


def propagated_model(layers: int = 2, seed: int = 0, **overrides) -> tuple[GraphGPT2ForRecommendation, sp.csr_matrix]:
    x = random_interactions(users=USERS)
    model = tiny_model(seed, id_propagation_layers=layers, graph_train_edges=int(x.nnz), **overrides)
    model.id_propagation.set_tables(*normalized_adjacency(x))
    return model, x


def edge_model(seed: int = 0, **overrides) -> tuple[GraphGPT2ForRecommendation, sp.csr_matrix]:
    x = random_interactions(users=USERS)
    model = tiny_model(seed, graph_edge_bias=True, graph_edge_topn=25, **overrides)
    model.edge_tables.set_tables(*edge_buckets(x, 25))
    return model, x


# ---------------------------------------------------------------------------------------------- the train-graph tables
def test_normalized_adjacency_is_lightgcns_matrix():
    x = random_interactions(users=30, items=40)
    x = x.tolil()
    x[3] = 0  # an isolated user: an empty row, no division by zero
    x = x.tocsr()
    x.eliminate_zeros()
    crow, col, val = normalized_adjacency(x)
    got = sp.csr_matrix((val, col, crow), shape=(70, 70)).toarray()
    np.testing.assert_allclose(got, dense_normalised(x), rtol=1e-6, atol=1e-7)
    assert len(col) == 2 * x.nnz and not got[3].any()


def test_edge_buckets_count_the_other_users_who_hold_both_items():
    # items 0 and 1 are held by users 0, 1, 3 (2 others besides the prompt's user); 0 and 2 by user 1 only
    x = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 0]], dtype=np.float32))
    columns, buckets, degree = edge_buckets(x, topn=5)
    assert columns.shape == buckets.shape == (3, 3)  # topn is capped by the number of items
    assert (columns[:, -1] == 3).all()  # each item meets 2 others: the last slot is padding (column I, sorts last)
    pairs = {(i, int(c)): int(b) for i in range(3) for c, b in zip(columns[i], buckets[i]) if c < 3}
    assert pairs[(0, 1)] == pairs[(1, 0)] == EDGE_BUCKET_NO_OTHER_USER + 2  # 2 other users
    assert pairs[(0, 2)] == EDGE_BUCKET_NO_OTHER_USER  # only the prompt's own user
    assert pairs[(1, 2)] == EDGE_BUCKET_NO_OTHER_USER + 1
    # degrees 3, 4, 2 -> other holders 2, 3, 1 -> buckets "1-2", "3-4", "1-2"
    assert degree.tolist() == [EDGE_FIRST_DEGREE_BUCKET + 1, EDGE_FIRST_DEGREE_BUCKET + 2, EDGE_FIRST_DEGREE_BUCKET + 1]
    assert (np.diff(columns, axis=1) > 0).all()  # sorted: the model binary-searches them


def test_the_model_looks_up_the_bucket_of_every_token_pair():
    ids, mask, _ = make_batch(pad=True)
    # users hold random halves of the batch's prompts (plus noise), so the prompts' pairs fall in many buckets
    rng = np.random.default_rng(0)
    prompt_items = [[int(t) - BASE - USERS for t in row if t >= BASE + USERS] for row in ids]
    x = to_csr([[j for j in prompt_items[u % 3] if rng.random() < 0.5] + list(rng.choice(ITEMS, 3)) for u in range(USERS)],
               ITEMS)
    model = tiny_model(graph_edge_bias=True, graph_edge_topn=25)
    model.edge_tables.set_tables(*edge_buckets(x, 25))
    got = model.edge_tables(ids, mask)
    assert len(set(got.unique().tolist())) >= 8  # the check below meets many kinds of pair
    columns, buckets, degree = edge_buckets(x, 25)
    table = {(i, int(c)): int(b) for i in range(ITEMS) for c, b in zip(columns[i], buckets[i]) if c < ITEMS}
    first_item = BASE + USERS
    for b in range(ids.shape[0]):
        for q in range(ids.shape[1]):
            for k in range(ids.shape[1]):
                tq, tk = int(ids[b, q]), int(ids[b, k])
                real = bool(mask[b, q] and mask[b, k])
                if real and tq >= first_item and tk >= first_item:
                    i, j = tq - first_item, tk - first_item
                    want = EDGE_BUCKET_SAME_ITEM if i == j else table.get((i, j), EDGE_BUCKET_NO_OTHER_USER)
                elif real and BASE <= tq < first_item <= tk:
                    want = int(degree[tk - first_item])
                elif real and BASE <= tk < first_item <= tq:
                    want = int(degree[tq - first_item])
                else:
                    want = 0
                assert int(got[b, q, k]) == want, (b, q, k)


def test_edge_bias_starts_as_no_bias_then_changes_attention_and_learns():
    plain = tiny_model(graph_bias="paper")
    model, _ = edge_model(graph_bias="paper")
    model.load_state_dict(plain.state_dict(), strict=False)  # same backbone and ID tables
    ids, mask, hop = make_batch(pad=True)
    torch.testing.assert_close(model(ids, attention_mask=mask, hop_distances=hop).scores,
                               plain(ids, attention_mask=mask, hop_distances=hop).scores)
    with torch.no_grad():
        model.transformer.h[0].attn.edge_bias.table.normal_()
    assert not torch.allclose(model(ids, attention_mask=mask, hop_distances=hop).scores,
                              plain(ids, attention_mask=mask, hop_distances=hop).scores)
    model.train()
    target = torch.zeros(ids.shape[0], ITEMS)
    target[:, :5] = 1
    model(ids, attention_mask=mask, hop_distances=hop, target_items=target).loss.backward()
    assert model.transformer.h[0].attn.edge_bias.table.grad.abs().sum() > 0
    groups = {g["name"]: g for g in model.optimizer_groups(1e-3, 1e-4, 0.1)}
    assert any(p is model.transformer.h[0].attn.edge_bias.table for p in groups["id_embeddings"]["params"])
    assert "edge_bias" in model.peft_modules_to_save()


# ---------------------------------------------------------------------------------------------- ID propagation
def test_propagated_tables_are_the_mean_of_the_graph_powers_and_feed_tokens_and_head():
    model, x = propagated_model(layers=2)
    a = torch.from_numpy(dense_normalised(x))
    e0 = torch.cat([model.collab_embeddings.user.weight, model.collab_embeddings.item.weight]).double()
    want = (e0 + a @ e0 + a @ a @ e0) / 3
    users, items = model.id_tables("collab")
    torch.testing.assert_close(torch.cat([users, items]).double(), want, rtol=1e-5, atol=1e-6)
    content = model.id_tables("content")  # only the collab set is smoothed
    assert content[1] is model.content_embeddings.item.weight
    ids = torch.tensor([[user_token(3), item_token(7), 5]])
    embeds = model.embed_tokens(ids, "collab")
    torch.testing.assert_close(embeds[0, 0], users[3])
    torch.testing.assert_close(embeds[0, 1], items[7])
    out = model(ids, output_hidden_states=True)
    torch.testing.assert_close(out.scores, out.hidden_states[-1][:, -1] @ items.T)


def test_propagation_passes_gradients_to_the_raw_tables_of_neighbours():
    model, x = propagated_model(layers=1)
    model.train()
    ids = torch.tensor([[user_token(0), item_token(int(x[0].indices[0])), 5]])
    target = torch.zeros(1, ITEMS)
    target[0, 1] = 1
    model(ids, target_items=target, reg_weight=0.0).loss.backward()
    grad = model.collab_embeddings.user.weight.grad
    # every user who holds an item is one hop from it: the item head reaches them through A
    holders = np.unique(x.tocoo().row)
    assert (grad[holders].abs().sum(1) > 0).all()


def test_propagation_checks_the_adjacency_shape():
    model, x = propagated_model()
    crow, col, val = normalized_adjacency(x)
    with pytest.raises(ValueError, match="2 \\* graph_train_edges"):
        model.id_propagation.set_tables(crow, col[:-2], val[:-2])
    with pytest.raises(GraphGPT2ConfigError, match="id_propagation_layers"):
        tiny_config(id_propagation_layers=-1)
    with pytest.raises(ConfigError, match="key 'model.graph_edge_topn'"):
        load_config("demo", ["model.graph_edge_topn=0"])


# ---------------------------------------------------------------------------------------------- stored with the weights
def test_off_the_state_dict_is_unchanged_and_on_it_round_trips_strictly(tmp_path):
    plain = set(tiny_model().state_dict())
    model, _ = propagated_model(graph_edge_bias=True, graph_edge_topn=25)
    model.edge_tables.set_tables(*edge_buckets(random_interactions(users=USERS), 25))
    with torch.no_grad():
        model.transformer.h[1].attn.edge_bias.table.normal_()
    extra = set(model.state_dict()) - plain
    assert {k for k in extra if not k.endswith("edge_bias.table")} == {
        "id_propagation.crow_indices", "id_propagation.col_indices", "id_propagation.values",
        "edge_tables.columns", "edge_tables.buckets", "edge_tables.degree_buckets"}
    ids, mask, hop = make_batch(pad=True)
    expected = model(ids, attention_mask=mask, hop_distances=hop).scores
    model.save_pretrained(tmp_path)
    loaded, info = GraphGPT2ForRecommendation.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert torch.equal(loaded.eval()(ids, attention_mask=mask, hop_distances=hop).scores, expected)


# ---------------------------------------------------------------------------------------------- train-only graph
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_data(tmp_path_factory.mktemp("levers") / "tiny")


def test_the_built_models_tables_come_from_the_train_pairs_only(tiny, tmp_path):
    corpus = Corpus(tiny)
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "model.id_propagation_layers=2", "model.graph_edge_bias=true",
                                             "model.graph_edge_topn=15"))
    model = build_model(cfg, corpus)
    # the train pairs read another way: the train recommendation rows' targets (not the graph edges)
    train_lists = [[] for _ in range(corpus.num_users)]
    for ex in corpus.rec_examples("train"):
        train_lists[ex.user] = list(ex.targets)
    train = to_csr(train_lists, corpus.num_items)
    assert model.config.graph_train_edges == train.nnz
    for got, want in zip((model.id_propagation.crow_indices, model.id_propagation.col_indices, model.id_propagation.values),
                         normalized_adjacency(train)):
        np.testing.assert_array_equal(got.numpy(), want)
    for got, want in zip((model.edge_tables.columns, model.edge_tables.buckets, model.edge_tables.degree_buckets),
                         edge_buckets(train, 15)):
        np.testing.assert_array_equal(got.numpy(), want)
    # a test pair is no edge of the stored graph: a leak would show
    ex = next(e for e in corpus.rec_examples("test") if e.targets)
    crow, col = model.id_propagation.crow_indices, model.id_propagation.col_indices
    neighbours = col[crow[ex.user]:crow[ex.user + 1]].tolist()
    assert corpus.num_users + ex.targets[0] not in neighbours


# ---------------------------------------------------------------------------------------------- content into the IDs
def test_item_text_counts_read_each_items_own_text_and_svd_vectors_group_similar_texts(tiny):
    corpus = Corpus(tiny)
    counts = item_token_counts(corpus)
    assert counts.shape == (corpus.num_items, corpus.base_vocab_size)
    # item 0's counts are the labelled (text) tokens of the content rows whose ID token is item 0, read another way
    want = np.zeros(corpus.base_vocab_size)
    for record in corpus.dataset("content", "train"):
        if corpus.num_users in record["node_positions"]:
            for token, label in zip(record["input_ids"], record["labels"]):
                if label != -100:
                    want[token] += 1
    np.testing.assert_array_equal(counts[0].toarray().ravel(), want)
    # two items with the same words get the same vector, an item with other words a different one
    texts = sp.csr_matrix(np.array([[2, 1, 0, 0], [2, 1, 0, 0], [0, 0, 3, 1], [0, 0, 0, 0], [1, 0, 1, 1]], dtype=np.float32))
    vectors = text_svd_vectors(texts, dim=3)
    assert vectors.shape == (5, 3) and not vectors[3].any()  # no text: a zero row
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)
    assert np.linalg.norm(vectors[0] - vectors[2]) > 0.1
    np.testing.assert_array_equal(text_svd_vectors(texts, dim=3), vectors)  # deterministic


def test_init_collab_items_from_text_or_from_the_content_set(tiny):
    corpus = Corpus(tiny)
    cfg = load_config("demo", tiny_overrides(tiny, "unused"))
    model = build_model(cfg, corpus)
    before_users = model.collab_embeddings.user.weight.clone()
    init_collab_items(model, corpus, "text_svd")
    collab, content = model.collab_embeddings.item.weight, model.content_embeddings.item.weight
    assert torch.equal(collab, content)  # the mutual regulariser now anchors collab rows to their text vectors
    vectors = text_svd_vectors(item_token_counts(corpus), collab.shape[1])
    has_text = np.abs(vectors).sum(1) > 0
    assert has_text.all()
    scaled = torch.from_numpy(vectors) * (model.config.initializer_range / vectors.std())
    torch.testing.assert_close(collab, scaled)
    assert torch.equal(model.collab_embeddings.user.weight, before_users)  # users untouched
    other = build_model(cfg, corpus)
    with torch.no_grad():
        other.content_embeddings.item.weight.normal_()
    init_collab_items(other, corpus, "content_set")
    assert torch.equal(other.collab_embeddings.item.weight, other.content_embeddings.item.weight)
    with pytest.raises(ConfigError, match="key 'finetune.init_collab_items'"):
        load_config("demo", ["finetune.init_collab_items=glove"])


def test_text_init_on_a_folder_without_item_text_warns_and_keeps_random_rows(tiny):
    model = build_model(load_config("demo", tiny_overrides(tiny, "unused")), Corpus(tiny))
    before = model.collab_embeddings.item.weight.clone()
    no_text = SimpleNamespace(configs=["interactions", "recommendation"], folder="toys_like")  # e.g. Toys 2014
    with pytest.warns(UserWarning, match="toys_like has no item text"):
        assert init_collab_items(model, no_text, "text_svd") == "text_svd: no item text"
    assert torch.equal(model.collab_embeddings.item.weight, before)
    assert init_collab_items(model, Corpus(tiny), "text_svd") == f"text_svd: {model.config.num_items} items"


def test_text_or_graph_init_takes_the_text_where_there_is_text_else_the_graph(tiny):
    from data_builders.item_graph import graph_svd_vectors

    corpus, cfg = Corpus(tiny), load_config("demo", tiny_overrides(tiny, "unused"))
    text_model, either = build_model(cfg, corpus), build_model(cfg, corpus)
    init_collab_items(text_model, corpus, "text_svd")
    assert init_collab_items(either, corpus, "text_or_graph_svd") == f"text_svd: {corpus.num_items} items"
    assert torch.equal(either.collab_embeddings.item.weight, text_model.collab_embeddings.item.weight)
    # a folder without item text: the train graph's rows, as graph_svd gives them
    train = corpus.interaction_matrix("train")
    no_text = SimpleNamespace(configs=["interactions", "recommendation"], folder="toys_like",
                              interaction_matrix=lambda split: train)
    graph_model = build_model(cfg, corpus)
    init_collab_items(graph_model, corpus, "graph_svd")
    with pytest.warns(UserWarning, match="toys_like has no item text; they start from the graph"):
        assert init_collab_items(either, no_text, "text_or_graph_svd") == f"graph_svd: {corpus.num_items} items"
    assert torch.equal(either.collab_embeddings.item.weight, graph_model.collab_embeddings.item.weight)
    assert torch.equal(either.content_embeddings.item.weight, graph_model.content_embeddings.item.weight)
    assert not torch.equal(either.collab_embeddings.item.weight, text_model.collab_embeddings.item.weight)
    vectors = graph_svd_vectors(train, cfg.model.n_embd)
    torch.testing.assert_close(either.collab_embeddings.item.weight,
                               torch.from_numpy(vectors * (either.config.initializer_range / vectors.std())))


def test_finetuning_with_every_lever_saves_a_model_that_scores_as_it_was_validated(tiny, tmp_path):
    from train.finetune import finetune
    from train.modeling_io import load_model

    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "pretrain.do_pretrain=false", "model.id_propagation_layers=2",
                                             "model.graph_edge_bias=true", "model.graph_edge_topn=15",
                                             "finetune.init_collab_items=text_svd", "finetune.epochs=1",
                                             "model.n_layer=2"))
    result = finetune(cfg)
    assert result.init_collab_items == f"text_svd: {Corpus(tiny).num_items} items"
    best = load_model(result.model_dir)
    want = normalized_adjacency(Corpus(tiny).interaction_matrix("train"))
    np.testing.assert_array_equal(best.id_propagation.col_indices.numpy(), want[1])
    # trained from 0 in layer 0; the last layer's bias reaches only ID-token rows, which the readout (the prompt's
    # last, text token) does not read, so it keeps no gradient
    assert best.transformer.h[0].attn.edge_bias.table.abs().sum() > 0
    from accelerate import Accelerator

    from train.evaluate import evaluate_model

    again = evaluate_model(Accelerator(cpu=True), best.eval(), Corpus(tiny), "validation", cfg)
    assert again["recall@20"] == pytest.approx(result.validation["recall@20"], abs=1e-9)


def test_a_new_score_term_lever_is_one_class_and_one_table_entry(tiny, tmp_path, monkeypatch):
    """The lever protocol: a popularity term, declared once, is built, fitted on the train pairs, scored, trained at
    the ID learning rate, kept in full under PEFT and saved/reloaded strictly, with no other code."""
    import modeling_graphgpt2.modeling_graphgpt2 as mg
    import train.common as common

    class PopularityTerm(mg.GraphScoreTerm):
        attribute, tables, scale_field = "popularity_term", ("counts",), "graph_lowpass_scale_init"

        @classmethod
        def enabled(cls, config):
            return True

        def __init__(self, config):
            super().__init__(config)
            self.register_buffer("counts", torch.zeros(config.num_items))

        def raw(self, item_index, is_item):
            return self.counts.expand(item_index.shape[0], -1)

    monkeypatch.setattr(mg, "GRAPH_LEVERS", mg.GRAPH_LEVERS + (PopularityTerm,))
    monkeypatch.setitem(common.LEVER_TABLES, "popularity_term",
                        lambda x, conf: (np.asarray(x.sum(axis=0), dtype=np.float32).ravel(),))
    corpus = Corpus(tiny)
    cfg = load_config("demo", tiny_overrides(tiny, tmp_path, "model.graph_lowpass_scale_init=0.5"))
    seconds = {}
    model = build_model(cfg, corpus, seconds)
    train = corpus.interaction_matrix("train")
    np.testing.assert_array_equal(model.popularity_term.counts.numpy(), np.asarray(train.sum(axis=0)).ravel())
    assert "popularity_term_fit_s" in seconds and model.popularity_term.scale.item() == 0.5
    assert not model.popularity_term.scale.requires_grad  # a GraphScoreTerm's scale is fixed unless learn_scale
    ids_group = next(g for g in model.optimizer_groups(1e-3, 1e-4, 0.1) if g["name"] == "id_embeddings")
    assert not any(p is model.popularity_term.scale for p in ids_group["params"])  # frozen: in no group
    assert "popularity_term" in model.peft_modules_to_save()
    first_user = corpus.base_vocab_size
    ids = torch.tensor([[first_user, first_user + corpus.num_users]])  # a user token, then the first item
    out = model.eval()(ids, task="rec")
    counts = model.popularity_term.counts
    torch.testing.assert_close(out.score_terms["popularity_term"][0], counts / counts.std())
    model.save_pretrained(tmp_path / "m")
    loaded, info = type(model).from_pretrained(tmp_path / "m", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(loaded.popularity_term.counts, counts)
