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
//! | `P = softmax(S)` causal | [`RowOps::softmax`] | FP32 inside, compute dtype out |
//! | `lse = S[:, 0] - log_softmax(S)[:, 0]` | [`RowOps::softmax`], two column gathers, [`PointwiseOps::binary`] | FP32 |
//! | `Y = P V`, back to token-major | batched GEMM, [`LayoutOps::merge_heads`] | `out` dtype |
//!
//! Nothing of the `t x t` matrices is kept: the backward recomputes `S` and `P` exactly as the
//! forward did (the same kernels on the same inputs), then `dV = Pᵀ dY`, `dP = dY Vᵀ` (FP32),
//! `dS = P ∘ (dP - rowsum(P ∘ dP))` ([`RowOps::softmax_backward`], rounded to the compute
//! dtype for the next products), `dQ = dS K / sqrt(hs)`, `dK = dSᵀ Q / sqrt(hs)`, each added into
//! its part of `dqkv` by [`LayoutOps::merge_heads`] with one rounding.
//!
//! Multi-head attention runs every head in one batch of products; grouped-query attention runs
//! one batch per query head (over the batch entries), against its key/value head.
//!
//! The compute dtype is the dtype of `qkv` (FP32 for FP8 storage). Every product accumulates in
//! FP32; its inputs are the stored low-precision values, as under PyTorch's autocast. Scratch
//! while the op runs: the FP32 scores and the probabilities (`b·heads·t²` elements each), and in
//! the backward the FP32 `dP` and the compute-dtype `dS` of the same size.

use crate::backend::{
    Attention, BinaryOp, BufferExt, Gemm, GemmOps, Heads, LayoutOps, PointwiseOps, RowOps, View,
    ViewMut, contract,
};
use crate::{DType, Result};

/// The families the composition runs on.
pub trait AttentionKernels: GemmOps + RowOps + LayoutOps + PointwiseOps {}
impl<T: GemmOps + RowOps + LayoutOps + PointwiseOps + ?Sized> AttentionKernels for T {}

/// The dtype the products take their inputs in: the storage dtype of `qkv` where GEMMs take
/// it directly, FP32 otherwise.
fn compute_dtype(dt: DType) -> DType {
    match dt {
        DType::F32 | DType::F16 | DType::BF16 => dt,
        _ => DType::F32,
    }
}

/// One batch of products of the composition: where its q, k, v, output and log-sum-exp rows
/// live, and how many `t x hs` matrices each side holds.
struct Group {
    q: Heads,
    k: Heads,
    v: Heads,
    out: Heads,
    /// `None`: the batch's lse is the whole `b x heads x t` buffer, in order.
    lse: Option<Heads>,
    batch: usize,
}

/// The batches of products an attention of shape `s` runs as.
fn groups(s: &Attention) -> Vec<Group> {
    if s.kv_heads == s.heads {
        return vec![Group {
            q: Heads::qkv(s, 0),
            k: Heads::qkv(s, 1),
            v: Heads::qkv(s, 2),
            out: Heads::out(s),
            lse: None,
            batch: s.b * s.heads,
        }];
    }
    let g = s.group();
    (0..s.heads)
        .map(|h| Group {
            q: Heads::qkv_head(s, 0, h),
            k: Heads::qkv_head(s, 1, h / g),
            v: Heads::qkv_head(s, 2, h / g),
            out: Heads::out_head(s, h),
            lse: Some(Heads::lse_head(s, h)),
            batch: s.b,
        })
        .collect()
}

/// One part of token-major rows gathered to head-major order in dtype `w`.
fn split<B: AttentionKernels + ?Sized>(
    be: &B,
    src: View<'_, B::Buffer>,
    layout: &Heads,
    w: DType,
) -> Result<B::Buffer> {
    let mut dst = be.uninit(w, layout.head_major_len())?;
    be.split_heads(src, layout, dst.view_mut())?;
    Ok(dst)
}

/// A batch of `batch` products of `t`-row matrices, stored contiguously.
fn batched(batch: usize, m: usize, n: usize, k: usize) -> Gemm {
    Gemm {
        batch,
        ..Gemm::new(m, n, k)
    }
}

/// The group's q, k, v (head-major, dtype `w`), FP32 scores `S = Q Kᵀ / sqrt(hs)` and causal
/// probabilities `P` (dtype `w`): the same kernels on the same inputs in the forward and in
/// the backward, so the backward differentiates exactly what the forward computed.
#[allow(clippy::type_complexity)]
fn scores<B: AttentionKernels + ?Sized>(
    be: &B,
    qkv: View<'_, B::Buffer>,
    g: &Group,
    t: usize,
    hs: usize,
    w: DType,
) -> Result<([B::Buffer; 3], B::Buffer, B::Buffer)> {
    let (q, k, v) = (
        split(be, qkv, &g.q, w)?,
        split(be, qkv, &g.k, w)?,
        split(be, qkv, &g.v, w)?,
    );
    let mut s = be.uninit(DType::F32, g.batch * t * t)?;
    let qk = Gemm {
        trans_b: true,
        alpha: 1.0 / (hs as f32).sqrt(),
        ..batched(g.batch, t, t, hs)
    };
    be.gemm(q.view(), k.view(), s.view_mut(), &qk)?;
    let mut p = be.uninit(w, g.batch * t * t)?;
    be.softmax(s.view(), t, true, false, p.view_mut())?;
    Ok(([q, k, v], s, p))
}

