#!/usr/bin/env python3
"""Loads an mp-train checkpoint folder with HF transformers (AutoModelForCausalLM: GPT-2 or
Llama, from its config.json and model.safetensors) in FP32 and prints the greedy byte-level
continuation of a prompt, to compare with `mp-train sample CHECKPOINT --prompt P --tokens N`
of an fp32 run.

    python3 scripts/hf_greedy.py CHECKPOINT "12+34=" 8

Needs `pip install torch transformers`.
"""
import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} CHECKPOINT PROMPT TOKENS")
    ckpt, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32)
    model.eval()
    ctx = model.config.max_position_embeddings if hasattr(model.config, "max_position_embeddings") else model.config.n_positions
    ids = list(prompt.encode()) or [10]
    out = []
    with torch.no_grad():
        for _ in range(n):
            window = ids[-ctx:]
            logits = model(torch.tensor([window])).logits[0, -1]
            tok = int(torch.argmax(logits))
            ids.append(tok)
            out.append(tok)
    print(bytes(out).decode("latin-1"), end="")


if __name__ == "__main__":
    main()
