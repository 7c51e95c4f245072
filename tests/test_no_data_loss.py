"""Issue "Reliability 2", sections 1, 2 and 5: nothing we write replaces what we did not create; one run per output
folder; named errors instead of tracebacks.

Every replace or remove goes through ``data_builders.atomic.check_replaceable``: a folder is ours when it holds our
ownership record and no entry the record does not list, at any depth.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_builders.__main__ import main as build_main
from data_builders.atomic import OWNED_FILE, ForeignFolderError, check_replaceable, mark_owned, replace_dir
from train.io_utils import LOCK_FILE, OutputDirInUse, check_run_outputs, hold_output_dir, temp_sibling
from train.testing import build_tiny_data, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dataset folder, a finished run (best/, hub_model/, checkpoints/) and its config overrides."""
    from train.config import load_config
    from train.main import run_pipeline

    root = tmp_path_factory.mktemp("owned")
    data = build_tiny_data(root / "data")
    overrides = tiny_overrides(data, root / "run", "pretrain.do_pretrain=false", "finetune.epochs=1")
    result = run_pipeline(load_config("demo", overrides), command="pytest owned")
    return data, root / "run", overrides, Path(result["paths"]["hub_model"])


def _user_files(folder: Path) -> dict[Path, str]:
    files = {folder / "thesis.txt": "my thesis", folder / "sub" / "y.txt": "keep me"}
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return files


def _intact(files: dict[Path, str]) -> bool:
    return all(p.is_file() and p.read_text() == text for p, text in files.items())


def _publish(run: Path, overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.publish", "--config", "demo", *extra, *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------------ the ownership record
def test_check_replaceable_accepts_only_what_we_wrote(tmp_path):
    check_replaceable(tmp_path / "new")  # missing: fine
    ours = tmp_path / "ours"
    (ours / "a" / "b").mkdir(parents=True)
    (ours / "a" / "b" / "w.bin").write_bytes(b"x")
    mark_owned(ours)
    check_replaceable(ours)
    (ours / "a" / "b" / "notes.md").write_text("mine")  # deep inside
    with pytest.raises(ForeignFolderError, match=r"a/b/notes.md"):
        check_replaceable(ours)
    (ours / "a" / "b" / "notes.md").unlink()
    (ours / "a" / "empty").mkdir()  # a folder the user made counts too
    with pytest.raises(ForeignFolderError, match=r"a/empty/"):
        check_replaceable(ours)
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ForeignFolderError, match=f"not written by this tool .no {OWNED_FILE}"):
        check_replaceable(plain)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ForeignFolderError, match="a file or a link"):
        check_replaceable(tmp_path / "f")
    (tmp_path / "link").symlink_to(ours)
    with pytest.raises(ForeignFolderError, match="a file or a link"):
        check_replaceable(tmp_path / "link")
    (ours / OWNED_FILE).write_text("{not json")
    with pytest.raises(ForeignFolderError, match="not written by this tool"):
        check_replaceable(ours)


def test_replace_dir_keeps_a_foreign_target_and_the_new_copy_is_ours(tmp_path):
    target = tmp_path / "target"
    files = _user_files(target)
    tmp = temp_sibling(target)
    (tmp / "model.safetensors").write_bytes(b"w")
    with pytest.raises(ForeignFolderError, match="thesis.txt"):
        replace_dir(tmp, target)
    assert _intact(files)
    shutil.rmtree(target)
    replace_dir(tmp, target)
    check_replaceable(target)  # what we wrote is replaceable next time
    assert json.loads((target / OWNED_FILE).read_text())["entries"] == ["model.safetensors"]


def test_temp_siblings_are_unique(tmp_path):
    a, b = temp_sibling(tmp_path / "hub_model"), temp_sibling(tmp_path / "hub_model")
    assert a != b and a.name.startswith(".tmp-hub_model-") and b.is_dir()


