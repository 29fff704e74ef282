#!/usr/bin/env bash
# Real text, read back by the Python tools people use: GPT-2's tokenizer (OpenAI's encoder.json
# and vocab.bpe, shipped in the tiktoken-rs dev-dependency's assets) tokenizes documents into
# llm.c shards, a short bf16 run trains on them, then `tbparse` reads its TensorBoard events and
# HF's AutoTokenizer loads the tokenizer from the checkpoint alone (scripts/check_text_run.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-text
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check tbparse tensorboard transformers
# filtered to the host: a build downloads only the host's packages, so an offline metadata over
# every platform fails on a fresh machine
HOST=$(rustc -vV | sed -n 's/^host: //p')
ASSETS=$(cargo metadata --format-version 1 --offline --filter-platform "$HOST" | "$VENV/bin/python" -c '
import json, os, sys
pkgs = json.load(sys.stdin)["packages"]
print(os.path.join(os.path.dirname(next(p for p in pkgs if p["name"] == "tiktoken-rs")["manifest_path"]), "assets"))')
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/gpt2"
cp "$ASSETS/encoder.json" "$W/gpt2/vocab.json"
cp "$ASSETS/vocab.bpe" "$W/gpt2/merges.txt"
cargo build -q --release -p mp-train --bin mp-train
BIN=target/release/mp-train
DOCS=(README.md docs/ARCHITECTURE.md docs/benchmarks.md)
"$BIN" tokenize --tokenizer "$W/gpt2" --out "$W/shards" --name docs --plain "${DOCS[@]}"
"$BIN" train --data "$W/shards" --tokenizer "$W/gpt2" --out "$W/run" --plain --max-steps 12 \
  --set model.n_layer=1 --set model.n_embd=32 --set model.n_head=2 --set model.n_positions=32 \
  --set batch_size=4 --set logging_steps=2 --set eval_steps=4 --set save_steps=6 --set threads=2
"$VENV/bin/python" scripts/check_text_run.py "$W/run" "$W/shards" "${DOCS[@]}"
