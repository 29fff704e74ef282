#!/usr/bin/env python3
"""Reads a finished BPE run of mp-train with the Python tools people use (CI runs it):

- TensorBoard: `tbparse` reads the run folder's event files, and every step of
  `metrics.jsonl` (every tag) and every evaluation of `eval.jsonl` is there, with the same loss;
- HF: `AutoTokenizer.from_pretrained(checkpoint)` loads the tokenizer the checkpoint carries,
  and it encodes every document exactly as `mp-train tokenize` wrote it into the shards
  (each document preceded by the end-of-text token).

    python3 scripts/check_text_run.py RUN_DIR SHARD_DIR DOCUMENT...

Needs `pip install tbparse tensorboard transformers` (no torch).
"""
import glob
import json
import os
import struct
import sys

from tbparse import SummaryReader
from transformers import AutoTokenizer


def shard_tokens(path):
    with open(path, "rb") as f:
        data = f.read()
    magic, version, count = struct.unpack("<3i", data[:12])
    assert magic == 20240520, f"{path}: magic {magic}"
    width = {1: "H", 2: "I"}[version]
    tokens = list(struct.unpack(f"<{count}{width}", data[1024:]))
    return tokens


def check_tensorboard(run):
    scalars = SummaryReader(run).scalars
    steps = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    evals = [json.loads(l) for l in open(os.path.join(run, "eval.jsonl"))]
    for tag in ["train/loss", "train/learning_rate", "train/loss_scale", "train/grad_norm",
                "train/tokens_per_s", "train/skipped_steps"]:
        got = sorted(scalars[scalars.tag == tag].step.tolist())
        want = [r["step"] for r in steps]
        assert got == want, f"{tag}: event steps {got} != metrics.jsonl steps {want}"
    loss = dict(zip(*[scalars[scalars.tag == "train/loss"][c].tolist() for c in ("step", "value")]))
    for r in steps:
        assert abs(loss[r["step"]] - r["loss"]) <= 1e-6 * abs(r["loss"]), (r, loss[r["step"]])
    got = sorted(scalars[scalars.tag == "eval/loss"].step.tolist())
    assert got == [e["step"] for e in evals], f"eval/loss steps {got}"
    print(f"tbparse: {len(steps)} logged steps and {len(evals)} evaluations, every tag")


def check_tokenizer(run, shards, documents):
    ckpt = sorted(glob.glob(os.path.join(run, "checkpoint-*")),
                  key=lambda p: int(p.rsplit("-", 1)[1]))[-1]
    tok = AutoTokenizer.from_pretrained(ckpt)
    files = sorted(glob.glob(os.path.join(shards, "*_val_*.bin"))) + \
        sorted(glob.glob(os.path.join(shards, "*_train_*.bin")))
    written = [t for f in files for t in shard_tokens(f)]
    want = []
    for d in documents:
        want.append(tok.eos_token_id)
        want.extend(tok.encode(open(d, encoding="utf-8").read(), add_special_tokens=False))
    assert written == want, "the shards differ from AutoTokenizer's encoding"
    print(f"AutoTokenizer.from_pretrained({ckpt}): {type(tok).__name__}, vocabulary {len(tok)}, "
          f"{len(want)} tokens of {len(documents)} documents as the shards hold them")


def main():
    if len(sys.argv) < 4:
        sys.exit(f"usage: {sys.argv[0]} RUN_DIR SHARD_DIR DOCUMENT...")
    run, shards, documents = sys.argv[1], sys.argv[2], sys.argv[3:]
    check_tensorboard(run)
    check_tokenizer(run, shards, documents)


if __name__ == "__main__":
    main()
