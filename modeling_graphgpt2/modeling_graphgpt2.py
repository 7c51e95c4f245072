"""GraphGPT2: GPT-2 with user/item ID tokens and an additive graph bias in self-attention.

Remote-code file: imports only torch, transformers and the sibling configuration file, so that
`save_pretrained` can copy it next to the weights and `AutoModel.from_pretrained(..., trust_remote_code=True)`
can load it without this package installed.

Layout (top to bottom):
  graph_bias_values        hop distance -> bias value for the fixed modes
  GraphHopBias       per-layer bias module (learned table / per-head scale)
  GraphEdgeBias            per-layer learned bias over edge buckets (graph_edge_bias)
  GraphGPT2Attention       GPT2Attention that merges the bias into the mask transformers built
  GraphGPT2Model           GPT2Model with the attention of every block swapped (GPT-2 key names kept)
  GraphIDEmbeddings        user + item embedding tables of one ID-embedding set
  GraphLever               the protocol of a graph lever (built from the config, train-graph tables as buffers)
  GraphScoreTerm           a lever that adds a standardised term to the rec scores
  GraphIDPropagation       optional LightGCN smoothing of the collab ID tables (the train adjacency as buffers)
  GraphEdgeTables          optional train-graph tables of the edge bias: (B, L) token ids -> (B, L, L) buckets
  GraphItemResidual        optional item-item residual of the item head (a train-graph matrix stored as buffers)
  GraphLowPassResidual     optional second residual: GF-CF's ideal low-pass filter (a train-graph basis, buffers)
  GraphGPT2ForRecommendation  routing of token ids, two ID sets, content/collab/rec heads, recommend(),
                              loading of stock GPT-2 weights

A new graph lever is one GraphLever subclass (its `attribute`, `enabled(config)`, `tables` and what it computes),
listed in GRAPH_LEVERS, plus its config field; the training code fills its tables (train/common.py LEVER_TABLES).
"""

import json
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.models.gpt2.modeling_gpt2 import GPT2Attention, GPT2Model, GPT2PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_graphgpt2 import (
    EDGE_BUCKET_NO_OTHER_USER,
    EDGE_BUCKET_SAME_ITEM,
    NUM_EDGE_BUCKETS,
    GraphGPT2Config,
)

# names of the attention-bias parameters inside the backbone (not GPT-2 weights)
GRAPH_PARAM_MARKERS = (".graph_bias.", ".edge_bias.")


def is_graph_parameter(name: str) -> bool:
    """Whether a backbone parameter name belongs to a graph-bias module rather than to GPT-2."""
    return any(marker in name for marker in GRAPH_PARAM_MARKERS)


# --------------------------------------------------------------------------------------------------------------
# Bias values
# --------------------------------------------------------------------------------------------------------------
def graph_bias_values(config: GraphGPT2Config, mode: str | None = None) -> list[float]:
    """Bias for each hop bucket, indexed by `h + 1` for h = -1 (not an ID pair), 0..max_hops, max_hops+1 (far).

    `mode` defaults to `config.graph_bias`; `"learned"` and `"none"` return the `"paper"` values (the learned
    table's initialisation). Index 0 (h = -1) is always 0.
    """
    mode = config.graph_bias if mode is None else mode
    cap = config.max_hops
    values = [0.0]
    for h in range(0, cap + 2):
        if mode == "exp":
            value = 1.0 if h == 0 else (float(config.bias_delta) ** (h - 1) if h <= cap else 0.0)
        elif mode == "constant":
            value = 1.0
        else:  # "paper" (also the init of "learned"): the authors' min-max of A + max(0, 1 - h/C)
            value = (cap * (h == 1) + max(0, cap - h)) / (2 * cap - 1)
        values.append(float(value))
    return values


class GraphHopBias(nn.Module):
    """The graph bias of one attention layer: (B, Q, K) hop buckets -> (B, H or 1, Q, K) float bias.

    Fixed modes ("paper", "exp", "constant") receive the bias already looked up once per forward (shared by all
    layers) and only apply the optional per-head scale. "learned" owns a (H, max_hops + 2) table for h = 0..C+1;
    the h = -1 bucket is pinned to 0 so text tokens never get a bias.
    """

    def __init__(self, config: GraphGPT2Config):
        super().__init__()
        self.mode = config.graph_bias
        self.num_heads = config.n_head
        if self.mode == "learned":
            paper = torch.tensor(graph_bias_values(config, "paper")[1:])
            self.table = nn.Parameter(paper.unsqueeze(0).repeat(config.n_head, 1))
        elif config.graph_bias_per_head:
            self.head_scale = nn.Parameter(torch.ones(config.n_head))

    def forward(self, hop_index: torch.Tensor, shared_bias: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "learned":
            # Bucket 0 (h = -1) is a fixed zero column; the rest is learnable.
            table = torch.cat([self.table.new_zeros(self.num_heads, 1), self.table], dim=1)  # (H, C+3)
            # advanced indexing is ~4x faster than F.embedding here (forward + backward, CPU)
            return table[:, hop_index].transpose(0, 1)  # (B, H, Q, K)
        if hasattr(self, "head_scale"):
            return shared_bias * self.head_scale.view(1, -1, 1, 1).to(shared_bias.dtype)
        return shared_bias


class GraphEdgeBias(nn.Module):
    """The edge bias of one attention layer (Graphormer's edge encoding): (B, Q, K) edge buckets -> (B, H, Q, K).

    One learned scalar per (head, bucket), initialised to 0 (the layer starts as without it); bucket 0 (not a
    user/item pair) is a fixed zero column.
    """

    def __init__(self, config: GraphGPT2Config):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(config.n_head, NUM_EDGE_BUCKETS - 1))

    def forward(self, edge_index: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.table.new_zeros(self.table.shape[0], 1), self.table], dim=1)
        return table[:, edge_index].transpose(0, 1)


def merge_bias_into_mask(mask: torch.Tensor | None, bias: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """Add `bias` to whatever mask transformers built, keeping masked positions masked.

    None (sdpa, no padding) -> causal where(tril, bias, min); bool (sdpa + padding) -> where(mask, bias, min);
    float (eager, additive 0 / min) -> mask + bias.
    """
    min_value = torch.finfo(bias.dtype).min
    if mask is None:
        causal = torch.ones(q_len, k_len, dtype=torch.bool, device=bias.device).tril(k_len - q_len)
        return torch.where(causal, bias, min_value)
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, min_value)
    return mask.to(bias.dtype) + bias


# --------------------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------------------
class GraphGPT2Attention(GPT2Attention):
    """GPT-2 self-attention plus the additive graph bias; works for "eager" and "sdpa".

    The bias inputs come through the forward kwargs that GPT2Model passes to every block unchanged:
    `graph_hop_index` (B, Q, K) long = hop distance + 1, and `graph_shared_bias` (B, 1, Q, K) for fixed modes.
    """

    def __init__(self, config, is_cross_attention=False, layer_idx=None):
        super().__init__(config, is_cross_attention=is_cross_attention, layer_idx=layer_idx)
        self_attention = (not is_cross_attention) and layer_idx is not None
        self.graph_bias = GraphHopBias(config) if self_attention and config.biased_layer(layer_idx) else None
        self.edge_bias = GraphEdgeBias(config) if self_attention and config.graph_edge_bias else None

    def forward(self, hidden_states, cache=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, output_attentions=False, **kwargs):
        hop_index = kwargs.pop("graph_hop_index", None)
        shared_bias = kwargs.pop("graph_shared_bias", None)
        edge_index = kwargs.pop("graph_edge_index", None)
        biases = []
        if encoder_hidden_states is None:
            if self.graph_bias is not None and hop_index is not None:
                biases.append(self.graph_bias(hop_index, shared_bias))
            if self.edge_bias is not None and edge_index is not None:
                biases.append(self.edge_bias(edge_index))
        if biases:
            if self.config._attn_implementation not in ("eager", "sdpa"):
                raise ValueError(
                    f"GraphGPT2 graph bias needs attn_implementation 'eager' or 'sdpa', "
                    f"got {self.config._attn_implementation!r}"
                )
            bias = sum(biases[1:], biases[0]).to(hidden_states.dtype)
            attention_mask = merge_bias_into_mask(attention_mask, bias, bias.shape[-2], bias.shape[-1])
        return super().forward(
            hidden_states,
            cache=cache,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            output_attentions=output_attentions,
            **kwargs,
        )


