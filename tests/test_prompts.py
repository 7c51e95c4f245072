"""Prompt corpora on a hand-made split: templates, train-only reviews, chunked groups, aligned node positions."""
import re

import numpy as np
import pytest

from data_builders.prompts import PromptConfig, RecPromptEncoder, build_corpora, chunk, item_groups
from data_builders.records import ItemMeta, SplitDataset
from data_builders.tokenization import build_tokenizer

ID_RE = re.compile(r"\b(user|item)_(\d+)\b")


def tiny_split() -> SplitDataset:
    root = "Musical Instruments"
    items = [
        ItemMeta(title="Nylon Strings &amp; More", brand="Fretline", categories=[root, "Guitars"], description="Warm tone.", price=4.5),
        ItemMeta(title="Capo", brand="Fretline", categories=[root, "Guitars"], price=None),
        ItemMeta(title="Drumsticks", brand="Beatforge", categories=[root, "Drums"], description=""),
        ItemMeta(title=None, brand="Fretline", categories=[root, "Guitars"], price=12.0),
        ItemMeta(title="Pedal", brand="Solo", categories=[root, "Keys"]),
        ItemMeta(),
        ItemMeta(title="Pick", brand="Fretline", categories=[root, "Guitars"]),
    ]
    train = [np.array([0, 1, 3], np.int32), np.array([2, 4], np.int32), np.array([5, 6, 0], np.int32)]
    valid = [np.array([2], np.int32), np.array([0], np.int32), np.array([1], np.int32)]
    test = [np.array([4], np.int32), np.array([6], np.int32), np.array([3], np.int32)]
    reviews = {(0, 0): "great strings", (0, 1): "fine", (0, 2): "VALID SECRET", (0, 4): "TEST SECRET", (1, 2): "loud", (2, 1): "VALID SECRET"}
    return SplitDataset("tiny", ["a", "b", "c"], [f"i{j}" for j in range(7)], train, valid, test, items, reviews, {"split_hash": "x"})


@pytest.fixture(scope="module")
def built(gpt2_tokenizer_dir):
    split = tiny_split()
    tok, base = build_tokenizer(split.num_users, split.num_items, source=gpt2_tokenizer_dir)
    corpora, stats = build_corpora(split, tok, base, PromptConfig(max_group_items=3))
    return split, tok, base, corpora, stats


def all_rows(corpora):
    return [(c, s, r) for c, splits in corpora.items() for s, rows in splits.items() for r in rows]


def test_every_row_aligned_and_ids_atomic(built):
    split, tok, base, corpora, _ = built
    rows = all_rows(corpora)
    assert len(rows) > 30
    for config, s, r in rows:
        ids, pos, lab = np.asarray(r["input_ids"]), np.asarray(r["node_positions"]), np.asarray(r["labels"])
        assert len(ids) == len(pos) == len(lab)
        np.testing.assert_array_equal(pos, np.where(ids >= base, ids - base, -1))
        # each user_/item_ mention is exactly one ID token, in order, with the right node
        mentions = [(int(n) if k == "user" else split.num_users + int(n)) for k, n in ID_RE.findall(r["prompt"] + r["main"])]
        assert pos[pos >= 0].tolist() == mentions, (config, r["prompt"])
        # labels: -100 on the prompt, the main's ids after it; joint tokenisation gives the same ids
        n_prompt = len(tok(r["prompt"], add_special_tokens=False)["input_ids"])
        assert (lab[:n_prompt] == -100).all()
        np.testing.assert_array_equal(lab[n_prompt:], ids[n_prompt:])
        assert tok(r["prompt"] + r["main"], add_special_tokens=False)["input_ids"] == ids.tolist()


def test_content_templates(built):
    _, _, _, corpora, _ = built
    rows = {(r["kind"], r["prompt"]): r["main"] for r in corpora["content"]["train"]}
    assert rows[("title", "The title of item_0 is:")] == " Nylon Strings &amp; More"  # text as given by the reader
    assert rows[("price", "The price of item_0 is:")] == " $4.50"
    assert rows[("categories", "The categories of item_2 are:")] == " Musical Instruments, Drums"
    assert rows[("brand", "The brand of item_4 is:")] == " Solo"
    assert ("description", "The description of item_2 is:") not in rows  # empty text skipped
    assert not any("item_5" in p for _, p in rows)  # no metadata, no rows


