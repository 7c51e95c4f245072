"""GraphGPT2 model: config, graph bias, equivalence with stock GPT-2, eager vs sdpa, tasks, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation, graph_bias_values

BASE, USERS, ITEMS = 120, 40, 300
MODES = ["paper", "exp", "learned", "constant", "none"]


def tiny_config(**overrides) -> GraphGPT2Config:
    fields = dict(num_users=USERS, num_items=ITEMS, base_vocab_size=BASE, n_layer=2, n_embd=64, n_head=4,
                  n_positions=64, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    fields.update(overrides)
    return GraphGPT2Config(**fields)


def tiny_model(seed: int = 0, **overrides) -> GraphGPT2ForRecommendation:
    torch.manual_seed(seed)
    return GraphGPT2ForRecommendation(tiny_config(**overrides)).eval()


def user_token(u: int) -> int:
    return BASE + u


def item_token(j: int) -> int:
    return BASE + USERS + j


def make_batch(seed: int = 1, batch: int = 3, seq_len: int = 12, pad: bool = False):
    """Mixed text / ID prompts with a consistent random hop tensor (symmetric, 0 on the diagonal)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, BASE, (batch, seq_len), generator=g)
    node = torch.full((batch, seq_len), -1)
    for b in range(batch):
        ids[b, 0] = user_token(b)
        node[b, 0] = b
        for t in range(2, seq_len, 2):
            j = int(torch.randint(0, ITEMS, (1,), generator=g))
            ids[b, t] = item_token(j)
            node[b, t] = USERS + j
    rand = torch.randint(1, 8, (batch, seq_len, seq_len), generator=g)
    hop = torch.minimum(rand, rand.transpose(1, 2))
    same = node.unsqueeze(2) == node.unsqueeze(1)
    hop = torch.where(same, 0, hop)
    is_id = node >= 0
    hop = torch.where(is_id.unsqueeze(2) & is_id.unsqueeze(1), hop, -1)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    if pad:
        mask[1, seq_len - 4:] = 0
        mask[2, 5:] = 0
        ids = torch.where(mask.bool(), ids, 0)
        hop = torch.where(mask.bool().unsqueeze(2) & mask.bool().unsqueeze(1), hop, -1)
    return ids, mask, hop


# ---------------------------------------------------------------------------------------------------------------
def test_config_round_trip_and_validation(tmp_path):
    config = tiny_config(graph_bias="exp", graph_bias_layers=[1], bias_delta=0.25, graph_bias_per_head=True,
                         user_token_dropout=0.5)
    config.save_pretrained(tmp_path)
    loaded = GraphGPT2Config.from_pretrained(tmp_path)
    for name in ("num_users", "num_items", "base_vocab_size", "graph_bias", "graph_bias_layers", "bias_delta",
                 "graph_bias_per_head", "max_hops", "mutual_reg_weight", "user_token_dropout", "freeze_backbone"):
        assert getattr(loaded, name) == getattr(config, name), name
    assert loaded.vocab_size == BASE and loaded.model_type == "graphgpt2"
    for bad, word in [(dict(num_items=0), "num_items"), (dict(num_users=-1), "num_users"),
                      (dict(graph_bias="random"), "graph_bias"), (dict(bias_delta=1.5), "bias_delta"),
                      (dict(graph_bias_layers=[2]), "graph_bias_layers"), (dict(max_hops=0), "max_hops"),
                      (dict(mutual_reg_weight=-1.0), "mutual_reg_weight"),
                      (dict(user_token_dropout=1.5), "user_token_dropout")]:
        with pytest.raises(ValueError, match=word):
            tiny_config(**bad)


