"""Regenerates the golden vectors of this folder from the reference implementations.

    pip install torch transformers safetensors numpy ml_dtypes   # CPU wheels are enough
    python golden/generate.py OUT_DIR [--only NAME ...]

NAME is one of: scaler, adamw, gpt2, llama, formats, health (default: all). Every file this writes is
described in README.md beside this script; the tests read every expected value (and the model
configs, inputs and hyper-parameters) from the files, so `MP_GOLDEN_DIR=OUT_DIR cargo xtask test`
checks the project against a regenerated set. The checked-in files were made with PyTorch 2.15
(CPU), transformers 5.24 and ml_dtypes 0.5; another version may differ in the last bits of the
float32 results, well inside the tests' bounds.
"""
import argparse
import json
import math
import os

import ml_dtypes
import numpy as np
import torch
from safetensors.torch import save_file

VOCAB = 256  # the byte vocabulary of the trainer's default corpus
POSITIONS = 64
# The AdamW of the models' short training runs, on every parameter as
# `torch.optim.AdamW(model.parameters())` does.
TRAIN_ADAMW = {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1,
               "note": "weight decay on every parameter, as torch.optim.AdamW(model.parameters())"}


class Writer:
    """Writes files into one folder and says what it wrote."""

    def __init__(self, out):
        self.out = out
        os.makedirs(out, exist_ok=True)

    def path(self, name):
        return os.path.join(self.out, name)

    def json(self, name, obj):
        with open(self.path(name), "w") as f:
            json.dump(obj, f)
        print("wrote", name)

    def tensors(self, name, tensors, **metadata):
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, self.path(name),
                  metadata=metadata or None)
        print("wrote", name)


def values(t):
    """A tensor as a flat list of Python floats."""
    return [float(x) for x in t.detach().reshape(-1).tolist()]


# ---- loss scaling: torch.amp.GradScaler("cpu") driving torch.optim.AdamW ------------------------