def test_reviews_train_pairs_only(built):
    split, _, _, corpora, _ = built
    reviews = corpora["review"]["train"]
    assert [(r["user"], r["prompt"]) for r in reviews] == [
        (0, "user_0 wrote the following review for item_0:"),
        (0, "user_0 wrote the following review for item_1:"),
        (1, "user_1 wrote the following review for item_2:"),
    ]
    assert not any("SECRET" in r["main"] for r in reviews)


def test_second_order_groups_chunked_not_truncated(built):
    split, _, _, corpora, _ = built
    groups = [r for r in corpora["second_order"]["train"]]
    brand = [r for r in groups if r["kind"] == "brand_group"]
    # Fretline has items 0,1,3,6 -> two chunks of 2 (max 3); Solo/Beatforge are singletons -> skipped
    assert [r["prompt"] for r in brand] == ["Items item_0, item_1 share the brand:", "Items item_3, item_6 share the brand:"]
    assert all(r["main"] == " Fretline" for r in brand)
    cats = [r for r in groups if r["kind"] == "category_group"]
    assert {r["main"] for r in cats} == {" Guitars"}  # root shared by all excluded, singletons skipped
    assert item_groups(split, "category") == {"Guitars": [0, 1, 3, 6]}
    parts = chunk(list(range(101)), 50)
    assert sum(parts, []) == list(range(101)) and max(map(len, parts)) <= 50 and min(map(len, parts)) >= 2


def test_interactions_and_recommendation(built):
    split, tok, base, corpora, _ = built
    inter = corpora["interactions"]["train"]
    assert inter[0]["prompt"] == "user_0 has interacted with" and inter[0]["main"] == " item_0 item_1 item_3"
    assert np.asarray(inter[0]["labels"])[-3:].tolist() == [base + split.num_users + j for j in (0, 1, 3)]
    rec = corpora["recommendation"]
    for name, targets in (("train", split.train), ("validation", split.valid), ("test", split.test)):
        assert len(rec[name]) == split.num_users
        for r in rec[name]:
            assert r["history"].tolist() == split.train[r["user"]].tolist()
            assert r["targets"].tolist() == targets[r["user"]].tolist()
            assert r["prompt"].endswith(f", user_{r['user']} will interact with") and (np.asarray(r["labels"]) == -100).all()


def test_rec_encoder_truncates_left_and_handles_unseen_user(built):
    split, tok, base, _, _ = built
    enc = RecPromptEncoder(tok, base, split.num_users, split.num_items, max_length=12)
    out = enc.encode(1, [0, 1, 2, 3, 4, 5, 6])
    assert len(out["input_ids"]) == 12
    assert out["history"].tolist() == [4, 5, 6]  # 9 template tokens + 3 items; oldest cut, trigger kept
    assert tok.convert_ids_to_tokens(out["input_ids"][-3:].tolist()) == ["Ġwill", "Ġinteract", "Ġwith"]
    anon = RecPromptEncoder(tok, base, split.num_users, split.num_items).encode(None, [2, 6])
    assert anon["node_positions"][anon["node_positions"] >= 0].tolist() == [split.num_users + 2, split.num_users + 6]
    assert tok(enc.text(None, [2, 6]), add_special_tokens=False)["input_ids"] == anon["input_ids"].tolist()
    with pytest.raises(ValueError, match="unseen user"):
        enc.encode(99, [1])
    with pytest.raises(ValueError, match="item index"):
        enc.encode(0, [7])


def test_prompt_config_is_the_ablation_switch(built):
    split, tok, base, _, _ = built
    noghip, _ = build_corpora(split, tok, base, PromptConfig(configs=("review", "interactions", "recommendation")))
    assert set(noghip) == {"review", "interactions", "recommendation"}
    titles_only, _ = build_corpora(split, tok, base, PromptConfig(configs=("content",), content_fields=("title",)))
    assert {r["kind"] for r in titles_only["content"]["train"]} == {"title"}
    with pytest.raises(ValueError, match="unknown prompt config"):
        PromptConfig(configs=("content", "bogus"))
