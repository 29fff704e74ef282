//! Causal (grouped-query) self-attention without the `t x t` matrices: FlashAttention-2's
//! algorithm on the CPU, f32 inside.
//!
//! **Forward.** One task per (batch entry, query head, block of [`BR`] query rows), in
//! parallel. The task streams over the key blocks of [`BC`] keys up to the diagonal (masked
//! blocks are never touched) with an online softmax: per row, the running maximum `m`, the
//! running sum `l` of `e^(s - m)` and the unnormalised output, rescaled by `e^(m_old - m_new)`
//! when the maximum grows. It writes the output `o / l` and `lse = m + ln l`.
//!
//! **Backward.** One task per (batch entry, key/value head): for each query head of its
//! group and each (query block, key block) pair at or below the diagonal it recomputes
//! `P = e^(S - lse)` from the saved `lse`, then `dV += Pᵀ dO`, `dP = dO Vᵀ`,
//! `dS = P ∘ (dP - D)` with `D = rowsum(dO ∘ O)`, `dQ += dS K`, `dK += dSᵀ Q`. A task owns
//! its key/value head's gradients and its query heads' gradients, so no two tasks write the
//! same value and the result does not depend on the thread count.
//!
//! The inputs are widened once into f32 scratch laid out for the inner loops (queries
//! pre-scaled by `1 / sqrt(hs)`; keys and values also as [`BC`]-column tiles of `hs x BC`, so
//! that a score row is a run of FMAs over contiguous keys); the scratch is O(b t width). Every
//! inner loop is compiled a second time for AVX2+FMA (see [`simd_dispatch`]).

use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{narrow, widen, with_f32_mut};
use super::math::{exp, simd_dispatch};
use super::reduce::{dot, max, sum};
use crate::Result;
use crate::backend::{Attention, View, ViewMut};
use mp_dtype::DType;
use rayon::prelude::*;

/// Query rows per forward task.
pub(crate) const BR: usize = 64;
/// Keys per tile.
pub(crate) const BC: usize = 64;

/// The sizes every loop needs.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    /// `t` rounded up to whole key tiles.
    tp: usize,
    hs: usize,
    /// Elements of one packed qkv row.
    row: usize,
    heads: usize,
    kv_heads: usize,
    c: usize,
    scale: f32,
}

impl Dims {
    fn new(s: &Attention) -> Self {
        let hs = s.head_size();
        Dims {
            t: s.t,
            tp: s.t.div_ceil(BC) * BC,
            hs,
            row: s.qkv_row(),
            heads: s.heads,
            kv_heads: s.kv_heads,
            c: s.c,
            scale: 1.0 / (hs as f32).sqrt(),
        }
    }

    /// First column of key head `kvh` (`part` 1) or value head `kvh` (`part` 2) in a qkv row.
    fn kv_col(&self, part: usize, kvh: usize) -> usize {
        self.c + (part - 1) * self.kv_heads * self.hs + kvh * self.hs
    }
}

/// One key or value head of one batch entry in f32: rows `t x hs` zero-padded to `tp` rows,
/// and the same as tiles `(tp / BC) x hs x BC` (tile `kb`, element `(d, j)` is row
/// `kb BC + j`, column `d`).
struct KvHead {
    rows: Vec<f32>,
    tiles: Vec<f32>,
}

impl KvHead {
    /// Head columns `col..col + hs` of the `t` rows of `src` (rows of `row` elements of `dt`).
    fn gather(src: &[u8], dt: DType, d: &Dims, col: usize) -> Self {
        let (hs, es) = (d.hs, dt.size_in_bytes());
        let mut rows = vec![0.0f32; d.tp * hs];
        for (i, r) in rows.chunks_exact_mut(hs).take(d.t).enumerate() {
            let at = (i * d.row + col) * es;
            widen(dt, &src[at..at + hs * es], r);
        }
        let mut tiles = vec![0.0f32; d.tp * hs];
        for (kb, tile) in tiles.chunks_exact_mut(hs * BC).enumerate() {
            for (j, r) in rows[kb * BC * hs..(kb + 1) * BC * hs]
                .chunks_exact(hs)
                .enumerate()
            {
                for (dd, &x) in r.iter().enumerate() {
                    tile[dd * BC + j] = x;
                }
            }
        }
        KvHead { rows, tiles }
    }

    fn tile(&self, kb: usize, hs: usize) -> &[f32] {
        &self.tiles[kb * hs * BC..(kb + 1) * hs * BC]
    }
}

