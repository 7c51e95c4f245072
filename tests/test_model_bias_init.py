"""The learned graph bias starts exactly at the `paper` values, in every layer and head (also after a reload)."""
import pytest
import torch

from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation, graph_bias_values


@pytest.mark.parametrize("max_hops", [6, 3])
def test_learned_bias_equals_paper_values_at_init(max_hops, tmp_path):
    torch.manual_seed(0)
    config = GraphGPT2Config(num_users=4, num_items=5, base_vocab_size=30, n_layer=3, n_embd=16, n_head=4,
                             n_positions=32, graph_bias="learned", max_hops=max_hops)
    paper = torch.tensor(graph_bias_values(config, "paper"))  # buckets h = -1, 0..C, C+1
    assert paper[0] == 0 and paper[2] == 1.0  # text pairs get nothing; one hop gets the most
    hop_index = torch.arange(max_hops + 3).view(1, 1, -1).expand(2, max_hops + 3, -1)  # every bucket
    expected = paper[hop_index]  # (2, Q, K): the fixed "paper" bias
    model = GraphGPT2ForRecommendation(config)
    model.save_pretrained(tmp_path)
    for net in (model, GraphGPT2ForRecommendation.from_pretrained(tmp_path)):
        layers = [block.attn.graph_bias for block in net.transformer.h]
        assert len(layers) == 3 and all(layer is not None for layer in layers)
        for layer in layers:
            assert layer.table.shape == (4, max_hops + 2)
            assert torch.equal(layer.table.detach(), paper[1:].expand(4, -1).to(layer.table.dtype))
            bias = layer(hop_index, None).detach()  # (2, H, Q, K)
            for head in range(4):
                assert torch.equal(bias[:, head], expected.to(bias.dtype))


def test_per_head_scale_starts_at_one_for_fixed_modes():
    config = GraphGPT2Config(num_users=4, num_items=5, base_vocab_size=30, n_layer=2, n_embd=16, n_head=4,
                             n_positions=32, graph_bias="paper", graph_bias_per_head=True, graph_bias_layers=[1])
    model = GraphGPT2ForRecommendation(config)
    assert model.transformer.h[0].attn.graph_bias is None
    assert torch.equal(model.transformer.h[1].attn.graph_bias.head_scale.detach(), torch.ones(4))
