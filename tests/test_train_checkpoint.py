"""Checkpoints: atomic (temp dir + rename), last N kept, a failed write leaves the previous one intact."""
import json

import pytest
import torch


@pytest.fixture(scope="module")
def acc_model():
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model, opt = acc.prepare(model, opt)
    acc.register_for_checkpointing(sched)
    return acc, model, opt, sched


def _step(model, opt, sched):
    loss = model(torch.ones(2, 4)).pow(2).sum()
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


def test_save_keep_last_two_and_restore(acc_model, tmp_path):
    from train.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint

    acc, model, opt, sched = acc_model
    saved = {}
    for epoch in range(4):
        _step(model, opt, sched)
        save_checkpoint(acc, tmp_path, epoch, {"epoch": epoch, "global_step": epoch + 1}, keep=2)
        saved[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000002", "ckpt-000003"]
    last = latest_checkpoint(tmp_path)
    assert last.name == "ckpt-000003"
    _step(model, opt, sched)  # move away, then restore
    state = load_checkpoint(acc, tmp_path / "ckpt-000002")
    assert state == {"epoch": 2, "global_step": 3}
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[2][k])
    assert sched.last_epoch == 3  # scheduler restored with the model/optimizer
    load_checkpoint(acc, last)
    after = torch.rand(3)
    load_checkpoint(acc, last)
    assert torch.equal(torch.rand(3), after)  # the RNG state is part of the checkpoint


def test_interrupted_write_leaves_previous_checkpoint(acc_model, tmp_path, monkeypatch):
    from train.checkpointing import latest_checkpoint, save_checkpoint

    acc, model, opt, sched = acc_model
    save_checkpoint(acc, tmp_path, 0, {"epoch": 0, "global_step": 1})
    good = {p.name: p.stat().st_size for p in (tmp_path / "ckpt-000000").rglob("*")}
    monkeypatch.setenv("GRAPHGPT2_FAIL_AT", "checkpoint")  # fails after save_state wrote files, before the rename
    with pytest.raises(OSError, match="injected failure"):
        save_checkpoint(acc, tmp_path, 1, {"epoch": 1, "global_step": 2})
    assert latest_checkpoint(tmp_path).name == "ckpt-000000"
    assert not (tmp_path / "ckpt-000001").exists() and not list(tmp_path.glob(".tmp-*"))
    assert {p.name: p.stat().st_size for p in (tmp_path / "ckpt-000000").rglob("*")} == good
    # a crash that leaves a temp folder (no cleanup possible after SIGKILL) is ignored and swept on the next save
    (tmp_path / ".tmp-ckpt-000001").mkdir()
    (tmp_path / ".tmp-ckpt-000001" / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "ckpt-000000"
    monkeypatch.delenv("GRAPHGPT2_FAIL_AT")
    save_checkpoint(acc, tmp_path, 1, {"epoch": 1, "global_step": 2})
    assert latest_checkpoint(tmp_path).name == "ckpt-000001" and not list(tmp_path.glob(".tmp-*"))
    assert json.loads((tmp_path / "ckpt-000001" / "trainer_state.json").read_text())["epoch"] == 1


def test_folder_without_state_file_is_not_a_checkpoint(tmp_path):
    from train.checkpointing import latest_checkpoint

    (tmp_path / "ckpt-000005").mkdir()  # e.g. copied by hand, incomplete
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_warmup_linear_schedule():
    from train.common import warmup_linear

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear(opt, total_steps=10, warmup_ratio=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(1.0) and lrs[-1] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