/// `s[j] = sum_d q[d] tile[d, j]` for the [`BC`] keys of a tile.
#[inline(always)]
fn tile_dot(q: &[f32], tile: &[f32], s: &mut [f32; BC]) {
    let mut acc = [0.0f32; BC];
    for (&qd, k) in q.iter().zip(tile.chunks_exact(BC)) {
        for (a, &k) in acc.iter_mut().zip(k) {
            *a += qd * k;
        }
    }
    *s = acc;
}

/// `acc[..] += w * x[..]`.
#[inline(always)]
fn axpy(w: f32, x: &[f32], acc: &mut [f32]) {
    for (a, &x) in acc.iter_mut().zip(x) {
        *a += w * x;
    }
}

/// Keys of tile `kb` that query row `i` sees.
#[inline(always)]
fn visible(i: usize, kb: usize) -> usize {
    (i + 1 - kb * BC).min(BC)
}

simd_dispatch! {
    /// One forward task: query rows `i0..i0 + q.len() / hs` of one head (`q` pre-scaled, f32),
    /// against its key/value head; writes `o` (`rows x hs`) and `lse` (`rows`).
    fn forward_block(d: &Dims, i0: usize, q: &[f32], k: &KvHead, v: &KvHead, o: &mut [f32], lse: &mut [f32]) {
        let hs = d.hs;
        let rows = lse.len();
        let mut m = [f32::NEG_INFINITY; BR];
        let mut l = [0.0f32; BR];
        let mut s = [0.0f32; BC];
        o.fill(0.0);
        let last = i0 + rows - 1;
        for kb in 0..=last / BC {
            let tile = k.tile(kb, hs);
            for r in 0..rows {
                let i = i0 + r;
                if i < kb * BC {
                    continue;
                }
                let vis = visible(i, kb);
                tile_dot(&q[r * hs..(r + 1) * hs], tile, &mut s);
                let m_new = m[r].max(max(&s[..vis]));
                let corr = exp(m[r] - m_new);
                for x in &mut s[..vis] {
                    *x = exp(*x - m_new);
                }
                l[r] = l[r] * corr + sum(&s[..vis]);
                m[r] = m_new;
                let orow = &mut o[r * hs..(r + 1) * hs];
                if corr != 1.0 {
                    orow.iter_mut().for_each(|x| *x *= corr);
                }
                let vrows = &v.rows[kb * BC * hs..];
                for (j, &p) in s[..vis].iter().enumerate() {
                    axpy(p, &vrows[j * hs..(j + 1) * hs], orow);
                }
            }
        }
        for r in 0..rows {
            let inv = 1.0 / l[r];
            o[r * hs..(r + 1) * hs].iter_mut().for_each(|x| *x *= inv);
            lse[r] = m[r] + l[r].ln();
        }
    }
}

/// What the backward of one query head reads: its pre-scaled queries, upstream gradient,
/// `lse` and `D = rowsum(dO ∘ O)`, each `t` rows.
struct QueryHead {
    q: Vec<f32>,
    dout: Vec<f32>,
    lse: Vec<f32>,
    delta: Vec<f32>,
}

simd_dispatch! {
    /// The backward of one query head against its key/value head: `dq += dS K` (unscaled),
    /// `dk += dSᵀ Q` (the queries pre-scaled), `dv += Pᵀ dO`; every gradient `t x hs` (`dk`,
    /// `dv` padded to `tp` rows).
    fn backward_head(d: &Dims, qh: &QueryHead, k: &KvHead, v: &KvHead, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]) {
        let (hs, t) = (d.hs, d.t);
        let (mut p, mut ds) = ([0.0f32; BC], [0.0f32; BC]);
        for kb in 0..t.div_ceil(BC) {
            let (ktile, vtile) = (k.tile(kb, hs), v.tile(kb, hs));
            let krows = &k.rows[kb * BC * hs..(kb + 1) * BC * hs];
            let dk = &mut dk[kb * BC * hs..(kb + 1) * BC * hs];
            let dv = &mut dv[kb * BC * hs..(kb + 1) * BC * hs];
            for i in kb * BC..t {
                let vis = visible(i, kb);
                let (q, go) = (&qh.q[i * hs..(i + 1) * hs], &qh.dout[i * hs..(i + 1) * hs]);
                tile_dot(q, ktile, &mut p);
                let lse = qh.lse[i];
                for x in &mut p[..vis] {
                    *x = exp(*x - lse);
                }
                tile_dot(go, vtile, &mut ds);
                let delta = qh.delta[i];
                for (g, &pj) in ds[..vis].iter_mut().zip(&p[..vis]) {
                    *g = pj * (*g - delta);
                }
                let dqrow = &mut dq[i * hs..(i + 1) * hs];
                for j in 0..vis {
                    let at = j * hs..(j + 1) * hs;
                    axpy(p[j], go, &mut dv[at.clone()]);
                    axpy(ds[j], q, &mut dk[at.clone()]);
                    axpy(ds[j], &krows[at], dqrow);
                }
            }
        }
    }
}

