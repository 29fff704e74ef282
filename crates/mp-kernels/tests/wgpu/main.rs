//! The wgpu backend against the CPU oracle: every op x dtype on random data (never zeros),
//! outputs poisoned with NaN before each run, tolerance `abs + |ref| * k * eps(dtype)`;
//! casts, fills and stochastic rounding bit for bit.
//!
//! Built only with `--features wgpu`; run with `WGPU_BACKEND=vulkan` on Mesa's lavapipe (CI)
//! or any GPU. Without an adapter every test prints a loud `SKIPPED` line and returns, unless
//! `MP_REQUIRE_WGPU=1`, which turns a missing adapter into a failure. Every test path names
//! `wgpu` (the modules are `wgpu_*`).
//!
//! The op-by-op comparisons are the conformance suite in `tests/conformance/`, shared with the
//! CUDA target, so both GPU backends are held to the same checks; `gemm.rs` and the tests below
//! are the checks only wgpu needs (many kernel tiles, binding-size limits).

mod common;
#[path = "../conformance/cast.rs"]
mod wgpu_cast;
#[path = "../conformance/dense.rs"]
mod wgpu_dense;
#[path = "../conformance/fused.rs"]
mod wgpu_fused;
#[path = "gemm.rs"]
mod wgpu_gemm;
#[path = "../conformance/ops.rs"]
mod wgpu_ops;
#[path = "../conformance/rows.rs"]
mod wgpu_rows;

use mp_kernels::prelude::*;
use mp_kernels::testing::{random_normal, random_vec};
use mp_kernels::wgpu::{WgpuBackend, WgpuOptions};
use mp_kernels::{AdamW, DType, Rounding};

#[test]
fn wgpu_backend_reports_its_adapter_or_a_typed_error() {
    match WgpuBackend::new() {
        Ok(be) => {
            let name = be.name();
            assert!(name.starts_with("wgpu:"), "{name}");
            eprintln!(
                "wgpu adapter: {name}, largest binding {} bytes",
                be.max_binding_bytes()
            );
        }
        Err(e) => {
            assert!(
                matches!(e, mp_kernels::KernelError::NoDevice { .. }),
                "expected NoDevice, got {e}"
            );
            common::skip_or_fail(
                "wgpu_backend_reports_its_adapter_or_a_typed_error",
                &e.to_string(),
            );
        }
    }
}

/// A software adapter (lavapipe here) is refused with an error naming it and the way to allow
/// it, and accepted when allowed; a hardware adapter is accepted either way.
#[test]
fn wgpu_a_software_adapter_needs_to_be_allowed() {
    let allowed = WgpuBackend::with_options(WgpuOptions {
        allow_software: true,
        ..WgpuOptions::default()
    });
    let Ok(be) = allowed else {
        common::skip_or_fail("wgpu_a_software_adapter_needs_to_be_allowed", "no adapter");
        return;
    };
    let software = be.name().contains("llvmpipe");
    let refused = WgpuBackend::with_options(WgpuOptions {
        allow_software: false,
        ..WgpuOptions::default()
    });
    match refused {
        Err(e) => {
            let msg = e.to_string();
            assert!(software, "a hardware adapter was refused: {msg}");
            assert!(
                msg.contains("software") && msg.contains(mp_kernels::wgpu::ALLOW_SOFTWARE_ENV),
                "{msg}"
            );
        }
        Ok(_) => assert!(
            !software,
            "{} was accepted without being allowed",
            be.name()
        ),
    }
}

