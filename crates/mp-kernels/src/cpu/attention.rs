//! Causal multi-head self-attention forward and backward (the "math" path: scores,
//! softmax, weighted values), f32 inside, one (batch, head) pair per task.
//!
//! Each head's products (`Q K^T`, `P V` and the four of the backward) are single-threaded
//! packed GEMMs (the `gemm` crate), the heads of one batch entry run in parallel, and the
//! softmax is the row kernel of `norm`. The forward stores the probabilities rounded to the
//! `probs` dtype and uses those stored values for `P V`, so the backward differentiates
//! exactly the function computed.

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{narrow, widen, with_f32_mut};
use super::gemm::matmul;
use super::norm::softmax_row;
use super::reduce::dot;
use crate::Result;
use crate::backend::contract;
use crate::backend::*;
use crate::backend::{Attention, Heads, View, ViewMut};
use mp_dtype::DType;
use rayon::prelude::*;

/// The sizes `(t, c, heads, head size)` (validated by the contract).
fn sizes(s: &Attention) -> (usize, usize, usize, usize) {
    (s.t, s.c, s.heads, s.c / s.heads)
}

/// Gathers head `h`'s slice of part `part` (0 = q, 1 = k, 2 = v) of one batch entry of qkv
/// (`t x 3c` elements of `dt`) into `dst` (`t x hs` f32).
#[allow(clippy::too_many_arguments)]
fn gather(src: &[u8], dt: DType, t: usize, row: usize, col: usize, hs: usize, dst: &mut Vec<f32>) {
    let s = dt.size_in_bytes();
    dst.resize(t * hs, 0.0);
    for (i, d) in dst.chunks_exact_mut(hs).enumerate() {
        let at = (i * row + col) * s;
        widen(dt, &src[at..at + hs * s], d);
    }
}

/// One (batch, head) pair of the forward: `q`, `k`, `v` are `t x hs`; writes the causal
/// softmax probabilities (rounded to `dp`) into `probs` (`t x t` elements of `dp`) and `P V`
/// into `o`. `s` and `p` are `t x t` scratch.
#[allow(clippy::too_many_arguments)]
fn head_forward(
    (q, k, v): (&[f32], &[f32], &[f32]),
    t: usize,
    hs: usize,
    scale: f32,
    dp: DType,
    probs: &mut [u8],
    o: &mut [f32],
    (s, p): (&mut Vec<f32>, &mut Vec<f32>),
) {
    let sp = dp.size_in_bytes();
    s.resize(t * t, 0.0);
    p.resize(t * t, 0.0);
    // S = scale Q K^T (the masked upper triangle is computed and ignored: the packed GEMM
    // is faster than a triangular loop at these sizes).
    matmul((t, t, hs), q, false, k, true, s, scale, 0.0);
    for (i, (srow, prow)) in s.chunks_exact(t).zip(p.chunks_exact_mut(t)).enumerate() {
        softmax_row(srow, i + 1, false, prow);
        let stored = &mut probs[i * t * sp..(i + 1) * t * sp];
        narrow(dp, prow, stored);
        if dp != DType::F32 {
            // Use the stored (rounded) probabilities, as the backward will.
            widen(dp, stored, prow);
        }
    }
    matmul((t, hs, t), p, false, v, false, o, 1.0, 0.0);
}

/// One (batch, head) pair of the backward from the saved probabilities (`t x t` of `tp`) and
/// the upstream gradient `go` (`t x hs`): writes `(dq, dk, dv)`, each `t x hs`. `p` and `ds`
/// are `t x t` scratch.
#[allow(clippy::too_many_arguments)]
fn head_backward(
    (q, k, v, go): (&[f32], &[f32], &[f32], &[f32]),
    t: usize,
    hs: usize,
    scale: f32,
    tp: DType,
    probs: &[u8],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    (p, ds): (&mut Vec<f32>, &mut Vec<f32>),
) {
    p.resize(t * t, 0.0);
    ds.resize(t * t, 0.0);
    widen(tp, probs, p);
    // dV = P^T dO; dP = dO V^T.
    matmul((t, hs, t), p, true, go, false, dv, 1.0, 0.0);
    matmul((t, t, hs), go, false, v, true, ds, 1.0, 0.0);
    // dS = P * (dP - rowsum(P * dP)) * scale; masked entries have P = 0.
    for (i, (prow, drow)) in p.chunks_exact(t).zip(ds.chunks_exact_mut(t)).enumerate() {
        let vis = i + 1;
        let dot: f32 = dot(&prow[..vis], &drow[..vis]);
        for (d, &pj) in drow[..vis].iter_mut().zip(&prow[..vis]) {
            *d = scale * pj * (*d - dot);
        }
        drow[vis..].fill(0.0);
    }
    // dQ = dS K; dK = dS^T Q.
    matmul((t, hs, t), ds, false, k, false, dq, 1.0, 0.0);
    matmul((t, hs, t), ds, true, q, false, dk, 1.0, 0.0);
}