/// Head columns `col..col + hs` of the `t` rows of `src` (rows of `row` elements of `dt`),
/// times `alpha`, as `t x hs` f32.
fn gather_rows(src: &[u8], dt: DType, d: &Dims, row: usize, col: usize, alpha: f32) -> Vec<f32> {
    let (hs, es) = (d.hs, dt.size_in_bytes());
    let mut out = vec![0.0f32; d.t * hs];
    for (i, r) in out.chunks_exact_mut(hs).enumerate() {
        let at = (i * row + col) * es;
        widen(dt, &src[at..at + hs * es], r);
        if alpha != 1.0 {
            r.iter_mut().for_each(|x| *x *= alpha);
        }
    }
    out
}

/// The key and value heads of every batch entry, `[n * kv_heads + kvh]`.
fn kv_heads(qkv: &[u8], dt: DType, d: &Dims, b: usize) -> Vec<(KvHead, KvHead)> {
    let stride = d.t * d.row * dt.size_in_bytes();
    (0..b * d.kv_heads)
        .into_par_iter()
        .map(|nk| {
            let (n, kvh) = (nk / d.kv_heads, nk % d.kv_heads);
            let src = &qkv[n * stride..(n + 1) * stride];
            (
                KvHead::gather(src, dt, d, d.kv_col(1, kvh)),
                KvHead::gather(src, dt, d, d.kv_col(2, kvh)),
            )
        })
        .collect()
}

/// [`crate::AttentionOps::attention`] (the contract already checked the views).
pub(crate) fn attention(
    qkv: View<'_, CpuBuffer>,
    s: &Attention,
    out: ViewMut<'_, CpuBuffer>,
    lse: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "attention";
    let d = Dims::new(s);
    if s.b * s.t == 0 || s.c == 0 {
        return Ok(());
    }
    let (dq, dout) = (qkv.dtype(), out.dtype());
    let (sq, so) = (dq.size_in_bytes(), dout.size_in_bytes());
    let qkv = bytes(OP, "qkv", qkv)?;
    let out = bytes_mut(OP, "out", out)?;
    let lse = super::convert::as_f32_mut(bytes_mut(OP, "lse", lse)?);
    let kv = kv_heads(qkv, dq, &d, s.b);
    let (t, hs, g) = (d.t, d.hs, s.group());
    let blocks = t.div_ceil(BR);
    // head-major f32 output, one chunk per task
    let mut o = vec![0.0f32; s.b * d.heads * t * hs];
    let tasks: Vec<(&mut [f32], &mut [f32])> = o
        .chunks_mut(t * hs)
        .zip(lse.chunks_mut(t))
        .flat_map(|(o, l)| o.chunks_mut(BR * hs).zip(l.chunks_mut(BR)))
        .collect();
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(task, (o, l))| {
            let (nh, qb) = (task / blocks, task % blocks);
            let (n, h) = (nh / d.heads, nh % d.heads);
            let i0 = qb * BR;
            let rows = l.len();
            let (es, at) = (sq, (n * t + i0) * d.row);
            let src = &qkv[at * es..(at + rows * d.row) * es];
            let dims = Dims { t: rows, ..d };
            let q = gather_rows(src, dq, &dims, d.row, h * hs, d.scale);
            let (k, v) = &kv[n * d.kv_heads + h / g];
            forward_block(&d, i0, &q, k, v, o, l);
        });
    // token-major rows of the output
    out.par_chunks_mut(t * d.c * so)
        .zip(o.par_chunks(d.heads * t * hs))
        .for_each(|(out_b, o_b)| {
            let mut row = vec![0.0f32; d.c];
            for (i, orow) in out_b.chunks_exact_mut(d.c * so).enumerate() {
                for (h, r) in row.chunks_exact_mut(hs).enumerate() {
                    r.copy_from_slice(&o_b[(h * t + i) * hs..(h * t + i + 1) * hs]);
                }
                narrow(dout, &row, orow);
            }
        });
    Ok(())
}