# ------------------------------------------------------------------------------------------ 1. data loss
def test_publish_out_refuses_a_user_folder_and_keeps_it(trained, tmp_path):
    _, run, overrides, _ = trained
    files = _user_files(tmp_path / "mine")
    proc = _publish(run, overrides, "--out", str(tmp_path / "mine"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: published folder") and "not written by this tool" in proc.stderr
    assert "Traceback" not in proc.stderr and _intact(files)


def test_publish_out_replaces_its_own_folder_but_not_one_with_a_user_file(trained, tmp_path):
    _, run, overrides, _ = trained
    out = tmp_path / "pub"
    assert _publish(run, overrides, "--out", str(out)).returncode == 0
    assert _publish(run, overrides, "--out", str(out)).returncode == 0  # ours: replaced
    note = out / "maps" / "my_notes.txt"
    note.write_text("mine")
    proc = _publish(run, overrides, "--out", str(out))
    assert proc.returncode == 2 and "maps/my_notes.txt" in proc.stderr and note.read_text() == "mine"


@pytest.mark.parametrize("sub", ["best", "hub_model", "pretrained", "checkpoints/finetune"])
def test_run_refuses_user_files_in_what_it_replaces_before_any_work(trained, tmp_path, sub):
    from train.config import load_config
    from train.main import run_pipeline

    data, run, overrides, _ = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    files = _user_files(out / sub)
    cfg = load_config("demo", overrides + [f"output.dir={out}", f"data.folder={tmp_path / 'never_built'}", "data.build=true"])
    with pytest.raises(ForeignFolderError, match=sub.split("/")[0]):
        run_pipeline(cfg)
    assert _intact(files)
    assert not (tmp_path / "never_built").exists()  # refused before the build started


def test_run_refuses_a_folder_from_an_older_version(trained, tmp_path):
    """An older version wrote no ownership record: its best/ may hold anything, so it is not replaced."""
    from train.config import load_config

    _, run, overrides, _ = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "best" / OWNED_FILE).unlink()
    with pytest.raises(ForeignFolderError, match="best/ folder .*no .graphgpt2-rec-owned.json"):
        check_run_outputs(load_config("demo", overrides + [f"output.dir={out}"]).output.dir)


def test_build_overwrite_checks_every_depth(tmp_path):
    out = tmp_path / "ds"
    args = ["build", "--source", "synthetic", "--synthetic-users", "40", "--synthetic-items", "20", "--k-core", "2",
            "--train-bpe", "300", "--prompts", "interactions,recommendation", "--out", str(out), "--quiet"]
    assert build_main(args) == 0
    for rel in ("maps/my_notes.txt", "recommendation/x/keep.txt"):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("mine")
        assert build_main(args + ["--overwrite"]) == 2
        assert path.read_text() == "mine"
        path.unlink()
        if path.parent.name == "x":
            path.parent.rmdir()
    assert build_main(args + ["--overwrite"]) == 0  # nothing foreign left: replaced


# ------------------------------------------------------------------------------------------ 2. one run per folder
def test_a_second_run_into_the_same_output_dir_is_refused(trained, tmp_path):
    from train.config import load_config
    from train.main import run_pipeline

    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom train.io_utils import hold_output_dir\n"
                               f"with hold_output_dir({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = load_config("demo", trained[2] + [f"output.dir={out}"])
        with pytest.raises(OutputDirInUse, match=rf"{out.name} is in use by another run \(pid {holder.pid}"):
            run_pipeline(cfg)
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written beside the other run's files
    finally:
        holder.kill()
        holder.wait()
    with hold_output_dir(out):  # a killed holder leaves no lock behind
        with hold_output_dir(out):  # re-entrant in one process (run_pipeline -> finetune)
            pass


def test_the_cli_reports_a_busy_output_dir_in_one_line(trained, tmp_path):
    out = tmp_path / "busy"
    with hold_output_dir(out):
        proc = subprocess.run([sys.executable, "-m", "train.main", "run", "--config", "demo", *trained[2], f"output.dir={out}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: output.dir") and "in use by another run" in proc.stderr


def test_a_killed_publish_leaves_no_half_folder_and_the_next_run_cleans_its_temp(trained, tmp_path):
    _, run, overrides, _ = trained
    out = tmp_path / "run"
    shutil.copytree(run, out)
    stale = out / ".tmp-hub_model-abc123"  # what a SIGKILLed publish leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    with hold_output_dir(out):
        pass
    assert not stale.exists() and (out / "hub_model" / "serving.json").is_file()


# ------------------------------------------------------------------------------------------ 5. named errors
def test_publish_without_results_or_with_an_unwritable_target_is_one_line(trained, tmp_path):
    _, run, overrides, _ = trained
    proc = _publish(run, overrides + [f"output.dir={tmp_path / 'empty_run'}"])
    assert proc.returncode == 2 and "no pipeline_result.json or finetune_result.json" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "a_file").write_text("x")
    proc = _publish(run, overrides, "--out", str(tmp_path / "a_file" / "pub"))  # its parent is a file: not writable
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def _model_copy(trained, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(trained[1] / "best", folder)
    return folder


def test_load_model_names_truncated_pickle_only_and_mismatched_folders(trained, tmp_path):
    from train.modeling_io import ModelFolderError, load_model

    folder = _model_copy(trained, tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFolderError, match="model.safetensors: unreadable"):
        load_model(folder)
    weights.write_bytes(data)
    config = json.loads((folder / "config.json").read_text())
    for key, value in (("n_embd", config["n_embd"] * 2), ("num_items", config["num_items"] + 3)):
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ModelFolderError, match="config.json does not fit model.safetensors"):
            load_model(folder)
    (folder / "config.json").write_text(json.dumps(config))
    weights.rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelFolderError, match="model.safetensors: missing; only safetensors"):
        load_model(folder)