def test_bias_value_tables():
    paper = graph_bias_values(tiny_config(graph_bias="paper"))
    # index = h + 1 for h = -1, 0, 1, ..., 7
    assert paper == [0.0, 6 / 11, 1.0, 4 / 11, 3 / 11, 2 / 11, 1 / 11, 0.0, 0.0]
    exp = graph_bias_values(tiny_config(graph_bias="exp", bias_delta=0.5))
    assert exp == [0.0, 1.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.0]
    assert graph_bias_values(tiny_config(graph_bias="constant")) == [0.0] + [1.0] * 8
    # other caps: h=1 stays 1, self = C/(2C-1), cut-off at C
    three = graph_bias_values(tiny_config(max_hops=3))
    assert three == pytest.approx([0.0, 3 / 5, 1.0, 1 / 5, 0.0, 0.0])
    learned = tiny_model(graph_bias="learned")
    table = learned.transformer.h[1].attn.graph_bias.table
    assert table.shape == (4, 8)
    assert torch.allclose(table, torch.tensor(paper[1:]).expand(4, 8))


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_paper_bias_reaches_attention_exactly(impl):
    """With q = k = 0 the attention logits are the bias alone: log-prob differences reveal the bias values."""
    model = tiny_model(graph_bias="paper")
    model.set_attn_implementation("eager")  # attentions are only returned by eager
    for block in model.transformer.h:
        block.attn.c_attn.weight.data.zero_()
        block.attn.c_attn.bias.data.zero_()
    seq_len = 9
    ids = torch.tensor([[user_token(0)] + [item_token(j) for j in range(seq_len - 1)]])
    hop = torch.full((1, seq_len, seq_len), 7)
    hop[0, -1, :] = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 0])  # last query row: all hop values
    out = model(ids, hop_distances=hop, output_attentions=True)
    probs = out.attentions[0][0, 0, -1]  # layer 0, head 0, last query
    log_ratio = (probs.log() - probs[-2].log())  # relative to a bias-0 key (h = 7)
    expected = torch.tensor([1, 6 / 11, 4 / 11, 3 / 11, 2 / 11, 1 / 11, 0, 0, 6 / 11])
    assert torch.allclose(log_ratio, expected, atol=1e-5)
    if impl == "sdpa":  # same scores through sdpa
        model.set_attn_implementation("sdpa")
        assert torch.allclose(model(ids, hop_distances=hop).scores, out.scores, atol=1e-5)


