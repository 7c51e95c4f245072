"""Tokenizer: DESIGN.md id layout, ID tokens atomic, no stray space tokens, saved tokenizer == builder ids."""
import pytest

from data_builders.prompts import RecPromptEncoder
from data_builders.tokenization import add_id_tokens, build_tokenizer, load_tokenizer, save_tokenizer, tokenizer_sha256

U, I = 7, 11


@pytest.fixture(scope="module")
def gpt2(gpt2_tokenizer_dir):
    return build_tokenizer(U, I, source=gpt2_tokenizer_dir)


def test_id_layout_gpt2(gpt2):
    tok, base = gpt2
    assert base == 50257 and len(tok) == base + U + I
    for u in range(U):
        assert tok.convert_tokens_to_ids(f"user_{u}") == base + u
    for j in range(I):
        assert tok.convert_tokens_to_ids(f"item_{j}") == base + U + j
    assert tok.pad_token_id is not None
    with pytest.raises(ValueError, match="already has ID tokens"):
        add_id_tokens(tok, U, I)


def test_id_tokens_atomic_and_spacing(gpt2):
    tok, base = gpt2
    ids = tok("user_3 has interacted with item_1 item_10, user_3 will interact with", add_special_tokens=False)["input_ids"]
    assert ids[0] == base + 3 and ids[4:6] == [base + U + 1, base + U + 10]  # item_10 is not item_1 + "0"
    assert 220 not in ids  # no stray 'Ġ' token between ID tokens
    assert tok.convert_ids_to_tokens(ids[1:4]) == ["Ġhas", "Ġinteracted", "Ġwith"]
    # ID-like strings glued to words stay text; an out-of-range id stays text
    text_ids = tok("xitem_5 item_5x item_99", add_special_tokens=False)["input_ids"]
    assert all(i < base for i in text_ids)
    # free text is tokenised exactly like plain GPT-2
    assert tok(" Hello world", add_special_tokens=False)["input_ids"] == [18435, 995]


def test_saved_tokenizer_reproduces_builder_ids(gpt2, tmp_path):
    tok, base = gpt2
    sha = save_tokenizer(tok, tmp_path / "tok")
    assert sha == tokenizer_sha256(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok", expected_sha256=sha)
    enc = RecPromptEncoder(tok, base, U, I)
    for user, items in [(0, [1, 2, 3]), (6, []), (None, [10, 0])]:
        out = enc.encode(user, items)
        assert back(enc.text(user, items), add_special_tokens=False)["input_ids"] == out["input_ids"].tolist()
    with pytest.raises(ValueError, match="another build"):
        load_tokenizer(tmp_path / "tok", expected_sha256="0" * 64)


def test_trained_bpe_layout_and_roundtrip(tmp_path):
    texts = ["Guitar strings with a bright tone", "Studio microphone for vocals", "The title of item_0 is:"] * 50
    tok, base = build_tokenizer(U, I, train_texts=texts, vocab_size=400)
    assert base == len(tok) - U - I and base <= 400
    assert tok.convert_tokens_to_ids("item_0") == base + U
    s = "user_2 wrote the following review for item_4: bright guitar strings"
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert ids[0] == base + 2 and base + U + 4 in ids
    save_tokenizer(tok, tmp_path / "bpe")
    assert load_tokenizer(tmp_path / "bpe")(s, add_special_tokens=False)["input_ids"] == ids
    assert tok.decode([i for i in ids if i < base]).strip().endswith("bright guitar strings")
