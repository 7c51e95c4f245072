"""GraphCollator: right padding, -100 labels on pad, (B, L, L) hop tensor equal to a per-pair loop, multi-hot targets."""
import numpy as np
import pytest
import torch

from data_builders.collate import GraphCollator
from data_builders.graph import HopDistances, InteractionGraph


@pytest.fixture(scope="module")
def hops():
    rng = np.random.default_rng(0)
    u, i = np.nonzero(rng.random((12, 9)) < 0.2)
    return HopDistances(InteractionGraph(np.stack([u, i], 1), 12, 9), max_hops=4)


def test_padding_labels_and_hops(hops):
    rows = [
        {"input_ids": [5, 60000, 7, 60001], "node_positions": [-1, 3, -1, 14], "labels": [-100, -100, 7, 60001], "targets": [1, 4]},
        {"input_ids": [60002, 9], "node_positions": [0, -1], "labels": [-100, 9], "targets": [8]},
    ]
    batch = GraphCollator(hops, pad_token_id=50256, num_items=9)(rows)
    assert batch["input_ids"].tolist() == [[5, 60000, 7, 60001], [60002, 9, 50256, 50256]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist()[1] == [-100, 9, -100, -100]
    h = batch["hop_distances"]
    assert h.dtype == torch.long and h.shape == (2, 4, 4)
    for b, r in enumerate(rows):
        pos = r["node_positions"] + [-1] * (4 - len(r["node_positions"]))
        for x in range(4):
            for y in range(4):
                want = -1 if pos[x] < 0 or pos[y] < 0 else hops.distance(pos[x], pos[y])
                assert h[b, x, y].item() == want
    assert batch["target_items"].dtype == torch.float32
    assert batch["target_items"].tolist()[0] == [0, 1, 0, 0, 1, 0, 0, 0, 0]
    assert batch["target_items"][1].sum().item() == 1 and batch["target_items"][1, 8].item() == 1


def test_options_and_errors(hops):
    rows = [{"input_ids": list(range(10)), "node_positions": [-1] * 9 + [2]}]
    out = GraphCollator(hops, 0, max_length=4, pad_to_multiple_of=8)(rows)
    assert out["input_ids"].shape == (1, 8) and out["input_ids"][0, :4].tolist() == [6, 7, 8, 9]  # left cut
    assert "labels" not in out and "target_items" not in out
    assert "hop_distances" not in GraphCollator(None, 0)(rows)
    with pytest.raises(ValueError, match="differ in length"):
        GraphCollator(hops, 0)([{"input_ids": [1, 2], "node_positions": [-1]}])
    with pytest.raises(ValueError, match="num_items"):
        GraphCollator(hops, 0)([{"input_ids": [1], "node_positions": [-1], "targets": [0]}])