def test_the_evaluate_cli_reports_a_truncated_model_in_one_line(trained, tmp_path):
    folder = _model_copy(trained, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    proc = subprocess.run([sys.executable, "-m", "train.evaluate", "--config", "demo", "--model-dir", str(folder),
                           *trained[2], f"output.dir={tmp_path / 'eval'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "model.safetensors: unreadable" in proc.stderr and "Traceback" not in proc.stderr


def test_a_missing_tokenizer_folder_is_named_at_once(tmp_path, capsys):
    t0 = time.perf_counter()
    for source, says in ((str(tmp_path / "no_such_dir"), "no such folder"), ("./gone/gpt2", "no such folder"),
                         ("some-hub-name", "not in the Hugging Face cache")):
        rc = build_main(["build", "--source", "synthetic", "--tokenizer", source, "--out", str(tmp_path / "o"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and says in err and source in err, err
    assert time.perf_counter() - t0 < 60  # no minute of offline retries per name (a generous bound, not a benchmark)
    assert not (tmp_path / "o").exists()


def test_recommend_all_checks_its_target_before_scoring(trained, tmp_path, monkeypatch, capsys):
    from train import recommend

    hub = trained[3]
    monkeypatch.setattr(recommend.Recommender, "from_folder", classmethod(lambda cls, f: pytest.fail("scored first")))
    assert recommend.main(["--model", str(hub), "--all", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    mine = tmp_path / "mine.jsonl"
    mine.write_text("my own data\n")
    assert recommend.main(["--model", str(hub), "--all", "--out", str(mine)]) == 2
    assert "not a recommendations file this tool wrote" in capsys.readouterr().err and mine.read_text() == "my own data\n"
    assert recommend.main(["--model", str(hub), "--all"]) == 2
    assert "--all needs --out" in capsys.readouterr().err
    monkeypatch.undo()
    out = tmp_path / "recs.jsonl"
    assert recommend.main(["--model", str(hub), "--all", "--out", str(out)]) == 0
    assert recommend.main(["--model", str(hub), "--all", "--out", str(out)]) == 0  # ours: replaced
    assert len(out.read_text().splitlines()) == json.loads((hub / "manifest.json").read_text())["num_users"]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_checkpoint_weights_follow_the_umask(trained, tmp_path, umask_022):
    from train.config import load_config
    from train.finetune import finetune

    data = trained[0]
    cfg = load_config("demo", tiny_overrides(data, tmp_path / "run", "pretrain.do_pretrain=false", "finetune.epochs=1",
                                             "output.save_total_limit=2"))
    finetune(cfg)
    weights = list((tmp_path / "run" / "checkpoints" / "finetune").rglob("*.safetensors"))
    assert weights and {stat.S_IMODE(p.stat().st_mode) for p in weights} == {0o644}


def test_the_staged_dataset_repo_is_replaced_only_when_ours(trained, tmp_path):
    from data_builders.hub_dataset import stage_dataset_repo

    data = trained[0]
    staged = stage_dataset_repo(data, tmp_path / "hub_dataset")
    assert stage_dataset_repo(data, staged) == staged  # ours: replaced
    files = _user_files(staged / "maps")
    with pytest.raises(ForeignFolderError, match="maps/sub/"):
        stage_dataset_repo(data, staged)
    assert _intact(files)
