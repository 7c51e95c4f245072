"""GraphGPT2 configuration: GPT-2 plus user/item ID tokens and a graph attention bias.

Remote-code file: imports only `transformers` (it is copied next to `config.json` by `save_pretrained`).
"""

from transformers import GPT2Config

GRAPH_BIAS_MODES = ("paper", "exp", "learned", "constant", "none")
GRAPH_RESIDUAL_KINDS = ("none", "ease", "cooc")

# Edge buckets of `graph_edge_bias`: the layout the training code fills (data_builders/item_graph.py) and the model
# reads. Bucket 0 is "not a user/item pair" and never gets a bias.
EDGE_OTHER_USERS_LOW = (0, 1, 2, 3, 5, 9)  # item-item, by other users holding both: buckets 1..6 = 0|1|2|3-4|5-8|9+
EDGE_BUCKET_NO_OTHER_USER = 1
EDGE_BUCKET_SAME_ITEM = 7
EDGE_DEGREE_LOW = (0, 1, 3, 5, 9, 17)  # user-item, by the item's other holders: buckets 8..13 = 0|1-2|3-4|5-8|9-16|17+
EDGE_FIRST_DEGREE_BUCKET = EDGE_BUCKET_SAME_ITEM + 1
NUM_EDGE_BUCKETS = EDGE_FIRST_DEGREE_BUCKET + len(EDGE_DEGREE_LOW)


