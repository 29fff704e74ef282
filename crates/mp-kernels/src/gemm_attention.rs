//! Causal self-attention as batched matrix products, written once over the backend's
//! GEMM, row and layout families.
//!
//! These are the default [`AttentionOps::attention`](crate::AttentionOps::attention) and [`AttentionOps::attention_backward`](crate::AttentionOps::attention_backward), which the
//! device backends (CUDA, wgpu) keep, so their attention runs on their
//! GEMMs (cuBLASLt's tensor cores, the tiled WGSL kernel) rather than on hand-written
//! attention kernels, the way PyTorch's eager "math" path and llm.c's cuBLAS path do it
//! (on lavapipe it made the wgpu attention of the `gpt-cpu` shape 1.46x faster than the WGSL
//! kernel it replaced; `cargo bench -p mp-kernels --features wgpu --bench wgpu -- attention`):
//!
//! | step | op | dtype |
//! | --- | --- | --- |
//! | q, k, v to head-major `(b·heads) x t x hs` | [`LayoutOps::split_heads`] | compute dtype |
//! | `S = Q Kᵀ / sqrt(hs)` | one batched [`GemmOps::gemm`] | FP32 out |
//! | `P = softmax(S)` causal, saved | [`RowOps::softmax`] | FP32 inside, `probs` dtype out |
//! | `Y = P V`, back to token-major | batched GEMM, [`LayoutOps::merge_heads`] | `out` dtype |
//!
//! The backward recomputes nothing: `dV = Pᵀ dY`, `dP = dY Vᵀ` (FP32),
//! `dS = P ∘ (dP - rowsum(P ∘ dP))` ([`RowOps::softmax_backward`], rounded to the compute
//! dtype for the next products), `dQ = dS K / sqrt(hs)`, `dK = dSᵀ Q / sqrt(hs)`, each added into
//! its third of `dqkv` by [`LayoutOps::merge_heads`] with one rounding.
//!
//! The compute dtype is the dtype of `qkv` (FP32 for FP8 storage). Every product accumulates in
//! FP32; its inputs are the stored low-precision values, as under PyTorch's autocast. Against
//! the CPU backend's fused per-head kernel, which keeps `dS` in FP32, the only extra rounding is
//! that of `dS` to the compute dtype before `dQ` and `dK`. Scratch: the FP32 scores (`b·heads·t²`
//! elements), and in the backward the FP32 `dP` and the compute-dtype `dS` of the same size.

use crate::backend::{
    Attention, BufferExt, Gemm, GemmOps, Heads, LayoutOps, RowOps, View, ViewMut, contract,
};
use crate::{DType, Result};

/// The families the composition runs on.
pub trait AttentionKernels: GemmOps + RowOps + LayoutOps {}
impl<T: GemmOps + RowOps + LayoutOps + ?Sized> AttentionKernels for T {}

/// The dtype the products take their inputs in: the storage dtype of `qkv` where GEMMs take
/// it directly, FP32 otherwise.
fn compute_dtype(dt: DType) -> DType {
    match dt {
        DType::F32 | DType::F16 | DType::BF16 => dt,
        _ => DType::F32,
    }
}

/// `qkv`'s three parts in head-major order, in dtype `w`.
fn split_qkv<B: AttentionKernels + ?Sized>(
    be: &B,
    qkv: View<'_, B::Buffer>,
    s: &Attention,
    w: DType,
) -> Result<[B::Buffer; 3]> {
    let part = |p: usize| -> Result<B::Buffer> {
        let layout = Heads::qkv(s, p);
        let mut dst = be.uninit(w, layout.head_major_len())?;
        be.split_heads(qkv, &layout, dst.view_mut())?;
        Ok(dst)
    };
    Ok([part(0)?, part(1)?, part(2)?])
}

/// `probs` as a buffer of dtype `w` for the products: borrowed when it already is, else a copy.
fn probs_in<'a, B: AttentionKernels + ?Sized>(
    be: &B,
    probs: View<'a, B::Buffer>,
    w: DType,
    copy: &'a mut Option<B::Buffer>,
) -> Result<View<'a, B::Buffer>> {
    if probs.dtype() == w {
        return Ok(probs);
    }
    let mut c = be.uninit(w, probs.len)?;
    be.cast(probs, c.view_mut(), crate::Rounding::NearestEven)?;
    Ok(copy.insert(c).view())
}

/// A batch of `batch` products of `t`-row matrices, stored contiguously.
fn batched(batch: usize, m: usize, n: usize, k: usize) -> Gemm {
    Gemm {
        batch,
        ..Gemm::new(m, n, k)
    }
}