/// [`AttentionOps::attention`](crate::AttentionOps::attention) through batched GEMMs (see the module docs).
pub fn forward<B: AttentionKernels + ?Sized>(
    be: &B,
    qkv: View<'_, B::Buffer>,
    s: &Attention,
    mut out: ViewMut<'_, B::Buffer>,
    mut lse: ViewMut<'_, B::Buffer>,
) -> Result<()> {
    let t = s.t;
    let hs = contract::attention_forward(be, &qkv, s, &out, &lse)?;
    if s.b * t == 0 || s.c == 0 {
        return Ok(());
    }
    let w = compute_dtype(qkv.dtype());
    let ydt = compute_dtype(out.dtype());
    for g in groups(s) {
        let ([_, _, v], scores, p) = scores(be, qkv, &g, t, hs, w)?;
        // lse = S - log_softmax(S), read at column 0 (visible in every causal row)
        let rows = g.batch * t;
        let mut logp = be.uninit(DType::F32, rows * t)?;
        be.softmax(scores.view(), t, true, true, logp.view_mut())?;
        let col0 = Heads::block(rows, t, 0, 1);
        let (s0, l0) = (
            split(be, scores.view(), &col0, DType::F32)?,
            split(be, logp.view(), &col0, DType::F32)?,
        );
        drop((scores, logp));
        match &g.lse {
            None => be.binary(BinaryOp::Sub, s0.view(), l0.view(), lse.reborrow())?,
            Some(layout) => {
                let mut part = be.uninit(DType::F32, rows)?;
                be.binary(BinaryOp::Sub, s0.view(), l0.view(), part.view_mut())?;
                be.merge_heads(part.view(), layout, lse.reborrow(), false)?;
            }
        }
        let mut y = be.uninit(ydt, g.batch * t * hs)?;
        be.gemm(
            p.view(),
            v.view(),
            y.view_mut(),
            &batched(g.batch, t, hs, t),
        )?;
        be.merge_heads(y.view(), &g.out, out.reborrow(), false)?;
    }
    Ok(())
}

/// [`AttentionOps::attention_backward`](crate::AttentionOps::attention_backward) through batched GEMMs (see the module docs):
/// `dqkv += ..` from `dout` and `qkv` (the probabilities are recomputed; `out` and `lse` are
/// only checked).
#[allow(clippy::too_many_arguments)]
pub fn backward<B: AttentionKernels + ?Sized>(
    be: &B,
    dout: View<'_, B::Buffer>,
    qkv: View<'_, B::Buffer>,
    out: View<'_, B::Buffer>,
    lse: View<'_, B::Buffer>,
    s: &Attention,
    mut dqkv: ViewMut<'_, B::Buffer>,
) -> Result<()> {
    let t = s.t;
    let hs = contract::attention_backward(be, &dout, &qkv, &out, &lse, s, &dqkv)?;
    if s.b * t == 0 || s.c == 0 {
        return Ok(());
    }
    let w = compute_dtype(qkv.dtype());
    let scale = 1.0 / (hs as f32).sqrt();
    for g in groups(s) {
        let ([q, k, v], scores, p) = scores(be, qkv, &g, t, hs, w)?;
        drop(scores);
        let dy = split(be, dout, &g.out, w)?;
        // one FP32 head-major gradient at a time, added into its part of dqkv
        let mut grad = be.uninit(DType::F32, g.batch * t * hs)?;
        let mut add_part = |grad: &B::Buffer, layout: &Heads| {
            be.merge_heads(grad.view(), layout, dqkv.reborrow(), true)
        };
        // dV = P^T dY
        let pv = Gemm {
            trans_a: true,
            ..batched(g.batch, t, hs, t)
        };
        be.gemm(p.view(), dy.view(), grad.view_mut(), &pv)?;
        add_part(&grad, &g.v)?;
        // dP = dY V^T, then dS = P (dP - rowsum(P dP)) in the compute dtype
        let mut dp = be.uninit(DType::F32, g.batch * t * t)?;
        let dyv = Gemm {
            trans_b: true,
            ..batched(g.batch, t, t, hs)
        };
        be.gemm(dy.view(), v.view(), dp.view_mut(), &dyv)?;
        drop((dy, v));
        let mut ds = be.zeros(w, g.batch * t * t)?;
        be.softmax_backward(p.view(), dp.view(), t, false, ds.view_mut())?;
        drop((dp, p));
        // dQ = dS K * scale, dK = dS^T Q * scale
        let dq = Gemm {
            alpha: scale,
            ..batched(g.batch, t, hs, t)
        };
        be.gemm(ds.view(), k.view(), grad.view_mut(), &dq)?;
        add_part(&grad, &g.q)?;
        let dk = Gemm {
            trans_a: true,
            ..dq
        };
        be.gemm(ds.view(), q.view(), grad.view_mut(), &dk)?;
        add_part(&grad, &g.k)?;
    }
    Ok(())
}
