"""Issue 9: no data loss, no silent wrong result, no hang on hostile input, errors a user can act on, readable files.

Each test names the case of the issue it covers; the input-fuzzing property test is tests/test_reader_fuzz.py.
"""
from __future__ import annotations

import gzip
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_builders.__main__ import main as build_main
from data_builders.atomic import atomic_write_text, follow_umask, make_temp_dir
from data_builders.folder import (
    FORMAT_NAME,
    STALE_AFTER_SECONDS,
    OutputFolderError,
    _PID_FILE,
    check_output_folder,
    remove_stale_build_folders,
)
from data_builders.prompts import encode_pairs
from data_builders.readers import DataFormatError, read_source
from data_builders.records import ItemMeta
from data_builders.textclean import MAX_BPE_RUN_CHARS, MAX_TEXT_CHARS, clean_text, printable
from data_builders.prompts import corpus_texts
from data_builders.tokenization import add_id_tokens, load_base_tokenizer

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ helpers
def _review(user, item, rating=5.0, ts=1, text="fine"):
    return json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": ts, "reviewText": text})


def _write_gz(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode("utf-8")))
    return path


def _dense_reviews(n_users=12, n_items=8, per_user=6, text=lambda u, j: f"review {u} {j}"):
    """Every user rates `per_user` items 5 stars: survives a 5-core, enough for a tiny build."""
    return [_review(f"U{u}", f"I{(u + k) % n_items}", 5.0, k, text(u, k)) for u in range(n_users) for k in range(per_user)]


def _make_source(folder: Path, with_meta: bool = True, review_text=lambda u, j: f"review {u} {j}") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _write_gz(folder / "reviews_Toy_5.json.gz", _dense_reviews(text=review_text))
    if with_meta:
        _write_gz(folder / "meta_Toy.json.gz", [json.dumps({"asin": f"I{j}", "title": f"Thing {j}", "brand": "B" + str(j % 2)}) for j in range(8)])
    return folder