/// With the storage bindings capped at 64 KiB, flat ops run in many chunks: casts (with
/// stochastic rounding, whose counter must continue across chunks), pointwise ops, AdamW and
/// the gradient check must still match the CPU; a row op whose view exceeds the cap is a
/// typed error, not a wrong answer.
#[test]
fn wgpu_flat_ops_split_at_the_binding_limit() {
    let be = match WgpuBackend::with_options(WgpuOptions {
        max_binding_bytes: Some(64 << 10),
        ..WgpuOptions::default()
    }) {
        Ok(be) => be,
        Err(e) => {
            common::skip_or_fail("wgpu_flat_ops_split_at_the_binding_limit", &e.to_string());
            return;
        }
    };
    assert_eq!(be.max_binding_bytes(), 64 << 10);
    let c = common::cpu();
    let n = 100_003usize;
    let off = 3usize;
    let x = random_normal(n + off, 2.0, 5);
    // casts with SR across chunks
    for ddt in [DType::BF16, DType::F16, DType::F8E4M3] {
        let r = Rounding::Stochastic { seed: 99 };
        let got = cast_once(&be, &x, ddt, r, off, n);
        let want = cast_once(&c, &x, ddt, r, off, n);
        common::same_bytes(
            &format!("chunked SR cast -> {ddt}"),
            &got,
            &want,
            ddt.size_in_bytes(),
        );
    }
    // axpy on bf16 across chunks
    let y = random_vec(n + off, 6);
    let got = axpy_once(&be, &x, &y, off, n);
    let want = axpy_once(&c, &x, &y, off, n);
    common::close("chunked axpy bf16", &got, &want, DType::BF16, 1e-3, 2.0);
    // AdamW with a bf16 model copy, stochastic rounding
    let hp = AdamW {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        step: 1,
        grad_mult: 0.5,
        rounding: Rounding::Stochastic { seed: 7 },
    };
    let (pg, mg) = adam_once(&be, &x, &y, &hp, off, n);
    let (pc, mc) = adam_once(&c, &x, &y, &hp, off, n);
    common::close("chunked adamw params", &pg, &pc, DType::F32, 1e-6, 8.0);
    common::close("chunked adamw model", &mg, &mc, DType::BF16, 1e-6, 1.0);
    // the gradient check across chunks
    let gb = common::up(&be, &x, DType::F32);
    let gc = common::up(&c, &x, DType::F32);
    let sg = be.grad_stats(gb.slice(off, n), 0.5).expect("grad_stats");
    let sc = c.grad_stats(gc.slice(off, n), 0.5).expect("grad_stats");
    assert!(!sg.non_finite);
    assert!(
        (sg.sum_sq - sc.sum_sq).abs() <= 1e-5 * sc.sum_sq,
        "{sg:?} vs {sc:?}"
    );
    // a row op over a view larger than the cap: typed error
    let big = common::up(&be, &x, DType::F32);
    let mut out = be.zeros(DType::F32, n + off).expect("zeros");
    let e = be
        .softmax(big.view(), n + off, false, false, out.view_mut())
        .unwrap_err();
    assert!(matches!(e, mp_kernels::KernelError::Shape { .. }), "{e}");
}

fn adam_once<B: Backend>(
    be: &B,
    p0: &[f32],
    g0: &[f32],
    hp: &AdamW,
    off: usize,
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let mut p = common::up(be, p0, DType::F32);
    let g = common::up(be, g0, DType::F32);
    let mut m = be.zeros(DType::F32, p0.len()).expect("m");
    let mut v = be.zeros(DType::F32, p0.len()).expect("v");
    let mut model = common::poisoned(be, DType::BF16, p0.len());
    be.adamw(
        p.slice_mut(off, n),
        g.slice(off, n),
        m.slice_mut(off, n),
        v.slice_mut(off, n),
        Some(model.slice_mut(off, n)),
        hp,
    )
    .expect("adamw");
    (
        common::down(be, &p)[off..].to_vec(),
        common::down(be, &model)[off..].to_vec(),
    )
}

fn cast_once<B: Backend>(
    be: &B,
    x: &[f32],
    ddt: DType,
    r: Rounding,
    off: usize,
    n: usize,
) -> Vec<u8> {
    let s = common::up(be, x, DType::F32);
    let mut d = common::poisoned(be, ddt, n + off);
    be.cast(s.slice(off, n), d.slice_mut(off, n), r)
        .expect("cast");
    be.download_bytes(d.slice(off, n)).expect("download")
}

fn axpy_once<B: Backend>(be: &B, x: &[f32], y: &[f32], off: usize, n: usize) -> Vec<f32> {
    let xb = common::up(be, x, DType::BF16);
    let mut yb = common::up(be, y, DType::BF16);
    be.axpy(0.25, xb.slice(off, n), yb.slice_mut(off, n))
        .expect("axpy");
    common::down(be, &yb)
}

/// Attention whose products span several GEMM tiles in every dimension: a sequence of 300 and
/// a single head of 200.
#[test]
fn wgpu_attention_spans_several_tiles() {
    let Some(g) = common::gpu("wgpu_attention_spans_several_tiles") else {
        return;
    };
    let c = common::cpu();
    for s in [
        mp_kernels::Attention::mha(1, 300, 32, 2),
        mp_kernels::Attention::mha(2, 9, 200, 1),
        mp_kernels::Attention {
            kv_heads: 1,
            ..mp_kernels::Attention::mha(2, 70, 32, 4)
        },
    ] {
        let qkv = random_normal(s.b * s.t * s.qkv_row(), 1.0, 91);
        let dout = random_vec(s.b * s.t * s.c, 92);
        let dq0 = random_vec(qkv.len(), 93);
        let inputs = (&qkv[..], &dout[..], &dq0[..]);
        let want = wgpu_rows::attention_run(&c, DType::F32, &s, inputs);
        let got = wgpu_rows::attention_run(g, DType::F32, &s, inputs);
        let what = format!("{s:?}");
        common::close(
            &format!("{what}: lse"),
            &got.1,
            &want.1,
            DType::F32,
            1e-6,
            64.0,
        );
        common::close(
            &format!("{what}: out"),
            &got.0,
            &want.0,
            DType::F32,
            1e-5,
            64.0,
        );
        common::close(
            &format!("{what}: dqkv"),
            &got.2,
            &want.2,
            DType::F32,
            1e-4,
            64.0,
        );
    }
}
