"""Property test over the readers (issue 9): hostile input gives a named error or counted skips, never another
exception and never a hang.

Fixed seed, a bounded number of cases per format (Amazon 2014 raw, Amazon 2018 raw, RecBole atomic): random
truncation (plain and gzip), random bytes in fields, very long and deeply nested values, wrong JSON types,
odd encodings (latin-1, UTF-16 with BOM, invalid UTF-8). Every read that succeeds must hold only sane values
(ratings in 1-5, text without control characters, storable as UTF-8), and the split built from it must succeed or
raise a ValueError that says why. The time bound is a hang detector (an alarm far above the normal milliseconds),
not a performance assertion.
"""
from __future__ import annotations

import gzip
import json
import random
import re
import signal
from pathlib import Path

import pytest

from data_builders.preprocess import build_split
from data_builders.readers import DataFormatError, read_source
from data_builders.textclean import has_control_chars

SEED = 20261201
CASES_PER_FORMAT = int(__import__("os").environ.get("FUZZ_CASES", 40))
HANG_SECONDS = 30  # a case takes milliseconds; only a hang (e.g. quadratic blow-up) gets near this


def _reviews(rng: random.Random, n: int = 30) -> list[dict]:
    return [
        {"reviewerID": f"U{rng.randrange(8)}", "asin": f"I{rng.randrange(6)}", "overall": rng.choice([1.0, 3.0, 4.0, 5.0]),
         "unixReviewTime": 1_400_000_000 + k, "reviewText": f"Sound is great é {k}"}
        for k in range(n)
    ]


def _meta_2014(j: int) -> dict:
    return {"asin": f"I{j}", "title": f"Cable {j} ü", "brand": "Acme", "categories": [["Musical Instruments", "Cables"]],
            "description": "Nice <b>cable</b>", "price": 9.5}


def _meta_2018(j: int) -> dict:
    return {"asin": f"I{j}", "title": f"Card {j}", "brand": "Acme", "category": ["Gift Cards", "Gift Cards"],
            "description": ["<p>Nice</p>", "card"], "price": "$25.00"}


_DEEP = "__deeply_nested__"


def _hostile_value(rng: random.Random):
    kind = rng.randrange(9)
    if kind == 0:
        return "x" * rng.choice([10_000, 200_000])  # very long, unbroken
    if kind == 1:
        return _DEEP + str(rng.choice([50, 5000, 100_000]))  # nesting depth, spliced in as raw text below
    if kind == 2:
        return rng.choice([None, True, [], {}, 1e308, -1, 10**30, "", "nan"])
    if kind == 3:
        return "".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randrange(1, 40)))  # controls, bidi, CJK
    if kind == 4:
        return rng.choice(["item_3 <|endoftext|> user_0", "\x1b[2J\x00\u202e", "\ud800", "<span class=\"a"])
    if kind == 5:
        return {"nested": {"dict": [1, 2, {"x": "y"}]}}
    if kind == 6:
        return rng.uniform(-1e6, 1e6)
    if kind == 7:
        return "\t\n\r"  # separators inside a field
    return rng.choice([1, 5, "4.0", 99, -5, 1e300])


def _json_lines(records: list[dict], rng: random.Random) -> bytes:
    lines = []
    for rec in records:
        rec = dict(rec)
        if rng.random() < 0.3:
            rec[rng.choice(list(rec))] = _hostile_value(rng)
        line = json.dumps(rec, ensure_ascii=rng.random() < 0.5)
        line = re.sub(f'"{_DEEP}(\\d+)"', lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), line)
        lines.append(line)
    text = "\n".join(lines) + "\n"
    return text.encode("utf-8", "surrogatepass")