/// Causal attention forward.
pub(crate) fn attention(
    qkv: View<'_, CpuBuffer>,
    shape: &Attention,
    out: ViewMut<'_, CpuBuffer>,
    probs: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "attention";
    let (t, c, heads, hs) = sizes(shape);
    let bt = shape.b * t;
    if bt == 0 || c == 0 {
        return Ok(());
    }
    let (dq, dout, dp) = (qkv.dtype(), out.dtype(), probs.dtype());
    let (sq, so, sp) = (dq.size_in_bytes(), dout.size_in_bytes(), dp.size_in_bytes());
    let qkv = bytes(OP, "qkv", qkv)?;
    let out = bytes_mut(OP, "out", out)?;
    let probs = bytes_mut(OP, "probs", probs)?;
    let scale = 1.0 / (hs as f32).sqrt();

    out.par_chunks_mut(t * c * so)
        .zip(probs.par_chunks_mut(heads * t * t * sp))
        .zip(qkv.par_chunks(t * 3 * c * sq))
        .for_each(|((out_b, probs_b), qkv_b)| {
            let heads_out: Vec<Vec<f32>> = probs_b
                .par_chunks_mut(t * t * sp)
                .enumerate()
                .map(|(h, probs_bh)| {
                    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
                    gather(qkv_b, dq, t, 3 * c, h * hs, hs, &mut q);
                    gather(qkv_b, dq, t, 3 * c, c + h * hs, hs, &mut k);
                    gather(qkv_b, dq, t, 3 * c, 2 * c + h * hs, hs, &mut v);
                    let mut o = vec![0.0f32; t * hs];
                    let (mut sc, mut p) = (Vec::new(), Vec::new());
                    let qkv3 = (&q[..], &k[..], &v[..]);
                    head_forward(qkv3, t, hs, scale, dp, probs_bh, &mut o, (&mut sc, &mut p));
                    o
                })
                .collect();
            let mut row = vec![0.0f32; c];
            for (i, orow) in out_b.chunks_exact_mut(c * so).enumerate() {
                for (h, ho) in heads_out.iter().enumerate() {
                    row[h * hs..(h + 1) * hs].copy_from_slice(&ho[i * hs..(i + 1) * hs]);
                }
                narrow(dout, &row, orow);
            }
        });
    Ok(())
}

/// Causal attention backward: `dqkv += ..`.
pub(crate) fn attention_backward(
    dout: View<'_, CpuBuffer>,
    qkv: View<'_, CpuBuffer>,
    probs: View<'_, CpuBuffer>,
    shape: &Attention,
    dqkv: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "attention_backward";
    let (t, c, heads, hs) = sizes(shape);
    let bt = shape.b * t;
    if bt == 0 || c == 0 {
        return Ok(());
    }
    let (tdo, tq, tp, tdq) = (dout.dtype(), qkv.dtype(), probs.dtype(), dqkv.dtype());
    let (sdo, sq, sp, sdq) = (
        tdo.size_in_bytes(),
        tq.size_in_bytes(),
        tp.size_in_bytes(),
        tdq.size_in_bytes(),
    );
    let dout = bytes(OP, "dout", dout)?;
    let qkv = bytes(OP, "qkv", qkv)?;
    let probs = bytes(OP, "probs", probs)?;
    let dqkv = bytes_mut(OP, "dqkv", dqkv)?;
    let scale = 1.0 / (hs as f32).sqrt();

    dqkv.par_chunks_mut(t * 3 * c * sdq)
        .zip(dout.par_chunks(t * c * sdo))
        .zip(qkv.par_chunks(t * 3 * c * sq))
        .zip(probs.par_chunks(heads * t * t * sp))
        .for_each(|(((dqkv_b, dout_b), qkv_b), probs_b)| {
            let grads: Vec<[Vec<f32>; 3]> = probs_b
                .par_chunks(t * t * sp)
                .enumerate()
                .map(|(h, probs_bh)| {
                    let (mut q, mut k, mut v, mut go) =
                        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                    gather(qkv_b, tq, t, 3 * c, h * hs, hs, &mut q);
                    gather(qkv_b, tq, t, 3 * c, c + h * hs, hs, &mut k);
                    gather(qkv_b, tq, t, 3 * c, 2 * c + h * hs, hs, &mut v);
                    gather(dout_b, tdo, t, c, h * hs, hs, &mut go);
                    let mut dq = vec![0.0f32; t * hs];
                    let mut dk = vec![0.0f32; t * hs];
                    let mut dv = vec![0.0f32; t * hs];
                    let grads = (&mut dq[..], &mut dk[..], &mut dv[..]);
                    let (mut p, mut ds) = (Vec::new(), Vec::new());
                    let ins = (&q[..], &k[..], &v[..], &go[..]);
                    head_backward(ins, t, hs, scale, tp, probs_bh, grads, (&mut p, &mut ds));
                    [dq, dk, dv]
                })
                .collect();
            let mut tmp = Vec::new();
            for (i, drow) in dqkv_b.chunks_exact_mut(3 * c * sdq).enumerate() {
                with_f32_mut(tdq, drow, &mut tmp, true, |row| {
                    for (h, g) in grads.iter().enumerate() {
                        for (part, gp) in g.iter().enumerate() {
                            let dst = &mut row[part * c + h * hs..part * c + (h + 1) * hs];
                            for (d, &s) in dst.iter_mut().zip(&gp[i * hs..(i + 1) * hs]) {
                                *d += s;
                            }
                        }
                    }
                });
            }
        });
    Ok(())
}

