#!/usr/bin/env python3
"""Loads an mp-train checkpoint folder with HF transformers alone (AutoModelForCausalLM: GPT-2
or Llama, from its config.json and model.safetensors; AutoTokenizer from its tokenizer.json when
the run used a BPE tokenizer, else bytes) in FP32 and prints the greedy continuation of a prompt,
to compare with `mp-train sample CHECKPOINT --prompt P --tokens N` of an fp32 run.

    python3 scripts/hf_greedy.py CHECKPOINT "12+34=" 8

Needs `pip install torch transformers`.
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} CHECKPOINT PROMPT TOKENS")
    ckpt, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    model.eval()
    cfg = model.config
    ctx = getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
    if os.path.exists(os.path.join(ckpt, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(ckpt)
        ids = tok.encode(prompt) if prompt else [tok.eos_token_id]
        decode = lambda out: tok.decode(out)
    else:
        ids = list(prompt.encode()) or [10]
        decode = lambda out: bytes(out).decode("utf-8", errors="replace")
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids[-ctx:]])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
            ids.append(out[-1])
    print(decode(out), end="")


if __name__ == "__main__":
    main()
