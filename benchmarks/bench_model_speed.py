"""Training-step throughput of GraphGPT2 against stock GPT2LMHeadModel (SDPA), same config, same process.

Each variant runs forward + backward of a text-LM step (`task="content"` for GraphGPT2, labels = next tokens) on
the same batch: B=16, L=128, 4 layers, 256 dims, 4 heads, a 8192-token text vocabulary (the size of a trained
BPE; GPT-2's 50257 would make the LM head dominate and hide the attention cost). About half of the tokens are
user/item tokens for GraphGPT2 (the stock model sees text ids there) with a realistic hop tensor (user-item 1,
item-item 2..7, self 0, text -1). Variants alternate step by step so machine load hits all of them;
the ratio to the stock model is computed per step (neighbouring steps) and reported as median (min-max).

    OMP_NUM_THREADS=1 python benchmarks/bench_model_speed.py            # ~1-2 min on one CPU thread
"""

import argparse
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from modeling_graphgpt2 import GraphGPT2Config, GraphGPT2ForRecommendation  # noqa: E402


def make_batch(batch: int, seq_len: int, base: int, users: int, items: int, max_hops: int, seed: int = 0):
    """Prompt-like rows: user token first, then alternating item tokens and text; hop tensor per DESIGN.md."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, base, (batch, seq_len), generator=g)
    node = torch.full((batch, seq_len), -1)
    for b in range(batch):
        ids[b, 0], node[b, 0] = base + b, b
        for t in range(1, seq_len, 2):
            j = int(torch.randint(0, items, (1,), generator=g))
            ids[b, t], node[b, t] = base + users + j, users + j
    rand = torch.randint(2, max_hops + 2, (batch, seq_len, seq_len), generator=g)
    hop = torch.minimum(rand, rand.transpose(1, 2))
    is_user = (node >= 0) & (node < users)
    is_item = node >= users
    user_item = (is_user.unsqueeze(2) & is_item.unsqueeze(1)) | (is_item.unsqueeze(2) & is_user.unsqueeze(1))
    hop = torch.where(user_item, 1, hop)
    hop = torch.where(node.unsqueeze(2) == node.unsqueeze(1), 0, hop)
    hop = torch.where((node >= 0).unsqueeze(2) & (node >= 0).unsqueeze(1), hop, -1)
    text_ids = torch.where(ids < base, ids, ids % base)  # the stock model sees text where IDs were
    return ids, hop, text_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="steps per round (variants alternate every step)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    common = dict(n_layer=args.layers, n_embd=args.dim, n_head=args.heads, n_positions=args.seq_len,
                  bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
    torch.manual_seed(0)
    stock = GPT2LMHeadModel(GPT2Config(vocab_size=args.vocab, **common))
    variants = {"stock GPT2LMHeadModel": stock}
    for mode in ("none", "paper", "learned"):
        config = GraphGPT2Config(base_vocab_size=args.vocab, num_users=args.users, num_items=args.items,
                                 graph_bias=mode, **common)
        model = GraphGPT2ForRecommendation(config)
        model.transformer.load_state_dict(stock.transformer.state_dict(), strict=False)
        variants[f"GraphGPT2 {mode}"] = model
    for model in variants.values():
        model.train()

    ids, hop, text_ids = make_batch(args.batch, args.seq_len, args.vocab, args.users, args.items, 6)
    print(f"batch {args.batch} x {args.seq_len}, {args.layers} layers, {args.dim} dims, {args.heads} heads, "
          f"vocab {args.vocab}; ID tokens {(ids >= args.vocab).float().mean():.0%}; threads {args.threads}; "
          f"torch {torch.__version__}")

    def step(name: str, model) -> None:
        model.zero_grad(set_to_none=True)
        if name.startswith("stock"):
            loss = model(text_ids, labels=text_ids).loss
        else:
            # text labels only where the next token is text (ID tokens are not text-LM targets)
            labels = torch.where(ids < args.vocab, ids, -100)
            loss = model(ids, hop_distances=hop, task="content", labels=labels, reg_weight=0.0).loss
        loss.backward()

    for name, model in variants.items():  # warm-up
        step(name, model)
    tokens = args.batch * args.seq_len
    # Round-robin at step granularity; wall time and process CPU time per step. With one thread, CPU time is not
    # inflated when other jobs on the machine take the core away, so its ratios are the stable ones.
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for _ in range(args.steps):
            for name, model in variants.items():
                w0, c0 = time.perf_counter(), time.process_time()
                step(name, model)
                wall[name].append(tokens / (time.perf_counter() - w0))
                cpu[name].append(tokens / (time.process_time() - c0))

    for label, rates in (("wall-clock", wall), ("process CPU time", cpu)):
        base_rates = rates["stock GPT2LMHeadModel"]
        print(f"\n{label}: tokens/s per training step (forward + backward), {len(base_rates)} steps per variant")
        print(f"{'variant':<24} {'tokens/s median':>16} {'ratio median':>13} {'ratio min-max':>16}")
        for name, values in rates.items():
            ratios = [v / b for v, b in zip(values, base_rates)]
            print(f"{name:<24} {statistics.median(values):>16.0f} {statistics.median(ratios):>13.3f} "
                  f"{min(ratios):>7.3f}-{max(ratios):.3f}")

if __name__ == "__main__":
    main()