@pytest.mark.parametrize("pad", [False, True])
def test_none_mode_equals_stock_gpt2(pad):
    model = tiny_model(graph_bias="none")
    config = model.config
    stock_config = GPT2Config(vocab_size=BASE, n_layer=2, n_embd=64, n_head=4, n_positions=64, bos_token_id=0,
                              eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    stock_lm = GPT2LMHeadModel(stock_config).eval()
    missing, unexpected = stock_lm.load_state_dict(model.state_dict(), strict=False)
    assert not [k for k in missing if k != "lm_head.weight"]
    assert all("embeddings" in k for k in unexpected)
    stock_base = GPT2Model(stock_config).eval()
    stock_base.load_state_dict(model.transformer.state_dict(), strict=True)

    ids, mask, hop = make_batch(pad=pad)
    text = torch.where(ids < BASE, ids, 7)  # text-only input for the stock model
    out = model(text, attention_mask=mask, hop_distances=hop, task="content", output_hidden_states=True)
    ref = stock_lm(text, attention_mask=mask)
    keep = mask.bool()
    assert torch.allclose(out.logits[keep], ref.logits[keep], atol=1e-5)
    ref_hidden = stock_base(text, attention_mask=mask).last_hidden_state
    assert torch.allclose(out.hidden_states[-1][keep], ref_hidden[keep], atol=1e-5)
    assert config.graph_bias == "none"


@pytest.mark.parametrize("mode", MODES)
def test_eager_and_sdpa_agree(mode):
    model = tiny_model(graph_bias=mode, graph_bias_per_head=mode in ("paper", "exp"),
                       graph_bias_layers=[1] if mode == "constant" else None)
    if mode == "learned":  # move away from the init so heads differ
        for block in model.transformer.h:
            block.attn.graph_bias.table.data += 0.3 * torch.randn_like(block.attn.graph_bias.table)
    for pad in (False, True):
        ids, mask, hop = make_batch(pad=pad)
        mask_arg = mask if pad else None
        model.set_attn_implementation("sdpa")
        sdpa = model(ids, attention_mask=mask_arg, hop_distances=hop, task="collab")
        sdpa_scores = model(ids, attention_mask=mask_arg, hop_distances=hop).scores
        model.set_attn_implementation("eager")
        eager = model(ids, attention_mask=mask_arg, hop_distances=hop, task="collab")
        eager_scores = model(ids, attention_mask=mask_arg, hop_distances=hop).scores
        keep = mask.bool()
        assert torch.allclose(sdpa.logits[keep], eager.logits[keep], atol=1e-5), (mode, pad)
        assert torch.allclose(sdpa_scores, eager_scores, atol=1e-5), (mode, pad)


def test_gradients_reach_learned_bias_and_head_scale():
    ids, mask, hop = make_batch(pad=True)
    targets = torch.zeros(3, ITEMS)
    targets[:, :5] = 1
    for overrides, name in [(dict(graph_bias="learned"), "table"),
                            (dict(graph_bias="paper", graph_bias_per_head=True), "head_scale")]:
        model = tiny_model(**overrides)
        for impl in ("eager", "sdpa"):
            model.set_attn_implementation(impl)
            model.zero_grad()
            model(ids, attention_mask=mask, hop_distances=hop, target_items=targets).loss.backward()
            for block in model.transformer.h:
                grad = getattr(block.attn.graph_bias, name).grad
                assert grad is not None and grad.abs().sum() > 0, (overrides, impl)
        # the bias kwargs also survive gradient checkpointing (same gradient)
        reference = model.transformer.h[0].attn.graph_bias.get_parameter(name).grad.clone()
        model.train()
        model.gradient_checkpointing_enable()
        model.zero_grad()
        model(ids, attention_mask=mask, hop_distances=hop, target_items=targets).loss.backward()
        assert torch.allclose(model.transformer.h[0].attn.graph_bias.get_parameter(name).grad, reference, atol=1e-6)


def test_bias_changes_id_prompts_but_not_text_only():
    model = tiny_model(graph_bias="paper")
    ids, mask, hop = make_batch(pad=True)
    with_bias = model(ids, attention_mask=mask, hop_distances=hop).scores
    without = model(ids, attention_mask=mask).scores
    assert (with_bias - without).abs().max() > 1e-3
    # text-only input: the hop tensor is all -1, the bias is all 0
    text = torch.where(ids < BASE, ids, 5)
    no_ids = torch.full_like(hop, -1)
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        a = model(text, attention_mask=mask, hop_distances=no_ids, task="content").logits
        b = model(text, attention_mask=mask, task="content").logits
        assert torch.allclose(a, b, atol=1e-6)
    # per-layer selection: biasing no layer but layer 1 differs from biasing both
    only_last = tiny_model(graph_bias="paper", graph_bias_layers=[1])
    assert only_last.transformer.h[0].attn.graph_bias is None
    assert (only_last(ids, attention_mask=mask, hop_distances=hop).scores - with_bias).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------------------------------
def test_embedding_routing_and_tied_heads():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.transformer.wte.num_embeddings == BASE
    ids = torch.tensor([[5, user_token(3), item_token(7), 9]])
    content = model.embed_tokens(ids, "content")
    collab = model.embed_tokens(ids, "collab")
    assert torch.equal(content[0, 0], model.transformer.wte.weight[5])
    assert torch.equal(content[0, 1], model.content_embeddings.user.weight[3])
    assert torch.equal(content[0, 2], model.content_embeddings.item.weight[7])
    assert torch.equal(collab[0, 2], model.collab_embeddings.item.weight[7])
    assert torch.equal(content[0, 3], collab[0, 3])
    # item head = active set's item table
    out = model(ids, task="collab", output_hidden_states=True)
    expected = out.hidden_states[-1] @ model.collab_embeddings.item.weight.T
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_user_token_dropout_reads_the_mean_user():
    ids = torch.tensor([[5, user_token(3), item_token(7), user_token(3)]] * 64)
    own = tiny_model().embed_tokens(ids, "collab")
    model = tiny_model(user_token_dropout=0.5)
    mean_user = model.collab_embeddings.user.weight.mean(0)
    assert torch.equal(model.embed_tokens(ids, "collab"), own)  # evaluation: every user token reads its own row
    model.train()
    torch.manual_seed(0)
    users = model.embed_tokens(ids, "collab")[:, [1, 3]]
    dropped = torch.isclose(users, mean_user).all(-1)
    kept = torch.isclose(users, own[:, [1, 3]]).all(-1)
    assert bool((dropped ^ kept).all()) and 0.3 < dropped.float().mean() < 0.7  # per token, about half
    assert torch.equal(model.embed_tokens(ids, "collab")[:, [0, 2]], own[:, [0, 2]])  # text and items untouched
    always = tiny_model(user_token_dropout=1.0)  # no identity, in evaluation too: two users, one prompt, one score
    other = ids.clone()
    other[:, [1, 3]] = user_token(8)
    assert torch.equal(always(ids[:1], task="rec").scores, always(other[:1], task="rec").scores)
    assert not torch.equal(tiny_model()(ids[:1], task="rec").scores, tiny_model()(other[:1], task="rec").scores)


def test_losses_match_manual_formulas():
    model = tiny_model()
    ids, mask, hop = make_batch(pad=True)
    # content: text labels on the last 4 real tokens of row 0
    labels = torch.full_like(ids, -100)
    labels[0, 6:10] = torch.tensor([3, 4, 5, 6])
    out = model(ids, attention_mask=mask, hop_distances=hop, task="content", labels=labels, reg_weight=0.0)
    manual = F.cross_entropy(out.logits[0, 5:9], torch.tensor([3, 4, 5, 6]))
    assert torch.allclose(out.lm_loss, manual, atol=1e-5) and torch.equal(out.loss, out.lm_loss)
    assert out.reg_loss is None
    # collab: item token labels mapped to item indices
    labels = torch.full_like(ids, -100)
    labels[0, 4], labels[2, 2] = item_token(11), item_token(250)
    out = model(ids, attention_mask=mask, hop_distances=hop, task="collab", labels=labels, reg_weight=0.0)
    manual = F.cross_entropy(torch.stack([out.logits[0, 3], out.logits[2, 1]]), torch.tensor([11, 250]))
    assert torch.allclose(out.item_loss, manual, atol=1e-5)
    # rec: multinomial likelihood from the last non-pad token
    targets = torch.zeros(3, ITEMS)
    targets[0, [1, 2]] = 1
    targets[1, 3] = 1
    targets[2, [4, 5, 6]] = 1
    out = model(ids, attention_mask=mask, hop_distances=hop, target_items=targets, reg_weight=0.5,
                output_hidden_states=True)
    last = mask.sum(1) - 1
    h_last = out.hidden_states[-1][torch.arange(3), last]
    scores = h_last @ model.collab_embeddings.item.weight.T
    assert torch.allclose(out.scores, scores, atol=1e-5)
    manual = -(targets * scores.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(out.rec_loss, manual, atol=1e-5)
    # mutual regulariser over real ID tokens (collab active, content frozen by stop-grad)
    reg = 0.0
    for b in range(3):
        for t in range(12):
            tok = int(ids[b, t])
            if mask[b, t] and tok >= BASE:
                table = "user" if tok < BASE + USERS else "item"
                idx = tok - BASE - (0 if table == "user" else USERS)
                a = getattr(model.collab_embeddings, table).weight[idx]
                c = getattr(model.content_embeddings, table).weight[idx]
                reg += float(((a - c) ** 2).sum().detach())
    assert out.reg_loss.item() == pytest.approx(0.5 * reg / 3, rel=1e-5)
    assert torch.allclose(out.loss, out.rec_loss + out.reg_loss)
    out.loss.backward()
    assert model.content_embeddings.item.weight.grad is None  # stop-grad on the other set
    assert model.collab_embeddings.item.weight.grad.abs().sum() > 0


def test_freeze_backbone_trains_only_new_parameters(tmp_path):
    model = tiny_model(freeze_backbone=True, graph_bias="learned")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"content_embeddings.user.weight", "content_embeddings.item.weight",
                         "collab_embeddings.user.weight", "collab_embeddings.item.weight",
                         "transformer.h.0.attn.graph_bias.table", "transformer.h.1.attn.graph_bias.table"}
    model.save_pretrained(tmp_path)
    reloaded = GraphGPT2ForRecommendation.from_pretrained(tmp_path)
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == trainable
    full = tiny_model()
    assert all(p.requires_grad for p in full.parameters())


def test_recommend_top_k_and_exclusion():
    model = tiny_model()
    ids, mask, hop = make_batch(pad=True)
    model.train()  # recommend must switch dropout off and restore the mode
    scores = model.eval()(ids, attention_mask=mask, hop_distances=hop).scores
    model.train()
    rec = model.recommend(ids, attention_mask=mask, hop_distances=hop, k=10)
    assert model.training
    assert rec.items.shape == (3, 10) and rec.scores.shape == (3, 10)
    assert torch.equal(rec.items, scores.topk(10).indices)
    assert torch.all(rec.scores[:, :-1] >= rec.scores[:, 1:])
    excluded = [rec.items[0, :3].tolist(), [], rec.items[2, :1].tolist()]
    by_list = model.recommend(ids, attention_mask=mask, hop_distances=hop, k=10, exclude_items=excluded)
    bool_mask = torch.zeros(3, ITEMS, dtype=torch.bool)
    for row, items in enumerate(excluded):
        bool_mask[row, items] = True
    by_mask = model.recommend(ids, attention_mask=mask, hop_distances=hop, k=10, exclude_items=bool_mask)
    assert torch.equal(by_list.items, by_mask.items)
    assert not set(excluded[0]) & set(by_list.items[0].tolist())
    assert torch.equal(by_list.items[1], rec.items[1])
    assert torch.equal(by_list.items[0, :7], rec.items[0, 3:])


def test_bad_inputs_give_clear_errors():
    model = tiny_model()
    ids, mask, hop = make_batch(pad=True)
    too_big = ids.clone()
    too_big[1, 4] = BASE + USERS + ITEMS
    with pytest.raises(ValueError, match=r"input_ids\[1, 4\].*out of range"):
        model(too_big, attention_mask=mask)
    negative = ids.clone()
    negative[0, 0] = -3
    with pytest.raises(ValueError, match="out of range"):
        model(negative)
    with pytest.raises(ValueError, match="hop_distances has shape"):
        model(ids, attention_mask=mask, hop_distances=hop[:, :-1])
    with pytest.raises(ValueError, match="integer tensor"):
        model(ids, attention_mask=mask, hop_distances=hop.float())
    with pytest.raises(ValueError, match="values must be in"):
        model(ids, attention_mask=mask, hop_distances=hop + 5)
    left = mask.flip(1)
    with pytest.raises(ValueError, match="right-padded"):
        model(ids, attention_mask=left)
    labels = torch.full_like(ids, -100)
    labels[0, 3] = item_token(2)
    with pytest.raises(ValueError, match="not a text token"):
        model(ids, task="content", labels=labels)
    labels[0, 3] = 17
    with pytest.raises(ValueError, match="not a item token"):
        model(ids, task="collab", labels=labels)
    with pytest.raises(ValueError, match="task must be"):
        model(ids, task="generate")
    with pytest.raises(ValueError, match="embedding_set"):
        model(ids, embedding_set="text")
    with pytest.raises(ValueError, match="target_items has shape"):
        model(ids, target_items=torch.zeros(3, ITEMS + 1))
    with pytest.raises(ValueError, match="k must be"):
        model.recommend(ids, k=ITEMS + 1)
    with pytest.raises(ValueError, match="outside"):
        model.recommend(ids, k=5, exclude_items=[[ITEMS], [], []])
    with pytest.raises(ValueError, match="bool of shape"):
        model.recommend(ids, k=5, exclude_items=torch.zeros(3, ITEMS))
    assert math.isfinite(model(ids, attention_mask=mask, hop_distances=hop).scores.sum().item())