def scaler_trace(w, name, seed, steps, poisoned, init_scale, growth_interval,
                 growth=2.0, backoff=0.5, lr=1e-2, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8):
    """Per step: the scale used, the scaled fp32 gradients (the steps in `poisoned` get one inf or
    NaN), whether the step was skipped, the parameters after it, the scale and growth tracker
    after `update()`; then the scaler's final `state_dict`."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 2, 2)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    params = [torch.nn.Parameter(p.clone()) for p in init]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_factor=growth,
                                  backoff_factor=backoff, growth_interval=growth_interval)
    record = {"shapes": shapes, "init_params": [values(p) for p in init],
              "config": {"init_scale": init_scale, "growth_factor": growth,
                         "backoff_factor": backoff, "growth_interval": growth_interval},
              "adamw": {"lr": lr, "betas": list(betas), "eps": eps, "weight_decay": weight_decay},
              "steps": []}
    for step in range(steps):
        scaler.scale(torch.ones(()))  # what scaling the loss does: creates the scale lazily
        scale = scaler.get_scale()
        scaled = [(torch.randn(s, generator=gen) * 1e-3 * scale).float() for s in shapes]
        if step in poisoned:
            bad = float("inf") if poisoned[step] == "inf" else float("nan")
            scaled[step % len(shapes)].view(-1)[0] = bad
        for p, g in zip(params, scaled):
            p.grad = g.clone()
        before = [p.detach().clone() for p in params]
        scaler.step(opt)
        scaler.update()
        record["steps"].append({
            "scale_used": scale,
            "scaled_grads": [values(g) for g in scaled],
            "skipped": all(torch.equal(b, p.detach()) for b, p in zip(before, params)),
            "params_after": [values(p) for p in params],
            "scale_after": scaler.get_scale(),
            "growth_tracker_after": int(scaler._growth_tracker.item()),
        })
    record["state_dict"] = {k: (v.item() if torch.is_tensor(v) else v)
                            for k, v in scaler.state_dict().items()}
    w.json(name, record)


def scaler(w):
    scaler_trace(w, "grad_scaler_adamw_trace.json", 1, 12, {2: "inf", 5: "nan", 6: "inf"},
                 2.0 ** 16, 3)
    # growth stops where scale * growth_factor would overflow f32
    scaler_trace(w, "grad_scaler_growth_to_max.json", 2, 8, {}, 2.0 ** 126, 2)


# ---- AdamW in fp32: the master weights' reference ------------------------------------------------

def adamw_trajectory(w, name, seed, steps, **hyper):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(8, 5), (5,), (3, 4)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    init = [values(p) for p in params]
    opt = torch.optim.AdamW(params, **hyper)
    grads, after = [], []
    for _ in range(steps):
        step_grads = [torch.randn(s, generator=gen) * 0.1 for s in shapes]
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
        grads.append([values(g) for g in step_grads])
        after.append([values(p) for p in params])
    w.json(name, {
        "shapes": shapes,
        "hyper": {k: list(v) if isinstance(v, tuple) else v for k, v in hyper.items()},
        "init_params": init, "grads": grads, "params_after": after,
        "exp_avg_after_last": [values(opt.state[p]["exp_avg"]) for p in params],
        "exp_avg_sq_after_last": [values(opt.state[p]["exp_avg_sq"]) for p in params],
    })


def adamw(w):
    adamw_trajectory(w, "adamw_default.json", 3, 20, lr=1e-3)
    adamw_trajectory(w, "adamw_custom.json", 4, 20, lr=5e-2, betas=(0.8, 0.95), eps=1e-6,
                     weight_decay=0.1)


# ---- language models: forward, backward and a short fp32 training run ---------------------------

def batch(seed, b, t):
    """Random token ids [b, t] and their next tokens."""
    tokens = torch.randint(0, VOCAB, (b, t + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def cross_entropy(model, x, y):
    return torch.nn.functional.cross_entropy(model(x).logits.reshape(-1, VOCAB), y.reshape(-1))


def model_golden(w, prefix, model, x, y, steps, short_config, autocast, extra=None):
    """Writes `{prefix}.logits.*`, `{prefix}.grads.safetensors` and `{prefix}.json` (the short
    config, the batch, the fp32 loss and logits checksums, torch's own autocast error for each
    dtype in `autocast`, and `steps` fp32 AdamW losses on the batch). The weights are written
    by the caller (their naming differs per model)."""
    logits = model(x).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
    loss.backward()
    w.tensors(f"{prefix}.grads.safetensors",
              {k: p.grad for k, p in model.named_parameters()})
    np.save(w.path(f"{prefix}.logits.npy"), logits.detach().numpy().astype(np.float32))
    w.tensors(f"{prefix}.logits.safetensors", {"logits": logits})
    record = {"config": short_config, **(extra or {}),
              "input_ids": x.tolist(), "targets": y.tolist(), "loss": loss.item(),
              "logits_first_row": values(logits[0, 0]), "logits_sum": logits.sum().item(),
              "logits_abs_sum": logits.abs().sum().item()}
    for name, dtype in autocast:
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
            low = model(x).logits.float()
        record[f"torch_cpu_{name}_autocast_logits_rel_err"] = \
            ((low - logits).norm() / logits.norm()).item()
    model.zero_grad(set_to_none=True)
    hp = {k: v for k, v in TRAIN_ADAMW.items() if k != "note"}
    opt = torch.optim.AdamW(model.parameters(), **hp)
    losses = []
    for _ in range(steps):
        step_loss = cross_entropy(model, x, y)
        losses.append(step_loss.item())
        step_loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    record["adamw"] = TRAIN_ADAMW
    record["train_losses_fp32"] = losses
    w.json(f"{prefix}.json", record)


def gpt2(w, prefix="gpt2_tiny", seed=0, n_layer=2, n_embd=64, n_head=4, t=16, b=2, steps=8):
    """HF GPT-2 (tied head, `gelu_new`), Conv1D weights `[in, out]` as HF stores them."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_positions=POSITIONS, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_new", layer_norm_epsilon=1e-5,
                        tie_word_embeddings=True)
    model = GPT2LMHeadModel(config).float().eval()
    x, y = batch(seed + 1, b, t)
    # HF's own file drops the causal-mask buffers and the tied head
    weights = {k: v for k, v in model.state_dict().items()
               if not k.endswith((".attn.bias", "masked_bias")) and k != "lm_head.weight"}
    w.tensors(f"{prefix}.safetensors", weights, format="pt")
    short = {"vocab_size": VOCAB, "n_positions": POSITIONS, "n_embd": n_embd, "n_layer": n_layer,
             "n_head": n_head, "activation": "gelu_new (tanh approximation)",
             "layer_norm_epsilon": 1e-5, "tied_lm_head": True}
    model_golden(w, prefix, model, x, y, steps, short, [("bf16", torch.bfloat16)])