/// [`crate::AttentionOps::attention_backward`]: `dqkv += ..` (the contract already checked the
/// views).
pub(crate) fn attention_backward(
    dout: View<'_, CpuBuffer>,
    qkv: View<'_, CpuBuffer>,
    out: View<'_, CpuBuffer>,
    lse: View<'_, CpuBuffer>,
    s: &Attention,
    dqkv: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "attention_backward";
    let d = Dims::new(s);
    if s.b * s.t == 0 || s.c == 0 {
        return Ok(());
    }
    let (tdo, tq, to, tdq) = (dout.dtype(), qkv.dtype(), out.dtype(), dqkv.dtype());
    let dout = bytes(OP, "dout", dout)?;
    let qkv = bytes(OP, "qkv", qkv)?;
    let out = bytes(OP, "out", out)?;
    let lse = super::convert::as_f32(bytes(OP, "lse", lse)?);
    let dqkv = bytes_mut(OP, "dqkv", dqkv)?;
    let (t, hs, g, c) = (d.t, d.hs, s.group(), d.c);
    let (sq, sdo, so) = (tq.size_in_bytes(), tdo.size_in_bytes(), to.size_in_bytes());
    // one task per (batch entry, key/value head): the f32 gradients of its key head, value
    // head and query heads
    let grads: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..s.b * d.kv_heads)
        .into_par_iter()
        .map(|nk| {
            let (n, kvh) = (nk / d.kv_heads, nk % d.kv_heads);
            let src = &qkv[n * t * d.row * sq..(n + 1) * t * d.row * sq];
            let go_b = &dout[n * t * c * sdo..(n + 1) * t * c * sdo];
            let o_b = &out[n * t * c * so..(n + 1) * t * c * so];
            let k = KvHead::gather(src, tq, &d, d.kv_col(1, kvh));
            let v = KvHead::gather(src, tq, &d, d.kv_col(2, kvh));
            let (mut dk, mut dv) = (vec![0.0f32; d.tp * hs], vec![0.0f32; d.tp * hs]);
            let mut dq = vec![0.0f32; g * t * hs];
            for (r, dq) in dq.chunks_exact_mut(t * hs).enumerate() {
                let h = kvh * g + r;
                let go = gather_rows(go_b, tdo, &d, c, h * hs, 1.0);
                let o = gather_rows(o_b, to, &d, c, h * hs, 1.0);
                let delta = go
                    .chunks_exact(hs)
                    .zip(o.chunks_exact(hs))
                    .map(|(a, b)| dot(a, b));
                let at = (n * d.heads + h) * t;
                let qh = QueryHead {
                    q: gather_rows(src, tq, &d, d.row, h * hs, d.scale),
                    delta: delta.collect(),
                    dout: go,
                    lse: lse[at..at + t].to_vec(),
                };
                backward_head(&d, &qh, &k, &v, dq, &mut dk, &mut dv);
                dq.iter_mut().for_each(|x| *x *= d.scale);
            }
            (dq, dk, dv)
        })
        .collect();
    let sdq = tdq.size_in_bytes();
    dqkv.par_chunks_mut(t * d.row * sdq)
        .zip(grads.par_chunks(d.kv_heads))
        .for_each(|(dqkv_b, grads_b)| {
            let mut tmp = Vec::new();
            for (i, drow) in dqkv_b.chunks_exact_mut(d.row * sdq).enumerate() {
                with_f32_mut(tdq, drow, &mut tmp, true, |row| {
                    let rows = i * hs..(i + 1) * hs;
                    for (kvh, (dq, dk, dv)) in grads_b.iter().enumerate() {
                        for r in 0..g {
                            let h = kvh * g + r;
                            let src = &dq[r * t * hs..][rows.clone()];
                            axpy(1.0, src, &mut row[h * hs..(h + 1) * hs]);
                        }
                        let (ck, cv) = (d.kv_col(1, kvh), d.kv_col(2, kvh));
                        axpy(1.0, &dk[rows.clone()], &mut row[ck..ck + hs]);
                        axpy(1.0, &dv[rows.clone()], &mut row[cv..cv + hs]);
                    }
                });
            }
        });
    Ok(())
}