class GraphGPT2PreTrainedModel(GPT2PreTrainedModel):
    """Shared init for the GraphGPT2 models (GPT-2 init + graph-bias parameters)."""

    config: GraphGPT2Config
    config_class = GraphGPT2Config
    base_model_prefix = "transformer"
    _no_split_modules = ["GPT2Block"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, GraphHopBias):
            if hasattr(module, "table"):
                paper = torch.tensor(graph_bias_values(self.config, "paper")[1:], dtype=module.table.dtype)
                init.copy_(module.table, paper.unsqueeze(0).expand_as(module.table).to(module.table.device))
            if hasattr(module, "head_scale"):
                init.ones_(module.head_scale)
        if isinstance(module, GraphEdgeBias):
            init.zeros_(module.table)
        if isinstance(module, GraphScoreTerm):
            init.constant_(module.scale, float(getattr(self.config, module.scale_field)))


class GraphGPT2Model(GraphGPT2PreTrainedModel, GPT2Model):
    """GPT-2 backbone (text ids or `inputs_embeds`) whose attention takes the graph bias from `hop_distances`.

    Parameter names are GPT-2's (`wte`, `wpe`, `h.{i}.attn.c_attn`, ...) plus `h.{i}.attn.graph_bias.*` for
    the learnable bias parameters, so a stock GPT-2 state dict loads into it.
    """

    def post_init(self):
        """Swap each block's attention for a GraphGPT2Attention, then initialise as GPT-2 does.

        `GPT2Model.__init__` builds the stock blocks and ends with `post_init()`: swapping here, before the
        weights are initialised, keeps GPT-2's parameter names and the initialisation order (so a seed gives the
        same weights as ever) without re-writing `GPT2Model.__init__`.
        """
        for layer_idx, block in enumerate(self.h):
            if not isinstance(block.attn, GraphGPT2Attention):
                block.attn = GraphGPT2Attention(config=self.config, layer_idx=layer_idx)
        super().post_init()

    def forward(self, input_ids=None, cache=None, attention_mask=None, inputs_embeds=None,
                hop_distances: torch.Tensor | None = None, edge_buckets: torch.Tensor | None = None, **kwargs):
        """GPT2Model.forward plus `hop_distances` (B, L, K) long: -1 / 0..max_hops / max_hops+1, and, for
        `graph_edge_bias`, `edge_buckets` (B, L, L) long bucket ids (GraphEdgeTables)."""
        if edge_buckets is not None and self.config.graph_edge_bias:
            kwargs["graph_edge_index"] = edge_buckets
        if hop_distances is not None and self.config.graph_bias != "none":
            reference = input_ids if input_ids is not None else inputs_embeds
            past = cache.get_seq_length() if cache is not None else 0
            hop_index = self._hop_index(hop_distances, reference.shape[0], reference.shape[1], past)
            kwargs["graph_hop_index"] = hop_index
            if self.config.graph_bias != "learned":
                table = torch.tensor(graph_bias_values(self.config), device=hop_index.device, dtype=self.dtype)
                kwargs["graph_shared_bias"] = table[hop_index].unsqueeze(1)  # (B, 1, Q, K)
        return super().forward(input_ids=input_ids, cache=cache, attention_mask=attention_mask,
                               inputs_embeds=inputs_embeds, **kwargs)

    def _hop_index(self, hop: torch.Tensor, batch: int, q_len: int, past: int) -> torch.Tensor:
        """Validate the hop tensor and return `hop + 1` (bucket index, 0 = not an ID pair)."""
        if not isinstance(hop, torch.Tensor) or hop.dtype in (torch.bool,) or hop.is_floating_point():
            raise ValueError(f"hop_distances must be an integer tensor, got {getattr(hop, 'dtype', type(hop))}")
        expected = (batch, q_len, past + q_len)
        if tuple(hop.shape) != expected:
            raise ValueError(
                f"hop_distances has shape {tuple(hop.shape)}, expected (batch, seq_len, past+seq_len) = {expected}"
            )
        if hop.numel() and (int(hop.min()) < -1 or int(hop.max()) > self.config.max_hops + 1):
            raise ValueError(
                f"hop_distances values must be in [-1, max_hops+1 = {self.config.max_hops + 1}], "
                f"got min {int(hop.min())}, max {int(hop.max())}"
            )
        return hop.long() + 1