def llama(w, prefix="llama_tiny", seed=3, n_layer=2, hidden=64, n_head=4, n_kv=2, inter=176,
          t=16, b=2, steps=8, rope_theta=10000.0, tie=False):
    """HF `LlamaForCausalLM`: RMSNorm, RoPE (default type), SwiGLU, grouped-query attention."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=n_layer, num_attention_heads=n_head,
                         num_key_value_heads=n_kv, max_position_embeddings=POSITIONS,
                         rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                         tie_word_embeddings=tie, attention_bias=False, mlp_bias=False,
                         hidden_act="silu", initializer_range=0.1)
    model = LlamaForCausalLM(config).float().eval()
    x, y = batch(seed + 1, b, t)
    weights = {k: v for k, v in model.state_dict().items() if not (tie and k == "lm_head.weight")}
    w.tensors(f"{prefix}.safetensors", weights, format="pt")
    model.config.save_pretrained(w.out)
    os.replace(w.path("config.json"), w.path(f"{prefix}.config.json"))
    print("wrote", f"{prefix}.config.json")
    short = {"vocab_size": VOCAB, "max_position_embeddings": POSITIONS, "hidden_size": hidden,
             "intermediate_size": inter, "num_hidden_layers": n_layer,
             "num_attention_heads": n_head, "num_key_value_heads": n_kv,
             "head_dim": hidden // n_head, "rms_norm_eps": 1e-5, "rope_theta": rope_theta,
             "hidden_act": "silu", "tie_word_embeddings": tie}
    model_golden(w, prefix, model, x, y, steps, short,
                 [("bf16", torch.bfloat16), ("fp16", torch.float16)],
                 extra={"hf_config_file": f"{prefix}.config.json"})


# ---- number formats: ml_dtypes / numpy casts ------------------------------------------------------

def special(v):
    """A float as JSON allows: NaN and the infinities as strings."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def formats(w):
    doc = {}
    fp8 = (("f8e4m3fn", ml_dtypes.float8_e4m3fn), ("f8e5m2", ml_dtypes.float8_e5m2))
    for name, dtype in fp8:
        every = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
        info = ml_dtypes.finfo(dtype)
        doc[name] = {"to_f32": [special(v) for v in every], "max": float(info.max),
                     "min_normal": float(info.smallest_normal),
                     "min_subnormal": float(info.smallest_subnormal), "eps": float(info.eps)}
    rng = np.random.default_rng(7)
    spread = rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 2000)
    edges = np.array([0.0, -0.0, 1.0, -1.0, 448.0, 449.0, 464.0, 57344.0, 61440.0, 1e-9,
                      2.0 ** -9, 2.0 ** -10, 2.0 ** -16, 2.0 ** -17], np.float32)
    inputs = np.concatenate([spread, edges]).astype(np.float32)
    doc["f32_inputs"] = [float(v) for v in inputs]
    for name, dtype in fp8 + (("bf16", ml_dtypes.bfloat16), ("f16", np.float16)):
        as_int = np.uint8 if name.startswith("f8") else np.uint16
        doc.setdefault(name, {})["from_f32_rne_bits"] = \
            [int(b) for b in inputs.astype(dtype).view(as_int)]
    doc["note"] = ("from_f32_rne_bits: round-to-nearest-even as ml_dtypes/numpy cast "
                   "(out-of-range: f8e4m3fn -> NaN 0x7f/0xff, f8e5m2/bf16/f16 -> inf)")
    w.json("float_formats.json", doc)