class GraphGPT2ConfigError(ValueError):
    """An invalid GraphGPT2Config field; `field` names it (so a run config can name its own key)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"GraphGPT2Config.{field} {message}")
        self.field = field


class GraphGPT2Config(GPT2Config):
    r"""
    Configuration of [`GraphGPT2ForRecommendation`]: every [`GPT2Config`] field, plus the fields below.

    Token ids (see docs/DESIGN.md section 1): text tokens are `0 .. base_vocab_size-1`; `user_u` is
    `base_vocab_size + u`; `item_j` is `base_vocab_size + num_users + j`. The text embedding `wte` keeps
    `base_vocab_size` rows (it is never resized); users and items have their own embedding tables. So
    `vocab_size` (= `base_vocab_size`) is smaller than `len(tokenizer)`, which is `num_tokens`
    (`base_vocab_size + num_users + num_items`): compare a tokenizer with `num_tokens`, and never
    `resize_token_embeddings` to its length.

    Args:
        num_users (`int`, defaults to 1):
            Number of users U (> 0). Graph nodes `0..U-1`.
        num_items (`int`, defaults to 1):
            Number of items I (> 0). Graph nodes `U..U+I-1`; also the width of the item head.
        base_vocab_size (`int`, defaults to 50257):
            Size of the text vocabulary (50257 for GPT-2). `vocab_size` is forced to the same value, because
            `wte` and the tied `lm_head` only cover text tokens.
        graph_bias (`str`, defaults to `"paper"`):
            How a capped hop distance h between two ID tokens becomes an additive attention bias:
            - `"paper"`: the authors' released formula `R = (C*[h==1] + max(0, C-h)) / (2C-1)` with
              `C = max_hops`; for C=6: h=1 -> 1, 0 -> 6/11, 2 -> 4/11, 3 -> 3/11, 4 -> 2/11, 5 -> 1/11, >=6 -> 0.
            - `"exp"`: the decreasing reading of the paper's Eq. 4: `bias_delta ** (h-1)` for
              1 <= h <= max_hops, 1 for h=0 (self), 0 beyond.
            - `"learned"`: one learnable scalar per (layer, head, hop bucket 0..max_hops+1), Graphormer-style,
              initialised from the `"paper"` values.
            - `"constant"`: 1 between every pair of ID tokens (the paper's "meaningless injection").
            - `"none"`: no bias (plain GPT-2, the paper's "LLM-NoGKIA"); `hop_distances` is ignored.
            Pairs where either token is not an ID token (h = -1) always get 0.
        max_hops (`int`, defaults to 6):
            Hop cap C (>= 1). Hop tensors hold -1 (not an ID pair), 0..C, and C+1 (farther / unreachable).
        bias_delta (`float`, defaults to 0.5):
            Damping factor of `"exp"`, in (0, 1].
        graph_bias_layers (`list[int]`, *optional*):
            Indices of the layers that receive the bias; `None` means every layer (the authors' code).
        graph_bias_per_head (`bool`, defaults to `False`):
            Give every biased layer a learnable per-head scale (initialised to 1.0) on the fixed bias of
            `"paper"`, `"exp"` or `"constant"`. No effect for `"learned"` (already per head) or `"none"`.
        mutual_reg_weight (`float`, defaults to 1.0):
            lambda of the CLLM4Rec mutual regulariser between the "content" and "collab" ID-embedding sets:
            `lambda * sum over ID-token occurrences ||e_active - stopgrad(e_other)||^2 / batch_size`.
            1.0 is the value of the authors' scripts (`lambda_V = 1`). 0 disables it.
        user_token_dropout (`float`, defaults to 0.0):
            Probability that a user-ID token reads the mean of its set's user table (the "any user" vector)
            instead of its own row, drawn per token while training. At 1.0 every user token reads the mean, in
            training and at inference: the user's identity is left out and the prompt's items carry it. 0 is the
            paper (a user token reads its own row).
        freeze_backbone (`bool`, defaults to `False`):
            `True` trains only the new parameters (ID embeddings, graph-bias parameters), as in CLLM4Rec;
            `False` trains the whole GPT-2 as the paper's code does.
        graph_residual (`str`, defaults to `"none"`):
            Graph residual in the item head: recommendation scores become the model's item logits plus
            `scale * r / std(r)`, `r = x W` standardised over the items per prompt, where `x` is the multi-hot
            of the prompt's item tokens and `W` an item-item matrix
            fitted on the TRAIN graph only and stored with the weights (buffers `graph_residual.indices` /
            `graph_residual.values`, the top `graph_residual_topn` entries of each row):
            - `"none"`: no residual (the model has no `graph_residual` weights).
            - `"ease"`: EASE's closed form with L2 weight `graph_residual_lambda` (zero diagonal).
            - `"cooc"`: co-occurrence counts, each row normalised to sum 1 (zero diagonal).
            The matrix is filled by the training code (`train/common.py:build_model`); the model only applies it.
        graph_residual_topn (`int`, defaults to 200):
            Entries kept per item row of the residual matrix (>= 1; capped at `num_items`).
        graph_residual_lambda (`float`, defaults to 500.0):
            L2 weight of the `"ease"` residual (> 0); recorded for `"cooc"` but unused.
        graph_residual_exact_max_items (`int`, defaults to 20000):
            Size rule of the `"ease"` residual: up to this many items it is EASE's exact closed form (a dense
            float64 item x item inverse: 8 I^2 bytes, twice at its peak, so 6.4 GB at 20k items); above it, the
            neighbourhood EASE of `graph_residual_neighbours` (memory O(I K), time O(I K^3)). 0 always uses the
            neighbourhood form.
        graph_residual_neighbours (`int`, defaults to 256):
            K of the neighbourhood EASE: each item's column of W is EASE's ridge regression restricted to its K most
            co-held items (`data_builders/item_graph.py:ease_neighbourhood`; exactly EASE when K covers all items).
        graph_residual_scale_init (`float`, defaults to 0.0):
            Initial value of the learned scalar `scale` (in units of the residual's per-prompt standard
            deviation; trained with the ID embeddings' learning rate).
        graph_residual_learn_scale (`bool`, defaults to `True`):
            `False` keeps `scale` fixed at `graph_residual_scale_init` (chosen on validation): the multinomial
            likelihood prefers a much smaller scale than the ranking does, so a learned scale under-uses W.
        graph_lowpass_rank (`int`, defaults to 0):
            k >= 0. With k > 0 the item head gets a second residual, GF-CF's ideal low-pass filter (Shen et al.,
            CIKM 2021): `scale * r / std(r)`, `r = (x D^-1/2 V_k) (V_k^T D^1/2)`, where `x` is the multi-hot of the
            prompt's item tokens, `D` the item degrees and `V_k` the top-k right singular vectors of
            `D_U^-1/2 X D_I^-1/2` of the TRAIN graph. It is separate from `graph_residual` (each has its own
            scale), so either can be used alone. Stored with the weights (buffers `graph_lowpass.basis` (I, k) and
            `graph_lowpass.sqrt_degree` (I), filled by the training code). 0: no low-pass term.
        graph_lowpass_scale_init (`float`, defaults to 0.0):
            The low-pass term's fixed scale (not trained; the training code chooses it on validation after
            fine-tuning, `finetune.lowpass_scale_grid`).
        id_propagation_layers (`int`, defaults to 0):
            K >= 0. With K > 0 the "collab" ID tables are smoothed over the normalised TRAIN graph before use, as
            LightGCN does: `[users; items] -> mean_{l=0..K} A^l [users; items]`, `A = D^-1/2 Adj D^-1/2` of the
            bipartite user-item graph. The smoothed tables feed the ID tokens and the tied item head. A is stored
            with the weights (buffers `id_propagation.crow_indices` / `col_indices` / `values`, filled by the
            training code). 0: the tables are used as they are (the paper).
        graph_train_edges (`int`, defaults to 0):
            Number of user-item pairs in the train graph: sizes the stored adjacency of `id_propagation_layers`
            (`2 * graph_train_edges` entries). Set by the training code from the dataset when
            `id_propagation_layers > 0` (left at 0, the smoothing has no edges to follow).
        graph_edge_bias (`bool`, defaults to `False`):
            Add an edge-feature bias to the attention of every layer (Graphormer's edge encoding), on top of
            `graph_bias`: one learned scalar per (layer, head, edge bucket), initialised to 0. Buckets: item-item
            pairs by the number of *other* train users holding both items (0, 1, 2, 3-4, 5-8, 9+), the same item,
            and user-item pairs by the item's other train holders (0, 1-2, 3-4, 5-8, 9-16, 17+); other pairs
            get no bias. The tables are stored with the weights (buffers `edge_bias_table.*`, filled by the
            training code from the TRAIN graph).
        graph_edge_topn (`int`, defaults to 200):
            Co-held items kept per item for `graph_edge_bias` (>= 1; capped at `num_items`); a pair outside an
            item's top list reads the "no other user" bucket.
        cold_item_map_rank (`int`, defaults to 0):
            k >= 0. With k > 0 the model keeps a map from an item's text to a collab item row, for items without
            a train interaction (new products): token counts of the item's text -> TF-IDF (sublinear tf, stored
            idf, unit rows) -> rank-k text vector (stored basis, the TF-IDF's right singular vectors) -> row
            (stored ridge weight and bias, fitted on the trained rows of the items that have interactions). Buffers
            `cold_item_map.idf` (base_vocab_size), `.basis` (base_vocab_size, k), `.weight` (k, n_embd), `.bias`
            (n_embd), filled by the training code after fine-tuning (all zero: not fitted, e.g. no item text).
            The same lever adds a score term to those items only (buffers `.item_text` (num_items, k), the catalog's
            unit text vectors, and `.cold` (num_items), 1 for the held-out cold items): `scale * r / std(r)`, r =
            the text cosine of the item to the mean of the prompt's items. 0: no map; the model cannot score items
            that are not in its table.
        cold_item_text_scale_init (`float`, defaults to 0.0):
            The fixed scale of that text term (not trained; the training code chooses it on the validation cold
            items after fine-tuning, `finetune.cold_item_text_scale_grid`).
        cold_item_neighbours (`int`, defaults to 0):
            K >= 0 (used when `cold_item_map_rank > 0`). With K > 0 an item without interactions also gets the
            scores of the K items with interactions nearest to it by text (cosine of the rank-k text vectors),
            averaged with the cosines as weights: `transfer_weight * sum_j w_j s(u, j)`, s = the rec scores
            before this lever, so the collaborative signal of its text neighbours reaches it. Buffers
            `cold_item_map.neighbours` (num_items, K) and `.neighbour_weights` (num_items, K) (filled for the
            held-out cold items; a new item's are computed when it is scored) and `.transfer_weight` (chosen on
            the validation cold items, `finetune.cold_item_transfer_grid`). 0: no such buffers (the state dict of
            a model without it is unchanged).
        cold_item_neighbour_power (`float`, defaults to 1.0):
            p > 0: the text neighbours' weights are their cosines to the power p (larger p leans on the nearest
            ones). Chosen on the validation cold items with the transfer weight
            (`finetune.cold_item_neighbour_power_grid`) and saved here, so a new item is scored the same way.

    Example:

    ```python
    >>> from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation

    >>> config = GraphGPT2Config(num_users=100, num_items=50, base_vocab_size=1000, n_layer=2, n_embd=64, n_head=4)
    >>> model = GraphGPT2ForRecommendation(config)  # random weights, "paper" graph bias
    >>> config.num_id_tokens
    150
    ```
    """

    model_type = "graphgpt2"

    num_users: int = 1
    num_items: int = 1
    base_vocab_size: int = 50257
    graph_bias: str = "paper"
    max_hops: int = 6
    bias_delta: float = 0.5
    graph_bias_layers: list[int] | None = None
    graph_bias_per_head: bool = False
    mutual_reg_weight: float = 1.0
    user_token_dropout: float = 0.0
    freeze_backbone: bool = False
    graph_residual: str = "none"
    graph_residual_topn: int = 200
    graph_residual_lambda: float = 500.0
    graph_residual_exact_max_items: int = 20000
    graph_residual_neighbours: int = 256
    graph_residual_scale_init: float = 0.0
    graph_residual_learn_scale: bool = True
    graph_lowpass_rank: int = 0
    graph_lowpass_scale_init: float = 0.0
    id_propagation_layers: int = 0
    graph_train_edges: int = 0
    graph_edge_bias: bool = False
    graph_edge_topn: int = 200
    cold_item_map_rank: int = 0
    cold_item_text_scale_init: float = 0.0
    cold_item_neighbours: int = 0
    cold_item_neighbour_power: float = 1.0

    def __post_init__(self, **kwargs):
        # `wte` / `lm_head` cover only text tokens; keep GPT-2's `vocab_size` in step with it.
        self.vocab_size = self.base_vocab_size
        super().__post_init__(**kwargs)
        self._validate_graph_fields()

    @property
    def num_tokens(self) -> int:
        """Token ids the model reads: the text vocabulary plus one ID token per user and item (`len(tokenizer)`)."""
        return self.base_vocab_size + self.num_users + self.num_items

    def _validate_graph_fields(self) -> None:
        def _int(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GraphGPT2ConfigError(name, f"must be an integer >= {low}, got {value!r}")

        for name in ("num_users", "num_items", "base_vocab_size", "max_hops", "n_layer", "n_head", "n_embd",
                     "n_positions"):
            _int(name, 1)
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
                raise GraphGPT2ConfigError(name, f"must be a probability in [0, 1), got {value!r}")
        if self.graph_bias not in GRAPH_BIAS_MODES:
            raise GraphGPT2ConfigError("graph_bias", f"must be one of {GRAPH_BIAS_MODES}, got {self.graph_bias!r}")
        if not isinstance(self.bias_delta, (int, float)) or not 0.0 < float(self.bias_delta) <= 1.0:
            raise GraphGPT2ConfigError("bias_delta", f"must be in (0, 1], got {self.bias_delta!r}")
        if self.graph_bias_layers is not None:
            layers = list(self.graph_bias_layers)
            bad = [i for i in layers if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_layer]
            if bad or len(set(layers)) != len(layers):
                raise GraphGPT2ConfigError(
                    "graph_bias_layers",
                    f"must be distinct layer indices in [0, {self.n_layer}), got {self.graph_bias_layers!r}",
                )
            self.graph_bias_layers = sorted(layers)
        if not isinstance(self.mutual_reg_weight, (int, float)) or self.mutual_reg_weight < 0:
            raise GraphGPT2ConfigError("mutual_reg_weight", f"must be >= 0, got {self.mutual_reg_weight!r}")
        value = self.user_token_dropout
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise GraphGPT2ConfigError("user_token_dropout", f"must be a probability in [0, 1], got {value!r}")
        if self.graph_residual not in GRAPH_RESIDUAL_KINDS:
            raise GraphGPT2ConfigError("graph_residual",
                                       f"must be one of {GRAPH_RESIDUAL_KINDS}, got {self.graph_residual!r}")
        _int("graph_residual_topn", 1)
        _int("graph_residual_exact_max_items", 0)
        _int("graph_residual_neighbours", 1)
        if not isinstance(self.graph_residual_learn_scale, bool):
            raise GraphGPT2ConfigError("graph_residual_learn_scale", f"must be true/false, got {self.graph_residual_learn_scale!r}")
        _int("graph_lowpass_rank", 0)
        for name, low in (("graph_residual_lambda", 0.0), ("graph_residual_scale_init", None),
                          ("graph_lowpass_scale_init", None), ("cold_item_text_scale_init", None),
                          ("cold_item_neighbour_power", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value \
                    or abs(value) == float("inf") or (low is not None and value <= low):
                raise GraphGPT2ConfigError(name, f"must be a finite number{'' if low is None else f' > {low}'}, "
                                                 f"got {value!r}")
        _int("id_propagation_layers", 0)
        _int("graph_train_edges", 0)
        _int("graph_edge_topn", 1)
        _int("cold_item_map_rank", 0)
        _int("cold_item_neighbours", 0)
        if not isinstance(self.graph_edge_bias, bool):
            raise GraphGPT2ConfigError("graph_edge_bias", f"must be true/false, got {self.graph_edge_bias!r}")
        if self.n_embd % self.n_head != 0:
            raise GraphGPT2ConfigError("n_embd", f"({self.n_embd}) must be divisible by n_head ({self.n_head})")

    @property
    def num_id_tokens(self) -> int:
        """Number of user + item tokens after the text vocabulary."""
        return self.num_users + self.num_items

    def biased_layer(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` receives the graph bias."""
        if self.graph_bias == "none":
            return False
        return self.graph_bias_layers is None or layer_idx in self.graph_bias_layers


__all__ = ["GraphGPT2Config", "GraphGPT2ConfigError", "GRAPH_BIAS_MODES", "GRAPH_RESIDUAL_KINDS", "EDGE_BUCKET_NO_OTHER_USER",
           "EDGE_BUCKET_SAME_ITEM", "EDGE_DEGREE_LOW", "EDGE_FIRST_DEGREE_BUCKET", "EDGE_OTHER_USERS_LOW", "NUM_EDGE_BUCKETS"]