# --------------------------------------------------------------------------------------------------------------
# Recommendation model
# --------------------------------------------------------------------------------------------------------------
@dataclass
class GraphGPT2RecOutput(ModelOutput):
    """Output of GraphGPT2ForRecommendation.forward.

    Args:
        loss: task loss + reg_loss (when the task's labels / targets were given).
        lm_loss: text LM cross-entropy (task "content").
        item_loss: item LM cross-entropy over the item head (task "collab").
        rec_loss: multinomial negative log-likelihood over all items (task "rec").
        reg_loss: weighted mutual regulariser between the two ID-embedding sets (already in `loss`).
        logits: (B, L, base_vocab_size) text logits ("content") or (B, L, num_items) item logits ("collab").
        scores: (B, num_items) item scores from the last non-pad token ("rec"), the graph residual included.
        user_states: (B, n_embd) ("rec") the last non-pad token's final hidden state: `scores` = user_states x the
            item table^T + the score terms (what scores an item row that is not in the table yet, e.g. a new item).
        score_terms: ("rec", when the model has score-term levers) {lever attribute: (B, num_items) its standardised
            term before its scale}, e.g. "graph_residual" (x W / std(x W)) and "graph_lowpass": `scores` = item
            logits + the sum of `<lever>.scale` * term. In training mode a term whose scale is fixed at 0 is left out.
        hidden_states, attentions: as in transformers (with output_hidden_states / output_attentions).
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    item_loss: torch.FloatTensor | None = None
    rec_loss: torch.FloatTensor | None = None
    reg_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    user_states: torch.FloatTensor | None = None
    score_terms: dict[str, torch.FloatTensor] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class GraphGPT2Recommendations(ModelOutput):
    """Top-k recommendations: `items` (B, k) item indices and their `scores` (B, k), best first."""

    items: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None


class GraphIDEmbeddings(nn.Module):
    """One ID-embedding set: a user table (U, d) and an item table (I, d)."""

    def __init__(self, config: GraphGPT2Config):
        super().__init__()
        self.user = nn.Embedding(config.num_users, config.n_embd)
        self.item = nn.Embedding(config.num_items, config.n_embd)


class GraphLever(nn.Module):
    """The protocol of a graph lever of GraphGPT2ForRecommendation (docs/model.md, "Graph levers"):
    - `attribute`: the model attribute it lives under; the model has None there when `enabled(config)` is false,
      so a state dict without the lever is unchanged and old checkpoints load strictly;
    - `tables`: its train-graph tables, persistent buffers (saved with the weights, so a published model scores
      as it was trained), filled by the training code from the TRAIN interactions through `set_tables`, which
      checks the shapes for every lever and `check_tables` for the lever's own value rules;
    - its parameters, if any, are new parameters: the ID learning rate, no weight decay, trained in full under PEFT.
    """

    attribute: str = ""
    tables: tuple[str, ...] = ()

    @classmethod
    def enabled(cls, config: GraphGPT2Config) -> bool:
        raise NotImplementedError

    @torch.no_grad()
    def set_tables(self, *arrays) -> None:
        """Copy in the tables, in the order of `tables` (numpy arrays or tensors of the buffers' shapes)."""
        if len(arrays) != len(self.tables):
            raise ValueError(f"{type(self).__name__} takes {len(self.tables)} tables {self.tables}, got {len(arrays)}")
        new = {name: torch.as_tensor(value) for name, value in zip(self.tables, arrays)}
        for name, tensor in new.items():
            want = tuple(getattr(self, name).shape)
            if tuple(tensor.shape) != want:
                raise ValueError(f"{type(self).__name__} table {name} must have shape {want}, got {tuple(tensor.shape)}"
                                 f"{self.shape_hint}")
        self.check_tables(**new)
        for name, tensor in new.items():
            getattr(self, name).copy_(tensor)

    shape_hint = ""  # what the shapes are, for the error message

    def check_tables(self, **tables: torch.Tensor) -> None:
        """Value rules beyond the shapes (index ranges, signs): raise ValueError naming the table."""


class GraphScoreTerm(GraphLever):
    """A graph lever that adds `scale * r / std(r)` to the "rec" scores, r (B, I) computed by `raw` from the prompt's
    item tokens and standardised over the items per prompt. `scale` starts at the config's `scale_field` and is
    learned only when `learn_scale(config)` (else it is chosen on validation after fine-tuning)."""

    scale_field: str = ""

    def __init__(self, config: GraphGPT2Config):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(getattr(config, self.scale_field))),
                                  requires_grad=self.learn_scale(config))

    @classmethod
    def learn_scale(cls, config: GraphGPT2Config) -> bool:
        return False

    def raw(self, item_index: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        """(B, L) item indices of the prompt's tokens and (B, L) "is an item token" -> (B, I) term before scaling."""
        raise NotImplementedError

    def forward(self, item_index: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        return self.scale * self.standardised(item_index, is_item)

    def fixed_at_zero(self) -> bool:
        """The scale is 0 and not learned: the term adds nothing to the scores or the loss."""
        return not self.scale.requires_grad and float(self.scale) == 0.0

    def shift(self, scores: torch.Tensor) -> torch.Tensor | None:
        """Scores added as they are after the scaled term, (I,) or (B, I), given `scores` (B, I), the rec scores
        before this lever (none by default)."""
        return None

    def standardised(self, item_index: torch.Tensor, is_item: torch.Tensor, **raw_args) -> torch.Tensor:
        """(B, I) r / std(r), before the scale; a prompt without items gives 0 / tiny = 0. ``raw_args`` go to `raw`."""
        residual = self.raw(item_index, is_item, **raw_args)
        spread = residual.std(dim=-1, keepdim=True).clamp_min(torch.finfo(residual.dtype).tiny)
        return residual / spread


class SymmetricSparseProduct(torch.autograd.Function):
    """`adj @ e` for a symmetric sparse CSR `adj`. Its gradient is `adj @ grad` again, so backward reuses the CSR
    product instead of transposing a sparse matrix (2.3x faster on Beauty's graph)."""

    @staticmethod
    def forward(ctx, adj: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        ctx.adj = adj
        return adj @ e

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adj @ grad


class GraphIDPropagation(GraphLever):
    """LightGCN smoothing of one ID-embedding set: `[users; items] -> mean_{l=0..K} A^l [users; items]`.

    A = D^-1/2 Adj D^-1/2 of the bipartite TRAIN graph (users 0..U-1, items U..U+I-1), stored as CSR buffers
    (`crow_indices`, `col_indices`, `values`; filled by the training code with `set_tables`), so a published
    model smooths exactly as it was trained. Costs 2K sparse products per forward (K forward, K backward).
    """

    attribute = "id_propagation"
    tables = ("crow_indices", "col_indices", "values")
    shape_hint = " (nodes + 1, or 2 * graph_train_edges)"

    @classmethod
    def enabled(cls, config: GraphGPT2Config) -> bool:
        return config.id_propagation_layers > 0

    def __init__(self, config: GraphGPT2Config):
        super().__init__()
        self.layers = config.id_propagation_layers
        nodes, entries = config.num_users + config.num_items, 2 * config.graph_train_edges
        self.register_buffer("crow_indices", torch.zeros(nodes + 1, dtype=torch.long))
        self.register_buffer("col_indices", torch.zeros(entries, dtype=torch.long))
        self.register_buffer("values", torch.zeros(entries))

    def check_tables(self, crow_indices, col_indices, values) -> None:
        nodes = self.crow_indices.shape[0] - 1
        if col_indices.numel() and (int(col_indices.min()) < 0 or int(col_indices.max()) >= nodes):
            raise ValueError(f"adjacency col_indices must be node indices in [0, {nodes})")

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(U, d) and (I, d) tables -> the smoothed (U, d) and (I, d) tables."""
        nodes = self.crow_indices.shape[0] - 1
        with warnings.catch_warnings():  # CSR support is "beta"; the product used here is the plain one
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            adj = torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values.to(users.dtype),
                                          size=(nodes, nodes), check_invariants=False)  # checked in check_tables
        e = torch.cat([users, items])
        total = e
        for _ in range(self.layers):
            e = SymmetricSparseProduct.apply(adj, e)
            total = total + e
        total = total / (self.layers + 1)
        return total[: users.shape[0]], total[users.shape[0]:]


class GraphEdgeTables(GraphLever):
    """The train-graph tables of the edge bias and the lookup (B, L) token ids -> (B, L, L) edge buckets.

    Buffers (filled by the training code with `set_tables`): `columns` (I, N) int32, each item's N most co-held
    items sorted by column (padding I); `buckets` (I, N) int8, the item-item bucket of each of those pairs;
    `degree_buckets` (I,) int8, the user-item bucket of each item. Bucket layout: configuration_graphgpt2 `EDGE_*`.
    """

    attribute = "edge_tables"
    tables = ("columns", "buckets", "degree_buckets")

    @classmethod
    def enabled(cls, config: GraphGPT2Config) -> bool:
        return config.graph_edge_bias

    def __init__(self, config: GraphGPT2Config):
        super().__init__()
        self.base, self.num_users = config.base_vocab_size, config.num_users
        width = min(config.graph_edge_topn, config.num_items)
        self.register_buffer("columns", torch.full((config.num_items, width), config.num_items, dtype=torch.int32))
        self.register_buffer("buckets", torch.full((config.num_items, width), EDGE_BUCKET_NO_OTHER_USER, dtype=torch.int8))
        self.register_buffer("degree_buckets", torch.zeros(config.num_items, dtype=torch.int8))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) token ids (and padding mask) -> (B, L, L) long edge buckets; 0 wherever a token is text or pad."""
        first_item = self.base + self.num_users
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        is_item = (input_ids >= first_item) & real
        is_user = (input_ids >= self.base) & (input_ids < first_item) & real
        item = torch.where(is_item, input_ids - first_item, 0)
        # item-item: find key item j among query item i's co-held columns (binary search per query row)
        rows = self.columns[item]  # (B, L, N), sorted
        keys = item.to(rows.dtype).unsqueeze(1).expand(-1, item.shape[1], -1).contiguous()  # (B, Q, K): key item
        found_at = torch.searchsorted(rows, keys).clamp_max(rows.shape[-1] - 1)
        found = rows.gather(-1, found_at) == keys
        pair = torch.where(found, self.buckets[item].gather(-1, found_at).long(), EDGE_BUCKET_NO_OTHER_USER)
        pair = torch.where(item.unsqueeze(2) == item.unsqueeze(1), EDGE_BUCKET_SAME_ITEM, pair)
        both_items = is_item.unsqueeze(2) & is_item.unsqueeze(1)
        degree = self.degree_buckets[item].long()
        user_item = is_user.unsqueeze(2) & is_item.unsqueeze(1)  # query user, key item
        item_user = is_item.unsqueeze(2) & is_user.unsqueeze(1)
        out = torch.where(both_items, pair, 0)
        out = torch.where(user_item, degree.unsqueeze(1), out)
        return torch.where(item_user, degree.unsqueeze(2), out)


class GraphItemResidual(GraphScoreTerm):
    """Graph residual of the item head: `scale * r / std(r)`, r = x W, x = multi-hot of the prompt's item tokens.

    W (num_items x num_items, fitted on the train graph by the training code) is stored sparsely as the top
    `graph_residual_topn` entries of each row: `indices` (I, N) column indices and `values` (I, N), persistent
    buffers saved with the weights, so a published model reproduces its scores. `scale` is a learned scalar, or a
    fixed one that the training code chooses on validation after fine-tuning (`finetune.residual_scale_grid`).
    r is divided by its standard deviation over the items (per prompt): x W is ~3e-3 wide on Beauty where the
    item logits are ~1 wide, so an unnormalised scale would have to travel to ~500 at the ID learning rate.
    """

    attribute = "graph_residual"
    tables = ("indices", "values")
    scale_field = "graph_residual_scale_init"
    shape_hint = " (num_items, graph_residual_topn)"

    @classmethod
    def enabled(cls, config: GraphGPT2Config) -> bool:
        return config.graph_residual != "none"

    @classmethod
    def learn_scale(cls, config: GraphGPT2Config) -> bool:
        return bool(config.graph_residual_learn_scale)

    def __init__(self, config: GraphGPT2Config):
        super().__init__(config)
        width = min(config.graph_residual_topn, config.num_items)
        self.register_buffer("indices", torch.zeros(config.num_items, width, dtype=torch.long))
        self.register_buffer("values", torch.zeros(config.num_items, width))

    def check_tables(self, indices, values) -> None:
        num_items = self.indices.shape[0]
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_items):
            raise ValueError(f"graph residual indices must be item indices in [0, {num_items})")

    def raw(self, item_index: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        """(B, I) x W."""
        batch, num_items = item_index.shape[0], self.indices.shape[0]
        weights = self.values[item_index] * is_item.unsqueeze(-1).to(self.values.dtype)  # (B, L, N)
        residual = self.values.new_zeros(batch, num_items)
        residual.scatter_add_(1, self.indices[item_index].reshape(batch, -1), weights.reshape(batch, -1))
        return residual


def first_columns(basis: torch.Tensor, rank: int) -> torch.Tensor:
    """The rank-`rank` low-pass basis: the first `rank` columns of `basis`, contiguous (so a rank sweep scores with
    the very tensor that `GraphLowPassResidual.keep_rank` keeps)."""
    if not 1 <= rank <= basis.shape[1]:
        raise ValueError(f"a low-pass rank must be in [1, {basis.shape[1]}] (the basis' width), got {rank}")
    return basis[:, :rank].contiguous()


class GraphLowPassResidual(GraphScoreTerm):
    """GF-CF's ideal low-pass filter as a residual of the item head: `scale * r / std(r)`,
    r = (x D^-1/2 V)(V^T D^1/2), x = multi-hot of the prompt's item tokens.

    `basis` V (I, k) holds the top-k right singular vectors of the degree-normalised TRAIN interaction matrix and
    `sqrt_degree` the square roots of the train item degrees (persistent buffers, filled by the training code).
    The cost per prompt is O(L k + I k): no item x item matrix. `scale` is fixed (chosen on validation).
    """

    attribute = "graph_lowpass"
    tables = ("basis", "sqrt_degree")
    scale_field = "graph_lowpass_scale_init"
    shape_hint = " (num_items, graph_lowpass_rank) and (num_items,)"

    @classmethod
    def enabled(cls, config: GraphGPT2Config) -> bool:
        return config.graph_lowpass_rank > 0

    def __init__(self, config: GraphGPT2Config):
        super().__init__(config)
        rank = min(config.graph_lowpass_rank, config.num_items)
        self.register_buffer("basis", torch.zeros(config.num_items, rank))
        self.register_buffer("sqrt_degree", torch.zeros(config.num_items))

    def check_tables(self, basis, sqrt_degree) -> None:
        if bool((sqrt_degree < 0).any()):
            raise ValueError("low-pass sqrt degrees must be >= 0")

    @torch.no_grad()
    def keep_rank(self, basis: torch.Tensor, rank: int) -> None:
        """Serve the rank-`rank` filter: the first `rank` columns of `basis` (I, k >= rank; singular vectors
        descending), e.g. of a basis fitted at a larger rank. Set `graph_lowpass_rank` of the model's config to `rank`
        too, so the saved model reloads strictly."""
        if basis.shape[0] != self.basis.shape[0]:
            raise ValueError(f"keep_rank needs a basis of {self.basis.shape[0]} rows, got {tuple(basis.shape)}")
        self.basis = first_columns(basis, rank).to(self.basis)

    def raw(self, item_index: torch.Tensor, is_item: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
        """(B, I) (x D^-1/2 V)(V^T D^1/2); `basis` (I, r) instead of V: another rank's filter (a rank sweep)."""
        basis = self.basis if basis is None else basis
        inverse = torch.where(self.sqrt_degree > 0, 1.0 / self.sqrt_degree.clamp_min(1e-12), 0.0)
        weights = inverse[item_index] * is_item.to(basis.dtype)  # x D^-1/2 on the prompt's items
        projected = torch.einsum("bl,blk->bk", weights, basis[item_index])  # (B, k)
        return (projected @ basis.T) * self.sqrt_degree  # (B, I)


class GraphColdItemMap(GraphScoreTerm):
    """Items without a train interaction (new products) scored from their text (docs/model.md "New items"):

    - a collab row: token counts (n, base_vocab_size) -> TF-IDF (sublinear tf x `idf`, unit rows) -> x `basis`
      (rank-k text vector) -> x `weight` + `bias`, a ridge map fitted on the trained rows of the items with
      interactions (`rows`); a held-out cold item's row in the item table is this map's output;
    - a score term for those items only (`cold` marks them): `scale * r / std(r)`, r = the cosine, in the rank-k
      text space, of the item to the mean of the prompt's items (`item_text`: unit text vectors of the catalog),
      the content-kNN signal the collab row alone does not carry;
    - `offset`, subtracted from those items' scores (and a new item's): where they stand against the catalog in a
      whole-shop ranking;
    - with `cold_item_neighbours` K > 0, `transfer_weight` times the mean of the rec scores of its K text
      neighbours among the items with interactions, weighted by their cosines (`neighbours`, `neighbour_weights`)
      to the power `cold_item_neighbour_power`: the collaborative signal that the text alone does not carry (a new
      item's neighbours are found when it is scored, in the same text space).

    The tables are filled after fine-tuning (train/cold_items.py); until then they are 0 (the term is 0, `fitted()`
    is False), and the scale and the offset are chosen on the validation cold items."""

    attribute = "cold_item_map"
    tables = ("idf", "basis", "weight", "bias", "item_text", "cold")
    scale_field = "cold_item_text_scale_init"
    shape_hint = (" (base_vocab_size,), (base_vocab_size, rank), (rank, n_embd), (n_embd,), (num_items, rank), "
                  "(num_items,)")

    @classmethod
    def enabled(cls, config: GraphGPT2Config) -> bool:
        return config.cold_item_map_rank > 0

    def __init__(self, config: GraphGPT2Config):
        super().__init__(config)
        vocab, rank, width = config.base_vocab_size, config.cold_item_map_rank, config.n_embd
        self.register_buffer("idf", torch.zeros(vocab))
        self.register_buffer("basis", torch.zeros(vocab, rank))
        self.register_buffer("weight", torch.zeros(rank, width))
        self.register_buffer("bias", torch.zeros(width))
        self.register_buffer("item_text", torch.zeros(config.num_items, rank))
        self.register_buffer("cold", torch.zeros(config.num_items))
        self.register_buffer("offset", torch.zeros(()))  # chosen on validation after the tables (not a table)
        self.neighbour_count = config.cold_item_neighbours
        self.neighbour_power = config.cold_item_neighbour_power  # chosen on validation with the transfer weight
        if self.neighbour_count:  # registered only when asked for, so older checkpoints load strictly
            self.tables = type(self).tables + ("neighbours", "neighbour_weights")
            self.shape_hint = type(self).shape_hint + ", (num_items, K), (num_items, K)"
            self.register_buffer("neighbours", torch.zeros(config.num_items, self.neighbour_count, dtype=torch.long))
            self.register_buffer("neighbour_weights", torch.zeros(config.num_items, self.neighbour_count))
            self.register_buffer("transfer_weight", torch.zeros(()))  # chosen on validation (not a table)

    def check_tables(self, idf, basis, weight, bias, item_text, cold, neighbours=None, neighbour_weights=None) -> None:
        if bool((idf < 0).any()):
            raise ValueError("cold_item_map idf must be >= 0")
        if not bool(((cold == 0) | (cold == 1)).all()):
            raise ValueError("cold_item_map cold must be a 0/1 mask")
        if neighbours is not None and neighbours.numel():
            if int(neighbours.min()) < 0 or int(neighbours.max()) >= cold.shape[0]:
                raise ValueError(f"cold_item_map neighbours must be item indices in [0, {cold.shape[0]})")
            if bool((neighbour_weights < 0).any()):
                raise ValueError("cold_item_map neighbour_weights must be >= 0")

    def fitted(self) -> bool:
        return bool((self.idf > 0).any())

    def shift(self, scores: torch.Tensor) -> torch.Tensor:
        """-offset on the cold items, plus their text neighbours' scores (with `cold_item_neighbours`)."""
        cold = self.cold.nonzero().squeeze(1)
        if not self.neighbour_count or not len(cold):  # (I,): no (B, I) copy while fine-tuning, nor without cold items
            return -self.offset * self.cold
        carried = self.carried_scores(scores, self.neighbours[cold], self.neighbour_weights[cold] ** self.neighbour_power)
        return (-self.offset * self.cold).expand_as(scores).index_add(1, cold, self.transfer_weight * carried)

    @staticmethod
    def carried_scores(scores: torch.Tensor, neighbours: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B, n): for n items with (n, K) neighbours and weights, the weighted mean of the neighbours' scores."""
        weights = weights.to(scores.dtype)
        total = (scores[:, neighbours] * weights).sum(-1)  # (B, n, K) -> (B, n)
        return total / weights.sum(-1).clamp_min(torch.finfo(weights.dtype).tiny)

    def nearest_warm_items(self, unit_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, rank) unit text vectors -> (n, K) indices and cosines of the nearest items that have interactions
        (not `cold`; an item without text has cosine 0), negative cosines clipped to 0."""
        cosines = (unit_vectors @ self.item_text.T).masked_fill(self.cold.bool(), float("-inf"))
        top = torch.topk(cosines, min(self.neighbour_count, cosines.shape[1]), dim=-1)
        return top.indices, top.values.clamp_min(0.0)

    def text_vectors(self, counts: torch.Tensor) -> torch.Tensor:
        """(n, base_vocab_size) token counts of n items' texts -> (n, rank) text vectors."""
        counts = counts.to(self.idf.dtype)
        tf = torch.where(counts > 0, 1.0 + torch.log(counts.clamp_min(1.0)), 0.0) * self.idf
        return (tf / tf.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(tf.dtype).tiny)) @ self.basis

    def rows(self, counts: torch.Tensor) -> torch.Tensor:
        """(n, base_vocab_size) token counts -> (n, n_embd) collab item rows."""
        return self.text_vectors(counts) @ self.weight + self.bias

    def prompt_text(self, item_index: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        """(B, rank): the mean unit text vector of each prompt's items."""
        mask = is_item.to(self.item_text.dtype).unsqueeze(-1)
        return (self.item_text[item_index] * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def raw(self, item_index: torch.Tensor, is_item: torch.Tensor) -> torch.Tensor:
        """(B, I): the text cosine to the prompt on the `cold` items, 0 elsewhere (cost O(B k |cold|): nothing while
        fine-tuning, when no item is marked yet, nor on a folder without held-out cold items)."""
        cold = self.cold.nonzero().squeeze(1)
        prompt = self.prompt_text(item_index, is_item)
        out = torch.zeros(prompt.shape[0], self.cold.shape[0], dtype=prompt.dtype, device=prompt.device)
        return out.index_copy(1, cold, prompt @ self.item_text[cold].T)

    def new_item_scores(self, item_index, is_item, user_states, counts, scores) -> torch.Tensor:
        """(B, n) scores of n new items (token counts), as a cold catalog item with the same text gets them: the
        mapped rows, this term (standardised by the prompt's spread over the catalog), the offset and, with
        `cold_item_neighbours`, the text neighbours' `scores` (the catalog's rec scores)."""
        vectors = self.text_vectors(counts)
        unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny)
        spread = self.raw(item_index, is_item).std(dim=-1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny)
        term = (self.prompt_text(item_index, is_item) @ unit.T) / spread
        out = user_states @ (vectors @ self.weight + self.bias).T + self.scale * term - self.offset
        if self.neighbour_count:
            neighbours, cosines = self.nearest_warm_items(unit)
            out = out + self.transfer_weight * self.carried_scores(scores, neighbours, cosines ** self.neighbour_power)
        return out


# every graph lever the model can hold, in the order they are registered (docs/model.md, "Graph levers")
GRAPH_LEVERS = (GraphItemResidual, GraphLowPassResidual, GraphIDPropagation, GraphEdgeTables, GraphColdItemMap)


TASKS = ("content", "collab", "rec")
EMBEDDING_SETS = ("content", "collab")


class GraphGPT2ForRecommendation(GraphGPT2PreTrainedModel):
    """Graph-aware GPT-2 recommender (LLM4REC / CLLM4Rec design) on one shared backbone.

    - Token ids route to `transformer.wte` (text), `<set>_embeddings.user` or `<set>_embeddings.item`.
    - Two ID-embedding sets, `content_embeddings` and `collab_embeddings`, with a mutual regulariser.
    - `lm_head` (text) is tied to `wte`; the item head is the active set's item table (no extra weights), plus
      the optional graph residual (`config.graph_residual`, `GraphItemResidual`) in the "rec" scores.
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GraphGPT2Config):
        super().__init__(config)
        self.transformer = GraphGPT2Model(config)
        self.content_embeddings = GraphIDEmbeddings(config)
        self.collab_embeddings = GraphIDEmbeddings(config)
        self.lm_head = nn.Linear(config.n_embd, config.base_vocab_size, bias=False)
        # only with the option on, so state dicts without it are unchanged (old checkpoints load strictly)
        for lever in GRAPH_LEVERS:
            setattr(self, lever.attribute, lever(config) if lever.enabled(config) else None)
        self.post_init()
        if config.freeze_backbone:
            self.set_backbone_trainable(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """PreTrainedModel.from_pretrained, then re-apply `freeze_backbone` (loading replaces the parameters)."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if model.config.freeze_backbone:
            model.set_backbone_trainable(False)
        for _, term in model.score_terms():
            term.scale.requires_grad_(term.learn_scale(model.config))
        return loaded

    # ---- small helpers --------------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.transformer.wte

    def set_input_embeddings(self, new_embeddings):
        self.transformer.wte = new_embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def levers(self) -> list[tuple[str, GraphLever]]:
        """(attribute, module) of every graph lever the model holds, in GRAPH_LEVERS order."""
        return [(lever.attribute, getattr(self, lever.attribute)) for lever in GRAPH_LEVERS
                if getattr(self, lever.attribute) is not None]

    def score_terms(self) -> list[tuple[str, GraphScoreTerm]]:
        """The levers that add a term to the "rec" scores."""
        return [(name, lever) for name, lever in self.levers() if isinstance(lever, GraphScoreTerm)]

    def id_embeddings(self, name: str) -> GraphIDEmbeddings:
        """The ID-embedding set called `name` ("content" or "collab")."""
        if name not in EMBEDDING_SETS:
            raise ValueError(f"embedding_set must be one of {EMBEDDING_SETS}, got {name!r}")
        return self.content_embeddings if name == "content" else self.collab_embeddings

    def backbone_parameters(self):
        """The parameters that come from GPT-2 (everything but ID embeddings and graph-bias parameters)."""
        for name, param in self.transformer.named_parameters():
            if not is_graph_parameter(name):
                yield param

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze (CLLM4Rec) or unfreeze (the paper's code) the GPT-2 weights; `lm_head` is tied to `wte`."""
        for param in self.backbone_parameters():
            param.requires_grad_(trainable)
        self.lm_head.weight.requires_grad_(trainable)

    def new_parameters(self):
        """The parameters GPT-2 does not have: both ID-embedding sets, the graph-bias and edge-bias parameters and
        the graph levers' parameters (the score terms' scales)."""
        yield from self.content_embeddings.parameters()
        yield from self.collab_embeddings.parameters()
        for _, lever in self.levers():
            yield from lever.parameters()
        for name, param in self.transformer.named_parameters():
            if is_graph_parameter(name):
                yield param

    def optimizer_groups(self, lr_id: float, lr_backbone: float, weight_decay: float) -> list[dict]:
        """AdamW parameter groups (nanoGPT's `configure_optimizers`), trainable parameters only, tied weights once:
        - `id_embeddings`: the new parameters (`new_parameters`) at `lr_id`, never decayed;
        - `backbone_decay`: backbone matrices (LoRA adapters included) at `lr_backbone` with `weight_decay`;
        - `backbone_no_decay`: biases, LayerNorms and the text/position embeddings at `lr_backbone`, no decay.
        Empty groups are left out. Under PEFT call it on the base model (`get_base_model()`)."""
        new = {id(p) for p in self.new_parameters()}
        embeddings = {id(self.transformer.wte.weight), id(self.transformer.wpe.weight)}
        ids, decay, no_decay = [], [], []
        seen: set[int] = set()
        for param in self.parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if id(param) in new:
                ids.append(param)
            elif param.ndim >= 2 and id(param) not in embeddings:
                decay.append(param)
            else:
                no_decay.append(param)
        groups = [
            {"params": ids, "lr": lr_id, "weight_decay": 0.0, "name": "id_embeddings"},
            {"params": decay, "lr": lr_backbone, "weight_decay": weight_decay, "name": "backbone_decay"},
            {"params": no_decay, "lr": lr_backbone, "weight_decay": 0.0, "name": "backbone_no_decay"},
        ]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self, lr_id: float, lr_backbone: float, weight_decay: float,
                             betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
        """AdamW over `optimizer_groups`."""
        groups = self.optimizer_groups(lr_id, lr_backbone, weight_decay)
        if not groups:
            raise ValueError("no trainable parameters (freeze_backbone with every ID embedding frozen?)")
        return torch.optim.AdamW(groups, betas=betas, eps=eps)

    def peft_modules_to_save(self) -> list[str]:
        """Module names to train in full under PEFT LoRA: the ID embeddings, plus graph-bias params and the graph
        residual if any."""
        names = ["content_embeddings", "collab_embeddings"]
        names += [name for name, lever in self.levers() if any(True for _ in lever.parameters())]
        for module in ("graph_bias", "edge_bias"):
            if any(f".{module}." in n for n, _ in self.transformer.named_parameters()):
                names.append(module)
        return names

    def _check_input_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
        total = self.config.base_vocab_size + self.config.num_users + self.config.num_items
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= total):
            bad = ((input_ids < 0) | (input_ids >= total)).nonzero()[0].tolist()
            raise ValueError(
                f"input_ids[{bad[0]}, {bad[1]}] = {int(input_ids[bad[0], bad[1]])} is out of range: valid ids are "
                f"0..{total - 1} (text < {self.config.base_vocab_size}, then {self.config.num_users} users, "
                f"then {self.config.num_items} items)"
            )

    def id_tables(self, embedding_set: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (U, d) user and (I, d) item tables that the set's ID tokens and item head read: the set's own
        weights, smoothed over the train graph for "collab" when `id_propagation_layers` > 0."""
        ids = self.id_embeddings(embedding_set)
        if self.id_propagation is None or embedding_set != "collab":
            return ids.user.weight, ids.item.weight
        return self.id_propagation(ids.user.weight, ids.item.weight)

    def embed_tokens(self, input_ids: torch.Tensor, embedding_set: str,
                     tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, L) token ids -> (B, L, d): text from `wte`, users/items from the chosen ID-embedding set's tables
        (`tables`, as `id_tables` returns them, when the caller already has them)."""
        base, num_users = self.config.base_vocab_size, self.config.num_users
        user_table, item_table = self.id_tables(embedding_set) if tables is None else tables
        is_user = (input_ids >= base) & (input_ids < base + num_users)
        is_item = input_ids >= base + num_users
        embeds = self.transformer.wte(torch.where(input_ids < base, input_ids, 0))
        if bool(is_user.any()):
            users = F.embedding(torch.where(is_user, input_ids - base, 0), user_table)
            p = self.config.user_token_dropout
            if p >= 1.0 or (p > 0.0 and self.training):
                # the multinomial target rewards a user row that memorises the user's train items, which held-out
                # items do not reward: a dropped token reads the "any user" vector (the table's mean)
                dropped = torch.rand(is_user.shape, device=input_ids.device) < p if p < 1.0 else is_user
                users = torch.where(dropped.unsqueeze(-1), user_table.mean(0), users)
            embeds = torch.where(is_user.unsqueeze(-1), users, embeds)
        if bool(is_item.any()):
            items = F.embedding(torch.where(is_item, input_ids - base - num_users, 0), item_table)
            embeds = torch.where(is_item.unsqueeze(-1), items, embeds)
        return embeds

    def mutual_regularizer(self, input_ids, attention_mask, active: str) -> torch.Tensor:
        """sum over ID-token occurrences ||e_active - stopgrad(e_other)||^2 / B (unweighted)."""
        base, num_users = self.config.base_vocab_size, self.config.num_users
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        mine = self.id_embeddings(active)
        other = self.id_embeddings("collab" if active == "content" else "content")
        users = input_ids[keep & (input_ids >= base) & (input_ids < base + num_users)] - base
        items = input_ids[keep & (input_ids >= base + num_users)] - base - num_users
        reg = (mine.user(users) - other.user(users).detach()).pow(2).sum()
        reg = reg + (mine.item(items) - other.item(items).detach()).pow(2).sum()
        return reg / input_ids.shape[0]

    @staticmethod
    def last_token_index(attention_mask: torch.Tensor | None, batch: int, seq_len: int, device) -> torch.Tensor:
        """Index of the last non-pad token per row; inputs must be right-padded."""
        if attention_mask is None:
            return torch.full((batch,), seq_len - 1, dtype=torch.long, device=device)
        mask = attention_mask.long()
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("attention_mask has a row with no tokens")
        if bool((mask.cumprod(dim=1).sum(dim=1) != lengths).any()):
            raise ValueError("inputs must be right-padded: attention_mask must be 1...1 0...0 in every row")
        return lengths - 1

    # ---- forward --------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        hop_distances: torch.Tensor | None = None,
        task: str = "rec",
        labels: torch.LongTensor | None = None,
        target_items: torch.Tensor | None = None,
        embedding_set: str | None = None,
        reg_weight: float | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> GraphGPT2RecOutput:
        """Run one of the three tasks.

        Args:
            input_ids: (B, L) right-padded token ids (text, user and item tokens; docs/DESIGN.md section 1).
            attention_mask: (B, L) 1 for real tokens, 0 for padding.
            hop_distances: (B, L, L) integer hop tensor (-1 for non-ID pairs), or None for no graph bias.
            task: "content" (text LM), "collab" (item LM) or "rec" (multinomial over all items).
            labels: (B, L) token ids to predict for "content" (text ids) / "collab" (item token ids); -100 =
                ignore. The model shifts them (position t predicts labels[t+1]).
            target_items: (B, num_items) multi-hot targets for "rec".
            embedding_set: "content" / "collab"; default "content" for task "content", else "collab".
            reg_weight: weight of the mutual regulariser; default `config.mutual_reg_weight`. Added to the loss
                only when the task loss is computed.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        embedding_set = embedding_set or ("content" if task == "content" else "collab")
        self.id_embeddings(embedding_set)  # validates the name
        self._check_input_ids(input_ids)
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(input_ids.shape)}"
            )
        tables = self.id_tables(embedding_set)
        edge_buckets = None if self.edge_tables is None else self.edge_tables(input_ids, attention_mask)
        outputs = self.transformer(
            inputs_embeds=self.embed_tokens(input_ids, embedding_set, tables),
            attention_mask=attention_mask,
            hop_distances=hop_distances,
            edge_buckets=edge_buckets,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            use_cache=False,
            **kwargs,
        )
        item_weight = tables[1]
        if task == "content":
            result = self.content_head(outputs.last_hidden_state, input_ids, labels)
        elif task == "collab":
            result = self.collab_head(outputs.last_hidden_state, input_ids, item_weight, labels)
        else:
            result = self.rec_head(outputs.last_hidden_state, attention_mask, item_weight, target_items, input_ids)
        result.hidden_states, result.attentions = outputs.hidden_states, outputs.attentions
        if result.loss is not None:
            weight = self.config.mutual_reg_weight if reg_weight is None else float(reg_weight)
            if weight > 0:
                result.reg_loss = weight * self.mutual_regularizer(input_ids, attention_mask, embedding_set)
                result.loss = result.loss + result.reg_loss
        return result

    # ---- task heads -----------------------------------------------------------------------------------------
    def content_head(self, hidden, input_ids, labels=None) -> GraphGPT2RecOutput:
        """Text LM: logits over the text vocabulary (`lm_head`, tied to `wte`); CE against the shifted labels."""
        result = GraphGPT2RecOutput()
        result.logits = self.lm_head(hidden)
        if labels is not None:
            targets = self._shifted_labels(labels, input_ids, 0, self.config.base_vocab_size, "text")
            result.lm_loss = result.loss = self._shifted_cross_entropy(result.logits, targets)
        return result

    def collab_head(self, hidden, input_ids, item_weight, labels=None) -> GraphGPT2RecOutput:
        """Item LM: logits over all items (the active set's item table); CE against the shifted item labels."""
        result = GraphGPT2RecOutput()
        result.logits = F.linear(hidden, item_weight)
        if labels is not None:
            first_item = self.config.base_vocab_size + self.config.num_users
            targets = self._shifted_labels(labels, input_ids, first_item, self.config.num_items, "item")
            result.item_loss = result.loss = self._shifted_cross_entropy(result.logits, targets)
        return result

    def prompt_items(self, input_ids, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) item index of each token (0 where not an item) and (B, L) "is a real item token"."""
        first_item = self.config.base_vocab_size + self.config.num_users
        is_item = input_ids >= first_item
        if attention_mask is not None:
            is_item = is_item & attention_mask.bool()
        return torch.where(is_item, input_ids - first_item, 0), is_item

    def rec_head(self, hidden, attention_mask, item_weight, target_items=None, input_ids=None) -> GraphGPT2RecOutput:
        """Recommendation: item scores from the last non-pad token (+ the graph residual of the prompt's item
        tokens, when configured); multinomial NLL against multi-hot targets."""
        batch, seq_len = hidden.shape[:2]
        last = self.last_token_index(attention_mask, batch, seq_len, hidden.device)
        result = GraphGPT2RecOutput()
        result.user_states = hidden[torch.arange(batch, device=hidden.device), last]
        result.scores = F.linear(result.user_states, item_weight)
        residuals = self.score_terms()
        if residuals:
            if input_ids is None:
                raise ValueError("the graph residual needs input_ids (the prompt's item tokens)")
            item_index, is_item = self.prompt_items(input_ids, attention_mask)
            result.score_terms = {}
            for name, module in residuals:
                before = result.scores
                # a fixed scale of 0 changes no score: while fine-tuning (amazon_cpu's residuals until the scale
                # sweeps) the term is not computed (a step 1.18x faster on Beauty, 1.57x at 50k items)
                if not (self.training and module.fixed_at_zero()):
                    term = module.standardised(item_index, is_item).to(result.scores.dtype)
                    result.score_terms[name] = term
                    result.scores = result.scores + module.scale * term
                shift = module.shift(before)
                if shift is not None:
                    result.scores = result.scores + shift.to(result.scores.dtype)
        if target_items is not None:
            if tuple(target_items.shape) != (batch, self.config.num_items):
                raise ValueError(
                    f"target_items has shape {tuple(target_items.shape)}, expected (batch, num_items) = "
                    f"{(batch, self.config.num_items)}"
                )
            log_probs = F.log_softmax(result.scores.float(), dim=-1)
            result.rec_loss = result.loss = -(target_items.to(log_probs.dtype) * log_probs).sum(-1).mean()
        return result

    def _shifted_labels(self, labels, input_ids, first: int, count: int, kind: str) -> torch.Tensor:
        """Shift labels left by one and map ids `first..first+count-1` to `0..count-1`; -100 stays -100."""
        if tuple(labels.shape) != tuple(input_ids.shape):
            raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(input_ids.shape)}")
        valid = labels != -100
        wrong = valid & ((labels < first) | (labels >= first + count))
        if bool(wrong.any()):
            b, t = wrong.nonzero()[0].tolist()
            raise ValueError(
                f"labels[{b}, {t}] = {int(labels[b, t])} is not a {kind} token id "
                f"(expected {first}..{first + count - 1} or -100)"
            )
        mapped = torch.where(valid, labels - first, -100)
        # position t predicts labels[t + 1]; the last position predicts nothing
        return F.pad(mapped[:, 1:], (0, 1), value=-100)

    @staticmethod
    def _shifted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean CE of the logits against the already shifted targets; 0 (with grad) if no target is set."""
        flat = logits.reshape(-1, logits.shape[-1]).float()  # shifting the labels avoids copying the logits
        total = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-100, reduction="sum")
        return total / (targets != -100).sum().clamp(min=1)

    # ---- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def recommend(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        hop_distances: torch.Tensor | None = None,
        k: int = 20,
        exclude_items: torch.Tensor | list[list[int]] | None = None,
        new_item_counts: torch.Tensor | None = None,
    ) -> GraphGPT2Recommendations:
        """Top-k items for a batch of right-padded prompts (dropout off), excluding `exclude_items`.

        `exclude_items` is a (B, num_items) bool mask or a list (one per row) of item-index lists.
        `new_item_counts` (n, base_vocab_size), the token counts of new products' texts, ranks them with the catalog
        as items num_items..num_items+n-1, scored by the fitted `cold_item_map` (`new_item_scores`).
        """
        if new_item_counts is not None and (self.cold_item_map is None or not self.cold_item_map.fitted()):
            raise ValueError("new items need a fitted cold_item_map (config.cold_item_map_rank > 0, fitted after fine-tuning)")
        num_items = self.config.num_items + (0 if new_item_counts is None else len(new_item_counts))
        if not 1 <= k <= num_items:
            raise ValueError(f"k must be in [1, num_items = {num_items}], got {k}")
        was_training = self.training
        self.eval()
        try:
            out = self(input_ids, attention_mask=attention_mask, hop_distances=hop_distances, task="rec")
        finally:
            self.train(was_training)
        scores = out.scores.float()
        if new_item_counts is not None:
            item_index, is_item = self.prompt_items(input_ids, attention_mask)
            new_scores = self.cold_item_map.new_item_scores(item_index, is_item, out.user_states,
                                                             new_item_counts.to(out.user_states.device), out.scores)
            scores = torch.cat([scores, new_scores.float()], dim=-1)
        if exclude_items is not None:
            mask = self._exclusion_mask(exclude_items, scores.shape[0], scores.device)
            mask = F.pad(mask, (0, scores.shape[1] - mask.shape[1]), value=False)  # new items are never excluded
            scores = scores.masked_fill(mask, float("-inf"))
        top = torch.topk(scores, k, dim=-1)
        return GraphGPT2Recommendations(items=top.indices, scores=top.values)

    def _exclusion_mask(self, exclude_items, batch: int, device) -> torch.Tensor:
        num_items = self.config.num_items
        if isinstance(exclude_items, torch.Tensor):
            if exclude_items.dtype != torch.bool or tuple(exclude_items.shape) != (batch, num_items):
                raise ValueError(
                    f"exclude_items tensor must be bool of shape {(batch, num_items)}, "
                    f"got {exclude_items.dtype} {tuple(exclude_items.shape)}"
                )
            return exclude_items.to(device)
        if len(exclude_items) != batch:
            raise ValueError(f"exclude_items has {len(exclude_items)} rows, expected {batch}")
        mask = torch.zeros(batch, num_items, dtype=torch.bool)
        for row, items in enumerate(exclude_items):
            items = [int(i) for i in items]
            bad = [i for i in items if not 0 <= i < num_items]
            if bad:
                raise ValueError(f"exclude_items[{row}] holds item indices outside [0, {num_items}): {bad[:5]}")
            mask[row, items] = True
        return mask.to(device)

    # ---- loading stock GPT-2 weights --------------------------------------------------------------------------
    @classmethod
    def from_gpt2_checkpoint(cls, path: str | os.PathLike, num_users: int, num_items: int,
                             **config_overrides) -> "GraphGPT2ForRecommendation":
        """Build a model from a local stock GPT-2 folder (`GPT2LMHeadModel`/`GPT2Model.save_pretrained`).

        The folder's config.json gives the architecture (`base_vocab_size` = its `vocab_size`); `config_overrides`
        set the graph fields (or e.g. `attn_implementation`). Every GPT-2 weight must be present with the right
        shape and nothing else may be there (strict check, clear error); the ID embeddings and graph-bias
        parameters start fresh (N(0, initializer_range) / the "paper" values).
        """
        from safetensors.torch import load_file  # a transformers dependency

        path = os.fspath(path)
        config_file = os.path.join(path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"{config_file}: no config.json in the GPT-2 checkpoint folder")
        with open(config_file, encoding="utf-8") as handle:
            gpt2_config = json.load(handle)
        if gpt2_config.get("model_type") != "gpt2":
            raise ValueError(f"{config_file}: model_type is {gpt2_config.get('model_type')!r}, expected 'gpt2'")
        attn_implementation = config_overrides.pop("attn_implementation", None)
        fields = {k: v for k, v in gpt2_config.items()
                  if k not in ("model_type", "architectures", "transformers_version", "auto_map")}
        fields.update(base_vocab_size=gpt2_config.get("vocab_size", 50257), num_users=num_users,
                      num_items=num_items)
        fields.update(config_overrides)
        config = GraphGPT2Config(**fields)
        if attn_implementation is not None:
            config._attn_implementation = attn_implementation

        state = {}
        index_file = os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(index_file):
            with open(index_file, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            for shard in shards:
                state.update(load_file(os.path.join(path, shard)))
        elif os.path.isfile(os.path.join(path, "model.safetensors")):
            state = load_file(os.path.join(path, "model.safetensors"))
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors (or sharded index) in the GPT-2 checkpoint")

        # GPT2LMHeadModel stores "transformer.*"; GPT2Model stores bare names. lm_head is tied to wte.
        backbone_state = {}
        for key, tensor in state.items():
            name = key[len("transformer."):] if key.startswith("transformer.") else key
            if name == "lm_head.weight" or name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # tied head / old causal-mask buffers
            backbone_state[name] = tensor

        model = cls(config)
        expected = {n: p.shape for n, p in model.transformer.state_dict().items() if not is_graph_parameter(n)}
        missing = sorted(set(expected) - set(backbone_state))
        unexpected = sorted(set(backbone_state) - set(expected))
        mismatched = [f"{n}: checkpoint {tuple(backbone_state[n].shape)} vs model {tuple(expected[n])}"
                      for n in sorted(set(expected) & set(backbone_state))
                      if tuple(backbone_state[n].shape) != tuple(expected[n])]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"{path}: GPT-2 checkpoint does not match the GraphGPT2 backbone. "
                f"missing keys: {missing or 'none'}; unexpected keys: {unexpected or 'none'}; "
                f"shape mismatches: {mismatched or 'none'}"
            )
        model.transformer.load_state_dict(backbone_state, strict=False)
        model.tie_weights()
        if config.freeze_backbone:
            model.set_backbone_trainable(False)
        return model


__all__ = [
    "GraphEdgeBias",
    "GraphEdgeTables",
    "GraphHopBias",
    "GraphIDPropagation",
    "GraphGPT2Attention",
    "GraphGPT2ForRecommendation",
    "GraphGPT2Model",
    "GraphGPT2PreTrainedModel",
    "GraphGPT2RecOutput",
    "GraphGPT2Recommendations",
    "GraphIDEmbeddings",
    "GraphItemResidual",
    "SymmetricSparseProduct",
    "graph_bias_values",
    "is_graph_parameter",
    "merge_bias_into_mask",
]