def _tsv(header: list[str], rows: list[list[str]], rng: random.Random) -> bytes:
    out = ["\t".join(header)]
    for row in rows:
        row = list(row)
        if rng.random() < 0.3:
            v = _hostile_value(rng)
            row[rng.randrange(len(row))] = v if isinstance(v, str) else json.dumps(v)
        out.append("\t".join(row))
    return ("\n".join(out) + "\n").encode("utf-8", "surrogatepass")


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One of: nothing, random bytes spliced in, a random truncation, a foreign encoding."""
    kind = rng.randrange(6)
    if kind == 1 and data:
        k = rng.randrange(len(data))
        return data[:k] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20))) + data[k:]
    if kind == 2:
        return data[: rng.randrange(len(data) + 1)]
    if kind == 3:
        return data.decode("utf-8", "replace").encode("latin-1", "replace")
    if kind == 4:
        return data.decode("utf-8", "replace").encode("utf-16")  # with BOM
    if kind == 5 and data:
        k = rng.randrange(len(data))
        return data[:k] + b"\xc3\x28\xff\xfe" + data[k:]  # invalid UTF-8
    return data


def _maybe_gzip(data: bytes, rng: random.Random) -> tuple[bytes, bool]:
    if rng.random() < 0.5:
        return data, False
    z = gzip.compress(data)
    if rng.random() < 0.5:
        z = z[: rng.randrange(len(z) + 1)]  # truncated stream
    elif rng.random() < 0.3 and len(z) > 20:
        k = rng.randrange(10, len(z))
        z = z[:k] + bytes([z[k] ^ 0xFF]) + z[k + 1 :]  # corrupt stream
    return z, True


def _write_case(folder: Path, fmt: str, rng: random.Random) -> Path:
    folder.mkdir()
    if fmt == "atomic":
        inter = _tsv(["user_id:token", "item_id:token", "rating:float", "timestamp:float"],
                     [[r["reviewerID"], r["asin"], str(r["overall"]), str(r["unixReviewTime"])] for r in _reviews(rng)], rng)
        item = _tsv(["item_id:token", "title:token_seq", "brand:token", "categories:token_seq", "price:float"],
                    [[f"I{j}", f"Title {j}", "Acme", "A|B", "9.5"] for j in range(6)], rng)
        (folder / "F.inter").write_bytes(_mutate_bytes(inter, rng))
        if rng.random() < 0.8:
            (folder / "F.item").write_bytes(_mutate_bytes(item, rng))
        return folder
    reviews_name, meta = ("reviews_F_5.json", _meta_2014) if fmt == "amazon2014" else ("F_5.json", _meta_2018)
    for name, records in ((reviews_name, _reviews(rng)), ("meta_F.json", [meta(j) for j in range(6)])):
        if name.startswith("meta_") and rng.random() < 0.2:
            continue  # missing metadata
        data, zipped = _maybe_gzip(_mutate_bytes(_json_lines(records, rng), rng), rng)
        (folder / (name + (".gz" if zipped else ""))).write_bytes(data)
    return folder


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"a reader case ran past {HANG_SECONDS} s")


@pytest.mark.parametrize("fmt", ["amazon2014", "amazon2018", "atomic"])
def test_hostile_files_give_named_errors_or_counted_skips(tmp_path: Path, fmt: str):
    rng = random.Random(f"{SEED}-{fmt}")
    outcomes = {"read": 0, "error": 0, "skips": 0, "changed": 0}
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(CASES_PER_FORMAT):
            folder = _write_case(tmp_path / f"case{case}", fmt, rng)
            for strict in (False, True):
                signal.alarm(HANG_SECONDS)
                try:
                    raw = read_source(folder, strict=strict)
                except DataFormatError as err:  # the one named error: file, line, field
                    assert str(err).startswith(str(folder)), err
                    outcomes["error"] += 1
                    continue
                finally:
                    signal.alarm(0)
                outcomes["read"] += 1
                outcomes["skips"] += raw.report.total_skipped
                outcomes["changed"] += sum(raw.report.changed.values())
                if strict:
                    assert raw.report.total_skipped == 0
                _assert_sane(raw)
                try:
                    build_split(raw, k_core=0)
                except ValueError as err:  # e.g. "a user with fewer than 3 items": named, not a crash
                    assert str(err)
    finally:
        signal.signal(signal.SIGALRM, old)
    # the cases really exercise both outcomes (a generator that only made valid files would prove nothing)
    assert outcomes["read"] > 0 and outcomes["error"] > 0 and outcomes["skips"] > 0, outcomes


def _assert_sane(raw) -> None:
    for r in raw.interactions:
        assert r.rating is None or 1.0 <= r.rating <= 5.0
        assert r.timestamp is None or abs(r.timestamp) < 2**62
        for s in (r.user, r.item):
            assert s and not has_control_chars(s)
            s.encode("utf-8")
    texts = list(raw.reviews.values())
    for m in raw.items.values():
        texts += [t for t in (m.title, m.brand, m.description) if t] + list(m.categories)
        assert m.price is None or m.price == m.price
    for t in texts:
        assert isinstance(t, str) and not has_control_chars(t) and "<|endoftext|>" not in t
        t.encode("utf-8")


def test_cleaned_text_never_tokenises_to_an_id_or_special_token():
    """Property: any mix of ID-token, EOS and control-character pieces, once cleaned, encodes to plain text ids
    (a small trained byte-level BPE: the same added-token matching as GPT-2's, without its 7 s load)."""
    from data_builders.textclean import clean_text
    from data_builders.tokenization import add_id_tokens, train_byte_level_bpe

    tok = train_byte_level_bpe(["item user endoftext hello world"] * 5, vocab_size=300)
    base = add_id_tokens(tok, 12, 12)
    pieces = ["item", "user", "_", "1", "3", "11", "<|", "|>", "endoftext", " ", "\x00", "\u202e", "\x1b", "x", ".", "\n", "é"]
    rng = random.Random(SEED)
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 30))) for _ in range(500)]
    texts += ["item_1", " user_11 ", "<|endoftext|>", "item\x00_3", "<|endo\u202eftext|>", "item_<|endoftext|>3"]
    cleaned = [clean_text(t)[0] for t in texts]
    special = set(tok.all_special_ids)
    for raw, text, ids in zip(texts, cleaned, tok(cleaned, add_special_tokens=False)["input_ids"]):
        assert all(i < base and i not in special for i in ids), (raw, text)
        assert not has_control_chars(text)
