#!/usr/bin/env python3
"""Trains HF transformers' own GPT2LMHeadModel or LlamaForCausalLM on the embedded arithmetic
corpus's format with mp-train's default hyperparameters, in FP32 on the CPU, and prints the
validation loss every `--eval` steps: the reference for whether a loss plateau is the model's
(the same in PyTorch) or ours.

    python3 scripts/hf_train_arith.py llama --steps 2000 --seed 1
    python3 scripts/hf_train_arith.py gpt2 --steps 1500
    python3 scripts/hf_train_arith.py llama --set rope_theta=10 --set num_key_value_heads=4
    python3 scripts/hf_train_arith.py llama --steps 4000 --weight-decay 0 \
        --set tie_word_embeddings=true --set num_attention_heads=8 \
        --set num_key_value_heads=8 --set initializer_range=0.1   # configs/llama.toml

The data follows mp-train's corpus (2-digit `a+b=c` lines with the answer reversed, 50000
training problems, 10% of the pairs held out, windows of 65 tokens starting at a line) but is
drawn with Python's RNG, so batches differ from mp-train's; the model shapes, initialisation
(HF's `_init_weights`), AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), the warmup +
cosine schedule to 0.1 x lr and clipping at 1 are the same. Needs `pip install torch
transformers`.
"""
import argparse
import math
import random

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


def corpus(seed: int, problems: int, val_fraction: float = 0.1):
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(100) for b in range(100)]
    rng.shuffle(pairs)
    n_val = int(len(pairs) * val_fraction)
    val_pairs, train_pairs = pairs[:n_val], pairs[n_val:]

    def text(ps, count):
        lines = []
        for _ in range(count):
            a, b = rng.choice(ps)
            lines.append(f"{a:02}+{b:02}={str(a + b).zfill(3)[::-1]}\n")
        return torch.tensor(list("".join(lines).encode()), dtype=torch.long)

    return text(train_pairs, problems), text(val_pairs, max(64, int(problems * val_fraction)))


def windows(tokens, starts, t):
    x = torch.stack([tokens[s : s + t + 1] for s in starts])
    return x[:, :-1], x[:, 1:]


def model_for(arch: str, overrides: dict):
    if arch == "llama":
        fields = dict(
            vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
            attention_bias=False, mlp_bias=False,
        )
        fields.update(overrides)
        return LlamaForCausalLM(LlamaConfig(**fields))
    fields = dict(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    fields.update(overrides)
    return GPT2LMHeadModel(GPT2Config(**fields))


def parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v, v)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("arch", choices=["llama", "gpt2"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval", type=int, default=250)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1, help="on matrices only")
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--set", action="append", default=[], help="model config FIELD=VALUE")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    overrides = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.set)}
    model = model_for(args.arch, overrides)
    t, line = 64, 10
    train, val = corpus(args.seed, 50000)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    rest = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": rest, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, args.beta2), eps=1e-8,
    )
    warmup, floor = args.warmup, 0.1

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))

    n_train = (len(train) - t - 1) // line + 1
    n_val = (len(val) - t - 1) // line + 1
    rng = random.Random(args.seed ^ 0x7EA1)
    val_starts = [line * (i * n_val // 64) for i in range(64)]
    vx, vy = windows(val, val_starts, t)
    params = sum(q.numel() for q in model.parameters())
    print(f"{args.arch} {params} parameters, overrides {overrides}", flush=True)
    for step in range(1, args.steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr_at(step - 1)
        x, y = windows(train, [line * rng.randrange(n_train) for _ in range(args.batch)], t)
        loss = model(input_ids=x).logits.flatten(0, 1)
        loss = torch.nn.functional.cross_entropy(loss, y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % args.eval == 0 or step == args.steps:
            with torch.no_grad():
                vl = torch.nn.functional.cross_entropy(
                    model(input_ids=vx).logits.flatten(0, 1), vy.flatten()
                )
            print(f"step {step} train {loss.item():.4f} val {vl.item():.4f}", flush=True)


if __name__ == "__main__":
    main()