/// [`LayoutOps::split_heads`](crate::LayoutOps::split_heads): one head row (`hs` elements) per
/// task, widened and rounded to `dst`'s dtype (copied when the dtypes agree).
pub(crate) fn split_heads(
    src: View<'_, CpuBuffer>,
    l: &Heads,
    dst: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "split_heads";
    let (ds, dd) = (src.dtype(), dst.dtype());
    let (ss, sd) = (ds.size_in_bytes(), dd.size_in_bytes());
    let src = bytes(OP, "src", src)?;
    let dst = bytes_mut(OP, "dst", dst)?;
    if l.hs == 0 {
        return Ok(());
    }
    dst.par_chunks_mut(l.hs * sd)
        .enumerate()
        .for_each_init(Vec::new, |tmp, (r, d)| {
            let (i, nh) = (r % l.t, r / l.t);
            let (h, n) = (nh % l.heads, nh / l.heads);
            let at = ((n * l.t + i) * l.row + l.col + h * l.hs) * ss;
            let s = &src[at..at + l.hs * ss];
            if ds == dd {
                d.copy_from_slice(s);
            } else {
                tmp.resize(l.hs, 0.0);
                widen(ds, s, tmp);
                narrow(dd, tmp, d);
            }
        });
    Ok(())
}

/// [`LayoutOps::merge_heads`](crate::LayoutOps::merge_heads): one token row per task, each head's
/// slice written (or added in f32 and rounded once) in place.
pub(crate) fn merge_heads(
    src: View<'_, CpuBuffer>,
    l: &Heads,
    dst: ViewMut<'_, CpuBuffer>,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "merge_heads";
    let (ds, dd) = (src.dtype(), dst.dtype());
    let (ss, sd) = (ds.size_in_bytes(), dd.size_in_bytes());
    let src = bytes(OP, "src", src)?;
    let dst = bytes_mut(OP, "dst", dst)?;
    if l.row == 0 || l.hs == 0 {
        return Ok(());
    }
    let width = l.heads * l.hs;
    dst.par_chunks_mut(l.row * sd).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(a, b), (r, row)| {
            let (i, n) = (r % l.t, r / l.t);
            let part = &mut row[l.col * sd..(l.col + width) * sd];
            a.resize(width, 0.0);
            b.resize(l.hs, 0.0);
            if accumulate {
                widen(dd, part, a);
            }
            for (h, a) in a.chunks_exact_mut(l.hs).enumerate() {
                let at = ((n * l.heads + h) * l.t + i) * l.hs * ss;
                let s = &src[at..at + l.hs * ss];
                if accumulate {
                    widen(ds, s, b);
                    a.iter_mut().zip(b.iter()).for_each(|(a, b)| *a += b);
                } else {
                    widen(ds, s, a);
                }
            }
            narrow(dd, a, part);
        },
    );
    Ok(())
}

impl LayoutOps for CpuBackend {
    fn split_heads(
        &self,
        src: View<'_, CpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::heads(self, layout, &src, &dst, false)?;
        split_heads(src, layout, dst)
    }

    fn merge_heads(
        &self,
        src: View<'_, CpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CpuBuffer>,
        accumulate: bool,
    ) -> Result<()> {
        contract::heads(self, layout, &src, &dst, true)?;
        merge_heads(src, layout, dst, accumulate)
    }
}

impl AttentionOps for CpuBackend {
    fn attention(
        &self,
        qkv: View<'_, CpuBuffer>,
        shape: &Attention,
        out: ViewMut<'_, CpuBuffer>,
        probs: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::attention_forward(self, &qkv, shape, &out, &probs)?;
        attention(qkv, shape, out, probs)
    }

    fn attention_backward(
        &self,
        dout: View<'_, CpuBuffer>,
        qkv: View<'_, CpuBuffer>,
        probs: View<'_, CpuBuffer>,
        shape: &Attention,
        dqkv: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::attention_backward(self, &dout, &qkv, &probs, shape, &dqkv)?;
        attention_backward(dout, qkv, probs, shape, dqkv)
    }
}