def _built(tmp_path: Path, name="ds") -> Path:
    out = tmp_path / name
    rc = build_main(["build", "--source", "synthetic", "--synthetic-users", "40", "--synthetic-items", "20", "--k-core", "2",
                     "--train-bpe", "300", "--prompts", "interactions,recommendation", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


# ------------------------------------------------------------------------------------------ 1. data loss
def test_overwrite_refuses_a_folder_with_foreign_files_and_keeps_it(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "thesis.tex").write_text("keep")
    rc = build_main(["build", "--source", "synthetic", "--train-bpe", "300", "--out", str(tmp_path / "x"), "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --out") and "not a dataset folder built by this tool" in err and "Traceback" not in err
    assert (tmp_path / "x" / "thesis.tex").read_text() == "keep"


def test_overwrite_refuses_root_source_and_parents_of_the_source(tmp_path):
    src = _make_source(tmp_path / "raw" / "mi")
    with pytest.raises(OutputFolderError, match="filesystem root"):
        check_output_folder(Path("/"), overwrite=True)
    with pytest.raises(OutputFolderError, match="holds the source data"):
        check_output_folder(src, overwrite=True, protect=[src])
    with pytest.raises(OutputFolderError, match="holds the source data"):
        check_output_folder(tmp_path / "raw", overwrite=True, protect=[src / "reviews_Toy_5.json.gz"])
    with pytest.raises(OutputFolderError, match="holds the source data"):  # even without --overwrite
        check_output_folder(src, overwrite=False, protect=[src])
    rc = build_main(["build", "--source", str(src), "--out", str(src), "--overwrite", "--train-bpe", "300", "--quiet"])
    assert rc == 2 and sorted(p.name for p in src.iterdir()) == ["meta_Toy.json.gz", "reviews_Toy_5.json.gz"]


def test_overwrite_refuses_files_links_and_fake_manifests(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("keep")
    with pytest.raises(OutputFolderError, match="not a dataset folder"):
        check_output_folder(f, overwrite=True)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(OutputFolderError, match="not a dataset folder built by this tool"):
        check_output_folder(fake, overwrite=True)
    (fake / "manifest.json").write_text("{broken")
    with pytest.raises(OutputFolderError):
        check_output_folder(fake, overwrite=True)
    with pytest.raises(FileExistsError):
        check_output_folder(fake, overwrite=False)


def test_overwrite_replaces_our_folder_but_not_one_with_an_added_file(tmp_path):
    out = _built(tmp_path)
    assert json.loads((out / "manifest.json").read_text())["format"] == FORMAT_NAME
    check_output_folder(out, overwrite=True)  # ours, nothing foreign: allowed
    (out / "notes.md").write_text("mine")
    with pytest.raises(OutputFolderError, match="notes.md"):
        check_output_folder(out, overwrite=True)
    rc = build_main(["build", "--source", "synthetic", "--train-bpe", "300", "--out", str(out), "--overwrite", "--quiet"])
    assert rc == 2 and (out / "notes.md").read_text() == "mine"
    (out / "notes.md").unlink()
    rc = build_main(["build", "--source", "synthetic", "--synthetic-users", "40", "--synthetic-items", "20", "--k-core", "2",
                     "--train-bpe", "300", "--prompts", "interactions,recommendation", "--out", str(out), "--overwrite", "--quiet"])
    assert rc == 0 and (out / "manifest.json").is_file()
    assert not list(tmp_path.glob(".ds.*"))  # no temp folders left


# ------------------------------------------------------------------------------------------ 2. silent wrong results
@pytest.mark.parametrize("rating, reason", [(99, "rating_out_of_range"), (1e300, "rating_out_of_range"), (-5, "rating_out_of_range"),
                                            (0, "rating_out_of_range"), (float("nan"), "non_numeric_rating"),
                                            (float("inf"), "non_numeric_rating"), ("1e999", "non_numeric_rating"),
                                            (10**400, "non_numeric_rating")])
def test_ratings_outside_1_to_5_are_counted_skips_in_every_reader(tmp_path, rating, reason):
    good = [_review("U1", "I1", 5.0), _review("U2", "I2", 1.0)]
    bad = json.dumps({"reviewerID": "U3", "asin": "I3", "overall": rating}) if not isinstance(rating, str) else \
        '{"reviewerID": "U3", "asin": "I3", "overall": %s}' % rating
    cases = {
        "2014": (_write_gz(tmp_path / "reviews_A_5.json.gz", [*good, bad]), "overall", 3),
        "2018": (_write_gz(tmp_path / "B_5.json.gz", [*good, bad]), "overall", 3),
    }
    inter = tmp_path / "C.inter"
    inter.write_text(f"user_id:token\titem_id:token\trating:float\nU1\tI1\t5\nU2\tI2\t1\nU3\tI3\t{rating}\n")
    cases["atomic"] = (inter, "rating", 4)  # line 1 is the header
    for fmt, (path, field, line) in cases.items():
        raw = read_source(path)
        assert raw.report.skipped == {reason: 1}, fmt
        assert [r.user for r in raw.interactions] == ["U1", "U2"], fmt
        assert raw.report.examples[0].startswith(f"{path.name}:{line}: {field}:"), fmt
        with pytest.raises(DataFormatError) as err:
            read_source(path, strict=True)
        assert (err.value.line, err.value.field) == (line, field), fmt


def test_text_that_looks_like_id_tokens_or_eos_never_becomes_one(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    evil = "buy item_3 now, user_5 says <|endoftext|> then item_0."
    _write_gz(src / "reviews_T_5.json.gz", [_review("U1", "I1", 5, 1, evil), _review("U1", "I2", 5, 2, "ok")])
    _write_gz(src / "meta_T.json.gz", [json.dumps({"asin": "I1", "title": "item_1 by user_0", "brand": "<|endoftext|>",
                                                  "description": "see item_2", "categories": [["Root", "user_1"]]})])
    raw = read_source(src)
    review = raw.reviews[("U1", "I1")]
    meta = raw.items["I1"]
    assert "item_3" not in review and "user_5" not in review and "<|endoftext|>" not in review
    assert review == "buy item-3 now, user-5 says <endoftext> then item-0."
    assert (meta.title, meta.brand, meta.description, meta.categories) == ("item-1 by user-0", "<endoftext>", "see item-2", ["Root", "user-1"])
    # counted per kept field, with file:line: field
    assert raw.report.changed == {"id_token_text_rewritten": 4, "special_token_text_rewritten": 2}  # fields, not matches
    assert "reviews_T_5.json.gz:1: reviewText: id token text rewritten" in raw.report.changed_examples
    assert raw.report.skipped == {}


def test_prompt_builder_guards_text_mains_from_any_source(gpt2_tokenizer_dir):
    """Splits not made by a reader (the synthetic set, a user's own code) are neutralised when rows are encoded."""
    tok = load_base_tokenizer(gpt2_tokenizer_dir)
    base = add_id_tokens(tok, 6, 6)
    rows = [
        {"kind": "review", "prompt": "user_0 wrote the following review for item_1:", "main": " love item_3 and user_5<|endoftext|>", "user": 0},
        {"kind": "title", "prompt": "The title of item_2 is:", "main": " item_4\x1b[31m\u202e", "user": -1},
        {"kind": "interactions", "prompt": "user_0 has interacted with", "main": " item_1 item_2", "user": 0},
    ]
    stats = {}
    out = encode_pairs(rows, tok, base, 64, stats)
    for r in out[:2]:
        n_prompt = int((r["labels"] == -100).sum())
        assert (r["node_positions"][n_prompt:] == -1).all()  # no graph node from text
        assert tok.eos_token_id not in r["labels"].tolist()
    assert (out[2]["node_positions"][-2:] == [6 + 1, 6 + 2]).all()  # structural mains keep their ID tokens
    assert stats == {"main_id_token_text_rewritten": 2, "main_special_token_text_rewritten": 1, "main_control_characters_removed": 1}


@pytest.mark.parametrize("bad", ["\x00", "\u202e", "\x1b[2J", "\u2066", "\x7f", "\x9b", "\ud800", "\ufeff"])
def test_control_characters_are_stripped_and_counted(tmp_path, bad):
    path = tmp_path / "reviews_C_5.json.gz"
    _write_gz(path, [json.dumps({"reviewerID": "U1", "asin": "I1", "overall": 5, "reviewText": f"nice{bad}guitar"}),
                     _review("U2", "I2")])
    raw = read_source(path)
    assert raw.reviews[("U1", "I1")] in ("niceguitar", "nice[2Jguitar")
    assert raw.report.changed == {"control_characters_removed": 1}
    raw.reviews[("U1", "I1")].encode("utf-8")  # storable (a lone surrogate would not be)


def test_ids_with_control_characters_are_skipped(tmp_path):
    path = tmp_path / "reviews_C_5.json.gz"
    _write_gz(path, [json.dumps({"reviewerID": "U\x1b[31m1", "asin": "I1", "overall": 5}), _review("U2", "I2")])
    raw = read_source(path)
    assert raw.report.skipped == {"bad_id": 1} and raw.report.examples[0].startswith(f"{path.name}:1: reviewerID:")


def test_printable_escapes_terminal_controls():
    shown = printable("Guitar\x1b[31m\u202eevil\x00")
    assert shown == "Guitar\\x1b[31m\\u202eevil\\x00"
    assert all(ch.isprintable() for ch in shown)


def test_recommend_prints_titles_escaped(monkeypatch, capsys):
    from train import recommend

    class FakeRecommender:  # a published model whose maps hold hostile titles (e.g. built by an older version)
        item_titles = ["Guitar\x1b[2J\u202eevil", "Cable"]

        def recommend_users(self, users, k):
            return [[(0, 0.9), (1, 0.1)] for _ in users]

        def title(self, j):
            return self.item_titles[j]

    monkeypatch.setattr(recommend.Recommender, "from_folder", classmethod(lambda cls, folder: FakeRecommender()))
    assert recommend.main(["--model", "anything", "--users", "0"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out
    assert "Guitar\\x1b[2J\\u202eevil" in out


def test_full_build_keeps_text_out_of_the_graph(tmp_path):
    """End to end: hostile review and title text -> dataset rows whose text never holds an ID token or EOS."""
    import pyarrow.parquet as pq

    evil = lambda u, k: f"like item_{k} and user_{u} <|endoftext|> \x1b[31m\u202e"  # noqa: E731
    src = _make_source(tmp_path / "src", review_text=evil)
    out = tmp_path / "ds"
    assert build_main(["build", "--source", str(src), "--out", str(out), "--train-bpe", "300", "--k-core", "2", "--quiet",
                       "--prompts", "review,content,interactions,recommendation"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"]["source"]["metadata"] == "read"
    changed = manifest["split"]["read_report"]["changed"]
    assert changed["id_token_text_rewritten"] == changed["special_token_text_rewritten"] == changed["control_characters_removed"] == 72
    rows = pq.read_table(next((out / "review").glob("train-*.parquet"))).to_pylist()
    assert len(rows) > 0
    for r in rows:
        n_prompt = sum(1 for x in r["labels"] if x == -100)
        assert all(p == -1 for p in r["node_positions"][n_prompt:])  # no graph node from review text
        assert 0 not in r["labels"]  # EOS (id 0 in a trained BPE) never in the labels
        assert "item_" not in r["main"] and "\x1b" not in r["main"]


# ------------------------------------------------------------------------------------------ 3. a hang
def test_bpe_training_text_is_bounded():
    from data_builders.records import SplitDataset

    class _Split:  # the two fields corpus_texts reads
        items = [ItemMeta(title="a" * 1_000_000, description="word " * 10), ItemMeta(brand="x" * 100)]
        train = [np.zeros(0, np.int64)]
        reviews = {}

    assert SplitDataset  # the real class exists; a stand-in keeps the test small
    stats = {}
    texts = list(corpus_texts(_Split(), stats=stats))
    longest = max(len(w) for t in texts for w in t.split())
    assert longest <= MAX_BPE_RUN_CHARS
    assert max(len(t) for t in texts) <= MAX_TEXT_CHARS + MAX_TEXT_CHARS // MAX_BPE_RUN_CHARS + 1
    assert stats == {"fields_truncated": 1, "long_runs_split": 2}


def test_reader_caps_field_length(tmp_path):
    path = tmp_path / "reviews_L_5.json.gz"
    _write_gz(path, [_review("U1", "I1", 5, 1, "z" * (MAX_TEXT_CHARS + 500)), _review("U2", "I2")])
    raw = read_source(path)
    assert len(raw.reviews[("U1", "I1")]) == MAX_TEXT_CHARS and raw.report.changed == {"text_truncated": 1}


# ------------------------------------------------------------------------------------------ 4. litter and confusion
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_build_folders_are_cleaned_only_when_ours_and_unused(tmp_path):
    import socket

    out = tmp_path / "ds"
    host = socket.gethostname()

    def temp(kind, suffix, pid=None, entries=("graph",)):
        d = tmp_path / f".ds.{kind}-{suffix}"
        d.mkdir()
        for e in entries:
            (d / e).mkdir()
        if pid is not None:
            (d / _PID_FILE).write_text(f"{pid} {host}\n")
        return d

    dead = temp("building", "dead", pid=_dead_pid())
    alive = temp("building", "alive", pid=os.getpid())
    old_nopid = temp("building", "oldnopid")
    os.utime(old_nopid, (0, 0))
    young_nopid = temp("building", "youngnopid")
    foreign = temp("building", "foreign", entries=("graph", "thesis.tex"))
    os.utime(foreign, (0, 0))
    trash = temp("old", "dead", pid=_dead_pid(), entries=("old",))
    other = tmp_path / ".other.building-x"
    other.mkdir()
    # out does not exist yet: a dead `.old-` folder may hold the only copy of the previous dataset
    assert remove_stale_build_folders(out) == [dead, old_nopid]
    assert trash.exists() and alive.exists() and young_nopid.exists() and foreign.exists() and other.exists()
    out.mkdir()
    assert remove_stale_build_folders(out) == [trash]
    assert remove_stale_build_folders(out, now=young_nopid.stat().st_mtime + STALE_AFTER_SECONDS + 1) == [young_nopid]


def test_a_build_cleans_what_a_killed_build_left(tmp_path):
    stale = tmp_path / ".ds.building-killed"
    (stale / "graph").mkdir(parents=True)
    (stale / _PID_FILE).write_text(f"{_dead_pid()} {__import__('socket').gethostname()}\n")
    _built(tmp_path)
    assert not stale.exists() and not list(tmp_path.glob(".ds.*"))


def test_truncated_gzip_is_named_with_its_line(tmp_path):
    lines = [_review(f"U{k}", "I1") for k in range(400)]
    data = gzip.compress("".join(line + "\n" for line in lines).encode())
    cut = tmp_path / "reviews_T_5.json.gz"
    cut.write_bytes(data[:-4])  # only the trailer is missing: every line is recoverable
    raw = read_source(cut)
    assert len(raw.interactions) == 400 and raw.report.skipped == {"truncated_file": 1}
    assert raw.report.examples[0].startswith("reviews_T_5.json.gz:401: <file>: compressed file is truncated")
    cut.write_bytes(data[:12])  # not one complete line: an error that says truncated, not "empty"
    for strict in (False, True):
        with pytest.raises(DataFormatError, match="truncated or corrupt") as err:
            read_source(cut, strict=strict)
        assert err.value.line == 1 and "empty" not in str(err.value)


def test_utf16_and_bom_files(tmp_path):
    p = tmp_path / "U.inter"
    p.write_bytes("user_id:token\titem_id:token\nU1\tI1\n".encode("utf-16"))
    with pytest.raises(DataFormatError, match="UTF-16-encoded; convert it to UTF-8"):
        read_source(p)
    p.write_bytes(b"\xef\xbb\xbf" + b"user_id:token\titem_id:token\nU1\tI1\n")  # UTF-8 BOM: read as if absent
    assert [r.user for r in read_source(p).interactions] == ["U1"]


def test_missing_metadata_warns_at_the_end_and_refuses_explicit_prompts(tmp_path, capsys):
    src = _make_source(tmp_path / "src", with_meta=False)
    argv = ["build", "--source", str(src), "--train-bpe", "300", "--k-core", "2"]
    assert build_main([*argv, "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert captured.err.rstrip().splitlines()[-1].startswith("warning: no item metadata (missing: ")
    assert "content,second_order prompts were not built" in captured.err
    assert build_main([*argv, "--out", str(tmp_path / "b"), "--prompts", "content,recommendation"]) == 2
    err = capsys.readouterr().err
    assert "\nerror: --prompts asks for content" in err and not (tmp_path / "b").exists()
    _make_source(tmp_path / "src")  # with metadata: no warning
    assert build_main([*argv, "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--max-hops", "-2"), ("--max-hops", "0"), ("--max-hops", "255"), ("--max-hops", "x"),
                                         ("--train-bpe", "0"), ("--train-bpe", "-5"), ("--max-length", "0"), ("--k-core", "-1"),
                                         ("--max-group-items", "1"), ("--rating-threshold", "nan"), ("--synthetic-users", "0")])
def test_bad_build_numbers_are_usage_errors(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        build_main(["build", "--source", "synthetic", "--out", str(tmp_path / "o"), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ 5. messages, not tracebacks
def _cli(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, says", [
    (["-m", "data_builders", "build", "--source", "nowhere", "--out", "o"], "error: nowhere: no such file or folder"),
    (["-m", "train.main", "run", "data.folder=nowhere", "data.build=false", "output.dir=o"], "error: data.folder=nowhere is not a dataset folder"),
    (["-m", "train.main", "run", "data.source=nowhere", "data.folder=d", "output.dir=o"], "error: nowhere: no such file or folder"),
    (["-m", "train.pretrain", "data.folder=nowhere", "output.dir=o"], "error: nowhere: not a dataset folder"),
    (["-m", "train.finetune", "data.folder=nowhere", "output.dir=o"], "error: nowhere: not a dataset folder"),
    (["-m", "train.evaluate", "data.folder=nowhere", "output.dir=o"], "error: no model folder at o/best or o/pretrained"),
    (["-m", "train.recommend", "--model", "nowhere", "--users", "0"], "error: "),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, says):
    res = _cli(args, tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert says in res.stderr and res.stderr.count("error:") == 1


def test_ctrl_c_is_a_message_not_a_traceback(capsys):
    from data_builders.__main__ import report_user_errors

    def interrupted():
        raise KeyboardInterrupt

    assert report_user_errors(interrupted) == 130
    assert capsys.readouterr().err.startswith("error: interrupted")
    with pytest.raises(KeyboardInterrupt):
        report_user_errors(interrupted, debug=True)


def test_bugs_keep_their_traceback():
    from data_builders.__main__ import report_user_errors

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        report_user_errors(bug)


def test_debug_shows_the_traceback(tmp_path):
    res = _cli(["-m", "data_builders", "build", "--source", "nowhere", "--out", "o", "--debug"], tmp_path)
    assert res.returncode == 1 and "Traceback" in res.stderr and "FileNotFoundError" in res.stderr


def test_bad_source_file_error_names_file_and_line(tmp_path, capsys):
    src = tmp_path / "reviews_S_5.json.gz"
    _write_gz(src, [_review("U1", "I1"), '{"reviewerID": "U2", "asin": "I2", "overall": 99}'])
    assert build_main(["build", "--source", str(src), "--strict", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}:2: overall: 99 is outside 1-5")


# ------------------------------------------------------------------------------------------ 6. readable output
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_files_follow_the_umask(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "x")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    d = make_temp_dir(tmp_path, ".t-")
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
    out = _built(tmp_path)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    dirs = {stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")] if p.is_dir()}
    assert modes == {0o644} and dirs == {0o755}


def test_saved_models_follow_the_umask(tmp_path, umask_022):
    """safetensors writes 0600 whatever the umask; replace_dir (used by publish, pretrain, finetune) fixes it."""
    import torch
    from safetensors.torch import save_file

    from data_builders.atomic import replace_dir

    tmp = tmp_path / ".tmp-model"
    tmp.mkdir(mode=0o700)
    save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
    assert stat.S_IMODE((tmp / "model.safetensors").stat().st_mode) == 0o600  # the writer's own mode
    replace_dir(tmp, tmp_path / "model")
    assert stat.S_IMODE((tmp_path / "model" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    os.umask(0o077)
    follow_umask(tmp_path / "model")
    assert stat.S_IMODE((tmp_path / "model" / "model.safetensors").stat().st_mode) == 0o600


def test_clean_text_is_idempotent():
    once, _ = clean_text("a item_1 <|endoftext|> \x00 user_22")
    twice, reasons = clean_text(once)
    assert once == twice and reasons == []


# ------------------------------------------------------------------------------------------ 8. more of the same kinds
def test_huge_numbers_deep_nesting_and_long_lines_are_counted(tmp_path, monkeypatch):
    import data_builders.readers as readers

    path = tmp_path / "reviews_H_5.json"
    lines = [
        '{"reviewerID": "U1", "asin": "I1", "overall": 5, "unixReviewTime": 1e300}',  # beyond int64
        '{"reviewerID": "U2", "asin": "I2", "overall": %s}' % ("9" * 400),  # float() overflows
        '{"reviewerID": "U3", "asin": "I3", "overall": ' + "[" * 100_000 + "]" * 100_000 + "}",  # RecursionError
        '{"reviewerID": "U4", "asin": "I4", "overall": 4, "reviewText": "' + "y" * 300_000 + '"}',  # over the line cap below
        _review("U5", "I5"),
    ]
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 250_000)
    raw = read_source(path)
    assert raw.report.skipped == {"bad_timestamp": 1, "non_numeric_rating": 1, "malformed_json": 1, "line_too_long": 1}
    assert [r.user for r in raw.interactions] == ["U5"]
    assert any(e.startswith("reviews_H_5.json:4: <line>: line longer than") for e in raw.report.examples)
    path.write_bytes(b"z" * 300_000 + b"\n" + _review("U6", "I6").encode())  # a long line across read chunks, no newline at the end
    raw = read_source(path)
    assert raw.report.skipped == {"line_too_long": 1} and [r.user for r in raw.interactions] == ["U6"]


def test_unusable_prices_are_dropped_not_crashing(tmp_path):
    from data_builders.readers import _price

    assert _price(10**400, "price") is None and _price("$" + "9" * 400, "price") is None and _price(float("inf"), "price") is None
    assert _price("$1,234.50", "price") == 1234.5


def test_multi_member_and_plain_files_read_whole(tmp_path):
    a = [_review(f"U{k}", "I1") for k in range(3)]
    b = [_review(f"V{k}", "I2") for k in range(4)]
    gz = tmp_path / "reviews_M_5.json.gz"
    gz.write_bytes(gzip.compress(("\n".join(a) + "\n").encode()) + gzip.compress(("\n".join(b)).encode()))  # no final newline
    raw = read_source(gz)
    assert len(raw.interactions) == 7 and raw.report.skipped == {}
    plain = tmp_path / "p" / "reviews_M_5.json"
    plain.parent.mkdir()
    plain.write_text("\r\n".join(a + b) + "\r\n")  # CRLF
    raw = read_source(plain)
    assert len(raw.interactions) == 7 and raw.report.skipped == {}


def test_corrupt_gzip_in_the_middle_keeps_lines_before(tmp_path):
    lines = [_review(f"U{k}", "I1", text=os.urandom(100).hex()) for k in range(2000)]  # incompressible: many pieces
    data = bytearray(gzip.compress("".join(line + "\n" for line in lines).encode()))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "reviews_X_5.json.gz"
    path.write_bytes(bytes(data))
    raw = read_source(path)
    assert raw.report.skipped.get("truncated_file") == 1 and 0 < len(raw.interactions) < 2000
    with pytest.raises(DataFormatError):  # strict: the first damaged line or the stream error, named
        read_source(path, strict=True)
