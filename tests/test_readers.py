"""Readers on small files written here: every format, strict and lenient, every bad-input case."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from data_builders.readers import DataFormatError, read_amazon2014, read_source
from data_builders.sources import DownloadUnavailable, fetch, source_files


def _gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
    return path


def _review(user="U1", item="I1", rating=5.0, ts=1400000000, text="Great &amp; cheap") -> str:
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": ts, "reviewText": text})


GOOD_2014 = [
    _review("U1", "I1", 5.0, 3),
    _review("U1", "I2", 2.0, 1, text=""),
    _review("U2", "I1", 4.0, 2, text="  "),
]


@pytest.fixture
def folder_2014(tmp_path: Path) -> Path:
    _gz(tmp_path / "reviews_Toy_Cat_5.json.gz", GOOD_2014)
    # 2014 metadata in the wild: Python literals, single quotes, not strict JSON
    _gz(
        tmp_path / "meta_Toy_Cat.json.gz",
        [
            "{'asin': 'I1', 'title': 'Rock &amp; Roll Cable', 'brand': 'L&#39;Acme', "
            "'categories': [['Musical Instruments', 'Cables'], ['Other', 'Path']], 'description': 'Nice <b>cable</b>', 'price': 9.5}",
            "{'asin': 'I2', 'title': '', 'categories': [['Musical Instruments']]}",
            "{'asin': 'NOBODY', 'title': 'never bought'}",
        ],
    )
    return tmp_path


def test_amazon2014_python_literal_metadata(folder_2014: Path):
    raw = read_source(folder_2014)
    assert raw.source["format"] == "amazon2014" and raw.name == "Toy_Cat"
    assert [(r.user, r.item, r.rating, r.timestamp) for r in raw.interactions] == [
        ("U1", "I1", 5.0, 3), ("U1", "I2", 2.0, 1), ("U2", "I1", 4.0, 2)]
    meta = raw.items["I1"]
    assert meta.title == "Rock & Roll Cable" and meta.brand == "L'Acme"
    assert meta.categories == ["Musical Instruments", "Cables"]  # first path only
    assert meta.description == "Nice cable" and meta.price == 9.5
    assert raw.items["I2"].title is None  # empty text -> None
    assert "NOBODY" not in raw.items  # metadata of items without interactions is not kept
    # empty review texts are skipped, entities unescaped
    assert raw.reviews == {("U1", "I1"): "Great & cheap"}
    assert raw.report.total_skipped == 0
    assert all(len(f["sha256"]) == 64 for f in raw.source["files"])


def test_amazon2014_strict_json_metadata_and_missing_meta(tmp_path: Path):
    _gz(tmp_path / "reviews_A_5.json.gz", GOOD_2014)
    raw = read_source(tmp_path)
    assert raw.items == {} and raw.source["metadata"].startswith("missing")
    _gz(tmp_path / "meta_A.json.gz", [json.dumps({"asin": "I2", "title": "T", "categories": [["X", "Y"]]})])
    raw = read_source(tmp_path, strict=True)
    assert raw.items["I2"].categories == ["X", "Y"] and raw.source["metadata"] == "read"


def test_amazon2018_html_description_and_duplicates(tmp_path: Path):
    dup = _review("U1", "I1", 5.0, 10, text="first")
    _gz(tmp_path / "Gift_Cards_5.json.gz", [dup, dup, _review("U2", "I1", 3.0, 11)])
    _gz(
        tmp_path / "meta_Gift_Cards.json.gz",
        [json.dumps({
            "asin": "I1", "title": "Card &amp; Co", "brand": "Acme", "category": ["Gift Cards", "Gift Cards", "Restaurants"],
            "description": ["<p>Use at <b>any</b> store.</p>", "", "Caf&eacute; &lt;i&gt;ok&lt;/i&gt;"], "price": "$25.00",
        }),
         json.dumps({"asin": "I1", "title": "again"})],
    )
    raw = read_source(tmp_path)
    assert raw.source["format"] == "amazon2018"
    assert len(raw.interactions) == 3  # duplicates are read; build_split removes and counts them
    meta = raw.items["I1"]
    assert meta.title == "Card & Co"
    assert meta.categories == ["Gift Cards", "Restaurants"]
    assert meta.description == "Use at any store. Café ok"
    assert meta.price == 25.0
    assert raw.report.skipped == {"duplicate_metadata": 1}


def test_atomic_typed_headers(tmp_path: Path):
    (tmp_path / "Shop.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t5\t100\nu1\ti2\t3.5\t50\n")
    (tmp_path / "Shop.item").write_text(
        "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\tprice:float\n"
        "i1\tL&#39;Oreal Gel\t\tHair Care | Styling Products\t4.25\n")
    raw = read_source(tmp_path)
    assert raw.source["format"] == "atomic" and raw.name == "Shop"
    assert [(r.user, r.item, r.rating, r.timestamp) for r in raw.interactions] == [("u1", "i1", 5.0, 100), ("u1", "i2", 3.5, 50)]
    assert raw.items["i1"].title == "L'Oreal Gel" and raw.items["i1"].brand is None
    assert raw.items["i1"].categories == ["Hair Care", "Styling Products"] and raw.items["i1"].price == 4.25


def test_atomic_without_rating_or_item_file(tmp_path: Path):
    (tmp_path / "X.inter").write_text("user_id:token\titem_id:token\nu1\ti1\n")
    raw = read_source(tmp_path / "X.inter")
    assert raw.interactions[0].rating is None and raw.interactions[0].timestamp is None
    assert raw.items == {} and raw.source["has_rating"] is False


# ---- bad input --------------------------------------------------------------------------------------


def _truncated(path: Path) -> Path:
    lines = [_review(f"U{k}", f"I{k % 7}", 5.0, k, text="x" * 200) for k in range(400)]
    data = gzip.compress("".join(line + "\n" for line in lines).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_CASES = {
    # name: (lines, field named in the strict error, lenient reason, line number)
    "malformed_json": ([_review(), '{"reviewerID": "U2", "asin": ', _review("U3")], "<line>", "malformed_json", 2),
    "missing_user": ([_review(), json.dumps({"asin": "I1", "overall": 5.0}), _review("U3")], "reviewerID", "missing_field", 2),
    "missing_item": ([_review(), _review("U3"), json.dumps({"reviewerID": "U2", "overall": 5.0})], "asin", "missing_field", 3),
    "non_numeric_rating": ([_review(rating="five"), _review("U3")], "overall", "non_numeric_rating", 1),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_lines_strict_and_lenient(tmp_path: Path, case: str):
    lines, field, reason, lineno = BAD_CASES[case]
    path = _gz(tmp_path / "reviews_B_5.json.gz", lines)
    with pytest.raises(DataFormatError) as err:
        read_amazon2014(path, strict=True)
    assert err.value.line == lineno and err.value.field == field
    assert f"reviews_B_5.json.gz:{lineno}: {field}:" in str(err.value)
    raw = read_amazon2014(path)  # lenient: skip counted, everything else kept
    assert raw.report.skipped == {reason: 1}
    assert len(raw.interactions) == len(lines) - 1
    assert raw.report.examples[0].startswith(f"reviews_B_5.json.gz:{lineno}: {field}:")


def test_truncated_gzip(tmp_path: Path):
    path = _truncated(tmp_path / "reviews_T_5.json.gz")
    with pytest.raises(DataFormatError, match=r"reviews_T_5\.json\.gz:\d+: <file>: compressed file is truncated or corrupt"):
        read_amazon2014(path, strict=True)
    raw = read_amazon2014(path)
    assert raw.report.skipped == {"truncated_file": 1}
    assert 0 < len(raw.interactions) < 400


def test_atomic_bad_rating_and_columns(tmp_path: Path):
    path = tmp_path / "Y.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\nu1\ti1\tabc\nu2\ti2\nu3\ti3\t4\n")
    with pytest.raises(DataFormatError, match=r"Y\.inter:2: rating: not a number"):
        read_source(path, strict=True)
    raw = read_source(path)
    assert raw.report.skipped == {"non_numeric_rating": 1, "wrong_column_count": 1}
    assert [r.user for r in raw.interactions] == ["u3"]
    (tmp_path / "Z.inter").write_text("user:token\titem_id:token\nu1\ti1\n")
    with pytest.raises(DataFormatError, match=r"Z\.inter:1: user_id: missing required column"):
        read_source(tmp_path / "Z.inter")


@pytest.mark.parametrize("strict", [True, False])
def test_empty_files(tmp_path: Path, strict: bool):
    (tmp_path / "reviews_E_5.json.gz").write_bytes(gzip.compress(b""))
    with pytest.raises(DataFormatError, match="file is empty"):
        read_source(tmp_path, strict=strict)
    (tmp_path / "reviews_E_5.json.gz").unlink()
    (tmp_path / "E.inter").write_text("")
    with pytest.raises(DataFormatError, match="file is empty"):
        read_source(tmp_path, strict=strict)
    (tmp_path / "E.inter").write_text("user_id:token\titem_id:token\n")  # header only
    with pytest.raises(DataFormatError, match="no valid interactions"):
        read_source(tmp_path, strict=strict)


def test_unknown_and_ambiguous_format(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "ratings.csv").write_text("u,i\n")
    with pytest.raises(DataFormatError, match=r"cannot recognise the data format.*notes\.txt.*ratings\.csv"):
        read_source(tmp_path)
    (tmp_path / "A.inter").write_text("user_id:token\titem_id:token\nu\ti\n")
    (tmp_path / "B.inter").write_text("user_id:token\titem_id:token\nu\ti\n")
    with pytest.raises(DataFormatError, match="several datasets found"):
        read_source(tmp_path)
    with pytest.raises(ValueError, match="unknown format"):
        read_source(tmp_path, format="csv")


# ---- download addresses -----------------------------------------------------------------------------


def test_source_addresses():
    f14 = source_files("Musical_Instruments", "2014")
    assert f14["reviews"] == ("reviews_Musical_Instruments_5.json.gz",
                              "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Musical_Instruments_5.json.gz")
    assert f14["meta"][1].endswith("/categoryFiles/meta_Musical_Instruments.json.gz")
    f18 = source_files("Gift_Cards", "2018")
    assert f18["reviews"][1] == "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/Gift_Cards_5.json.gz"
    assert f18["meta"][1] == "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_Gift_Cards.json.gz"


def test_fetch_offline_message(tmp_path: Path):
    dest = tmp_path / "mi"
    with pytest.raises(DownloadUnavailable) as err:
        fetch("Musical_Instruments", "2014", dest, offline=True)
    msg = str(err.value)
    assert f"put it at {dest / 'reviews_Musical_Instruments_5.json.gz'}" in msg
    assert "https://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Musical_Instruments.json.gz" in msg
    # a file already present is not asked for
    dest.mkdir()
    _gz(dest / "meta_Musical_Instruments.json.gz", ['{"asin": "I1"}'])
    with pytest.raises(DownloadUnavailable) as err:
        fetch("Musical_Instruments", "2014", dest, offline=True)
    assert "meta_Musical" not in str(err.value) and "reviews_Musical" in str(err.value)


def test_fetch_copies_atomically_from_a_mirror(tmp_path: Path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _gz(mirror / "Gift_Cards_5.json.gz", GOOD_2014)
    _gz(mirror / "meta_Gift_Cards.json.gz", ['{"asin": "I1", "title": "t"}'])
    dest = fetch("Gift_Cards", "2018", tmp_path / "out", offline=False, base_url=mirror.as_uri())
    assert sorted(p.name for p in dest.iterdir()) == ["Gift_Cards_5.json.gz", "meta_Gift_Cards.json.gz"]  # no .part left
    assert len(read_source(dest).interactions) == 3


def test_read_source_offline_names_the_missing_file(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too; never the network here
    target = tmp_path / "mi" / "reviews_Musical_Instruments_5.json.gz"
    with pytest.raises(DownloadUnavailable) as err:
        read_source(target)
    assert f"put it at {target}" in str(err.value) and "offline mode" in str(err.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_source(tmp_path / "mi" / "not_an_amazon_file.json")  # not an official name: nothing to fetch


def test_read_source_fetches_an_absent_official_file(tmp_path: Path, monkeypatch):
    """A missing reviews file is fetched (here from a local mirror through a stand-in downloader), then read."""
    import data_builders.readers as readers

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _gz(mirror / "Gift_Cards_5.json.gz", GOOD_2014)
    _gz(mirror / "meta_Gift_Cards.json.gz", ['{"asin": "I1", "title": "t"}'])
    calls = []

    def fake_fetch(category, release, dest):
        calls.append((category, release, Path(dest)))
        return fetch(category, release, dest, offline=False, base_url=mirror.as_uri())

    monkeypatch.setattr(readers, "fetch", fake_fetch)
    raw = read_source(tmp_path / "gc" / "Gift_Cards_5.json.gz")
    assert calls == [("Gift_Cards", "2018", tmp_path / "gc")]
    assert len(raw.interactions) == 3 and (tmp_path / "gc" / "meta_Gift_Cards.json.gz").is_file()
