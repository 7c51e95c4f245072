"""No leakage on real data (Musical Instruments 2014, full build): no validation/test (user, item) pair appears in
any pre-training or fine-tuning input, in any review prompt, or as a graph edge."""
import numpy as np
import pytest

from data_builders.corpus import Corpus
from data_builders.folder import build_dataset_folder
from data_builders.preprocess import build_split
from data_builders.readers import read_source

PRETRAIN = ("content", "review", "second_order", "interactions")


@pytest.fixture(scope="module")
def mi(shared_data, gpt2_tokenizer_dir, tmp_path_factory):
    split = build_split(read_source(shared_data / "amazon-musical-instruments-2014"))
    out = tmp_path_factory.mktemp("mi") / "mi"
    build_dataset_folder(split, out, tokenizer_source=gpt2_tokenizer_dir)
    return split, Corpus(out)


def held_out(split) -> set[tuple[int, int]]:
    return {tuple(p) for s in ("valid", "test") for p in split.pairs(s).tolist()}


def row_pairs(row, U: int) -> set[tuple[int, int]]:
    """(user, item) pairs an input row puts together: its user with every item token in it."""
    pos = np.asarray(row["node_positions"])
    users = set(pos[(pos >= 0) & (pos < U)].tolist())
    if row["user"] >= 0:
        users.add(row["user"])
    items = set((pos[pos >= U] - U).tolist())
    return {(u, j) for u in users for j in items}


def leaks(rows, U, banned) -> list:
    return [(r["prompt"][:60], sorted(row_pairs(r, U) & banned)[:3]) for r in rows if row_pairs(r, U) & banned]


def test_graph_edges_are_exactly_train_pairs(mi):
    split, corpus = mi
    edges = {tuple(e) for e in corpus.hops.graph.edges.tolist()}
    assert edges == {tuple(p) for p in split.pairs("train").tolist()}
    assert not edges & held_out(split)
    # and the bias sees no held-out edge: a user and its held-out item are never at distance 1
    U = split.num_users
    for u, j in list(held_out(split))[:500]:
        assert corpus.hops.distance(u, U + j) != 1


def test_no_held_out_pair_in_any_training_input(mi):
    split, corpus = mi
    U, banned = split.num_users, held_out(split)
    checked = 0
    for config in PRETRAIN:
        rows = corpus.dataset(config).to_list()
        assert not leaks(rows, U, banned), config
        checked += len(rows)
    rec_train = corpus.dataset("recommendation", "train").to_list()
    assert not leaks(rec_train, U, banned)
    assert checked > 3000 and len(rec_train) == U
    # the checker does catch a planted leak
    u, j = next(iter(banned))
    planted = {"prompt": "x", "user": u, "node_positions": [-1, U + j]}
    assert leaks([planted], U, banned)


def test_eval_inputs_hold_only_train_items(mi):
    split, corpus = mi
    for name, truth in (("validation", split.valid), ("test", split.test)):
        for r in corpus.dataset("recommendation", name).to_list():
            u = r["user"]
            assert sorted(r["history"]) == sorted(split.train[u].tolist())
            assert set(r["history"]).isdisjoint(set(split.valid[u].tolist()) | set(split.test[u].tolist()))
            assert r["targets"] == truth[u].tolist()


def test_review_prompts_train_pairs_only(mi):
    split, corpus = mi
    reviews = corpus.dataset("review").to_list()
    train = {tuple(p) for p in split.pairs("train").tolist()}
    pairs = {row_pairs(r, split.num_users).pop() for r in reviews}
    assert pairs <= train and len(pairs) == len(reviews)
    texts = {r["main"].strip() for r in reviews}
    train_texts = {split.reviews.get(p, "").strip() for p in train}
    secret = [split.reviews[p].strip() for p in held_out(split) if p in split.reviews]
    assert len(secret) > 500
    assert not [t for t in secret if t in texts and t not in train_texts]