# ---- precision health: what a format loses, counted by ml_dtypes casts ---------------------------

HEALTH_FORMATS = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16,
                  "e4m3": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2}


def loss_counts(x, scale, dtype):
    """Finite non-zero x whose x * scale (in float32) casts to zero, to a subnormal, or beyond
    the format's largest finite value (inf, or NaN for e4m3fn)."""
    y = (x * np.float32(scale)).astype(np.float32)
    c = y.astype(dtype).astype(np.float32)
    finite = np.isfinite(x)
    tiny = float(ml_dtypes.finfo(dtype).smallest_normal)
    return {"underflow": int(np.sum(finite & (x != 0) & (c == 0))),
            "subnormal": int(np.sum(finite & (c != 0) & np.isfinite(c) & (np.abs(c) < tiny))),
            "overflow": int(np.sum(finite & ~np.isfinite(c)))}


def health(w):
    rng = np.random.default_rng(11)
    tensors = []
    for spread in (2, 6, 12):  # decades of magnitude around a centre
        x = (rng.standard_normal(3000) * 10.0 ** rng.uniform(-spread, spread / 3, 3000))
        x = x.astype(np.float32)
        x[:6] = [0.0, -0.0, np.nan, np.inf, 65520.0, 2.0 ** -25]  # specials and RNE boundaries
        amax = float(np.max(np.abs(x[np.isfinite(x)])))
        scales = [{"scale": s, "counts": {n: loss_counts(x, s, d) for n, d in HEALTH_FORMATS.items()}}
                  for s in (1.0, 1024.0, 2.0 ** -8)]
        amax_scaled = {}
        for n in ("e4m3", "e5m2"):
            d = HEALTH_FORMATS[n]
            s = np.float32(ml_dtypes.finfo(d).max) / np.float32(amax)
            amax_scaled[n] = loss_counts(x, s, d)
        tensors.append({"values": [special(v) for v in x], "scales": scales,
                        "amax_scaled": amax_scaled})
    before = (rng.standard_normal(4000) * 10.0 ** rng.uniform(-3, 1, 4000)).astype(np.float32)
    step = (rng.standard_normal(4000) * 10.0 ** rng.uniform(-6, -1, 4000)).astype(np.float32)
    step[::7] = 0.0
    after = (before + step).astype(np.float32)
    delta = (after - before).astype(np.float32)
    lost = {}
    for n in ("bf16", "fp16"):
        d = HEALTH_FORMATS[n]
        w16 = before.astype(d).astype(np.float32)
        moved = (w16 + delta).astype(np.float32).astype(d).astype(np.float32)
        lost[n] = int(np.sum((delta != 0) & (moved == w16)))
    w.json("precision_health.json", {
        "note": "counts of finite non-zero values of x*scale (float32) that ml_dtypes casts to zero, "
                "a subnormal, or a non-finite value; lost: non-zero updates after-before that "
                "leave round16(round16(before) + update) unchanged",
        "tensors": tensors,
        "lost_update": {"before": [float(v) for v in before], "after": [float(v) for v in after],
                        "updated": int(np.sum(delta != 0)), "lost": lost}})


FAMILIES = {"scaler": scaler, "adamw": adamw, "gpt2": gpt2, "llama": llama, "formats": formats,
            "health": health}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder to write into (created if missing)")
    parser.add_argument("--only", nargs="+", choices=sorted(FAMILIES), help="families to write")
    args = parser.parse_args()
    torch.set_num_threads(2)
    w = Writer(args.out)
    for name in args.only or FAMILIES:
        FAMILIES[name](w)


if __name__ == "__main__":
    main()