/// [`AttentionOps::attention`](crate::AttentionOps::attention) through batched GEMMs (see the module docs).
pub fn forward<B: AttentionKernels + ?Sized>(
    be: &B,
    qkv: View<'_, B::Buffer>,
    s: &Attention,
    out: ViewMut<'_, B::Buffer>,
    mut probs: ViewMut<'_, B::Buffer>,
) -> Result<()> {
    let (bh, t) = (s.b * s.heads, s.t);
    let hs = contract::attention_forward(be, &qkv, s, &out, &probs)?;
    if s.b * t == 0 || s.c == 0 {
        return Ok(());
    }
    let w = compute_dtype(qkv.dtype());
    let [q, k, v] = split_qkv(be, qkv, s, w)?;
    let mut scores = be.uninit(DType::F32, bh * t * t)?;
    let qk = Gemm {
        trans_b: true,
        alpha: 1.0 / (hs as f32).sqrt(),
        ..batched(bh, t, t, hs)
    };
    be.gemm(q.view(), k.view(), scores.view_mut(), &qk)?;
    drop((q, k));
    be.softmax(scores.view(), t, true, false, probs.reborrow())?;
    drop(scores);
    let mut copy = None;
    let p = probs_in(be, probs.as_view(), w, &mut copy)?;
    let ydt = compute_dtype(out.dtype());
    let mut y = be.uninit(ydt, bh * t * hs)?;
    be.gemm(p, v.view(), y.view_mut(), &batched(bh, t, hs, t))?;
    be.merge_heads(y.view(), &Heads::out(s), out, false)
}

/// [`AttentionOps::attention_backward`](crate::AttentionOps::attention_backward) through batched GEMMs (see the module docs):
/// `dqkv += ..` from `dout`, `qkv` and the saved `probs`.
pub fn backward<B: AttentionKernels + ?Sized>(
    be: &B,
    dout: View<'_, B::Buffer>,
    qkv: View<'_, B::Buffer>,
    probs: View<'_, B::Buffer>,
    s: &Attention,
    mut dqkv: ViewMut<'_, B::Buffer>,
) -> Result<()> {
    let (bh, t) = (s.b * s.heads, s.t);
    let hs = contract::attention_backward(be, &dout, &qkv, &probs, s, &dqkv)?;
    if s.b * t == 0 || s.c == 0 {
        return Ok(());
    }
    let w = compute_dtype(qkv.dtype());
    let scale = 1.0 / (hs as f32).sqrt();
    let [q, k, v] = split_qkv(be, qkv, s, w)?;
    let mut dy = be.uninit(w, bh * t * hs)?;
    be.split_heads(dout, &Heads::out(s), dy.view_mut())?;
    let mut copy = None;
    let p = probs_in(be, probs, w, &mut copy)?;
    // one FP32 head-major gradient at a time, added into its third of dqkv
    let mut grad = be.uninit(DType::F32, bh * t * hs)?;
    let mut add_part = |grad: &B::Buffer, part: usize| {
        be.merge_heads(grad.view(), &Heads::qkv(s, part), dqkv.reborrow(), true)
    };
    // dV = P^T dY
    let pv = Gemm {
        trans_a: true,
        ..batched(bh, t, hs, t)
    };
    be.gemm(p, dy.view(), grad.view_mut(), &pv)?;
    add_part(&grad, 2)?;
    // dP = dY V^T, then dS = P (dP - rowsum(P dP)) in the compute dtype
    let mut dp = be.uninit(DType::F32, bh * t * t)?;
    let dyv = Gemm {
        trans_b: true,
        ..batched(bh, t, t, hs)
    };
    be.gemm(dy.view(), v.view(), dp.view_mut(), &dyv)?;
    drop((dy, v));
    let mut ds = be.zeros(w, bh * t * t)?;
    be.softmax_backward(p, dp.view(), t, false, ds.view_mut())?;
    drop((dp, copy));
    // dQ = dS K * scale, dK = dS^T Q * scale
    let dq = Gemm {
        alpha: scale,
        ..batched(bh, t, hs, t)
    };
    be.gemm(ds.view(), k.view(), grad.view_mut(), &dq)?;
    add_part(&grad, 0)?;
    let dk = Gemm {
        trans_a: true,
        ..dq
    };
    be.gemm(ds.view(), q.view(), grad.view_mut(), &dk)?;
    add_part(&grad, 1)
}
