//! Reductions: per-row sum / mean / max / sum of squares, and column sums (bias gradients).
//!
//! Long rows are cut into fixed blocks reduced in parallel and combined in block order, and
//! column sums use fixed row blocks with per-block partial vectors, so results never depend on
//! the thread count.

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{load, with_f32_mut};
use super::pointwise::CHUNK;
use crate::Result;
use crate::backend::contract;
use crate::backend::*;
use crate::backend::{ReduceOp, View, ViewMut};
use rayon::prelude::*;

/// Sum with eight independent f32 accumulators (vectorises; also more accurate than one).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    let tail: f32 = it.remainder().iter().sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Dot product with eight independent f32 accumulators.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ia = a.chunks_exact(8);
    let mut ib = b.chunks_exact(8);
    for (x, y) in (&mut ia).zip(&mut ib) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ia
        .remainder()
        .iter()
        .zip(ib.remainder())
        .map(|(x, y)| x * y)
        .sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Sum of squares with eight independent f32 accumulators.
#[inline]
pub(crate) fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += c[k] * c[k];
        }
    }
    let tail: f32 = it.remainder().iter().map(|v| v * v).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Maximum; NaN propagates. Eight lanes and a separate NaN flag, so it vectorises.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut nan = [false; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
            nan[k] |= c[k].is_nan();
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in it.remainder().iter().chain(&acc) {
        if v > m {
            m = v;
        }
    }
    if nan.iter().any(|&b| b) || it.remainder().iter().any(|v| v.is_nan()) {
        f32::NAN
    } else {
        m
    }
}

/// Combines two partial results of `op` (sums for Sum/Mean/SumSq, maxima for Max).
fn combine(op: ReduceOp, a: f32, b: f32) -> f32 {
    match op {
        ReduceOp::Max => {
            if a.is_nan() || !(b.is_nan() || b > a) {
                a
            } else {
                b
            }
        }
        _ => a + b,
    }
}

/// The partial result of `op` over a slice (before the mean's division).
fn partial(op: ReduceOp, x: &[f32]) -> f32 {
    match op {
        ReduceOp::Sum | ReduceOp::Mean => sum(x),
        ReduceOp::SumSq => sum_sq(x),
        ReduceOp::Max => max(x),
    }
}

fn identity(op: ReduceOp) -> f32 {
    match op {
        ReduceOp::Max => f32::NEG_INFINITY,
        _ => 0.0,
    }
}

/// `out[r] = reduce(x[r, ..])`.
pub(crate) fn reduce_rows(
    op: ReduceOp,
    x: View<'_, CpuBuffer>,
    cols: usize,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "reduce_rows";
    let rows = x.len / cols;
    let (dx, dout) = (x.dtype(), out.dtype());
    let sx = dx.size_in_bytes();
    let (x, out) = (bytes(OP, "x", x)?, bytes_mut(OP, "out", out)?);
    let finish = |v: f32| {
        if op == ReduceOp::Mean {
            v / cols as f32
        } else {
            v
        }
    };
    let mut tmp = Vec::new();
    if cols >= 4 * CHUNK {
        // Few long rows: parallel blocks within each row, combined in block order.
        with_f32_mut(dout, out, &mut tmp, false, |o| {
            for (r, o) in o.iter_mut().enumerate() {
                let row = &x[r * cols * sx..(r + 1) * cols * sx];
                let parts: Vec<f32> = row
                    .par_chunks(CHUNK * sx)
                    .map_init(Vec::new, |t, c| partial(op, load(dx, c, t)))
                    .collect();
                *o = finish(
                    parts
                        .into_iter()
                        .fold(identity(op), |a, b| combine(op, a, b)),
                );
            }
        });
    } else {
        // Many short rows: parallel over blocks of rows.
        let rows_per = (CHUNK / cols).max(1);
        let mut vals = vec![0.0f32; rows];
        vals.par_chunks_mut(rows_per)
            .zip(x.par_chunks(rows_per * cols * sx))
            .for_each_init(Vec::new, |t, (o, c)| {
                let c = load(dx, c, t);
                for (o, row) in o.iter_mut().zip(c.chunks_exact(cols)) {
                    *o = finish(partial(op, row));
                }
            });
        with_f32_mut(dout, out, &mut tmp, false, |o| o.copy_from_slice(&vals));
    }
    Ok(())
}

/// `out[j] += sum_r x[r, j]`.
pub(crate) fn sum_cols_acc(x: View<'_, CpuBuffer>, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
    const OP: &str = "sum_cols_acc";
    let n = out.len;
    let (dx, dout) = (x.dtype(), out.dtype());
    let (x, out) = (bytes(OP, "x", x)?, bytes_mut(OP, "out", out)?);
    let total = col_sums(x, dx, n);
    let mut tmp = Vec::new();
    with_f32_mut(dout, out, &mut tmp, true, |o| {
        for (o, s) in o.iter_mut().zip(&total) {
            *o += s;
        }
    });
    Ok(())
}

/// Column sums of a `rows x n` matrix of `dx` elements, in f32, thread-count independent.
pub(crate) fn col_sums(x: &[u8], dx: mp_dtype::DType, n: usize) -> Vec<f32> {
    let rows_per = (4 * CHUNK / n).max(1);
    let parts: Vec<Vec<f32>> = x
        .par_chunks(rows_per * n * dx.size_in_bytes())
        .map_init(Vec::new, |t, c| {
            let c = load(dx, c, t);
            let mut acc = vec![0.0f32; n];
            for row in c.chunks_exact(n) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f32; n];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

impl RowOps for CpuBackend {
    fn reduce_rows(
        &self,
        op: ReduceOp,
        x: View<'_, CpuBuffer>,
        cols: usize,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::reduce_rows(self, &x, cols, &out)?;
        reduce_rows(op, x, cols, out)
    }

    fn sum_cols_acc(&self, x: View<'_, CpuBuffer>, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
        contract::sum_cols(self, &x, &out)?;
        sum_cols_acc(x, out)
    }

    fn softmax(
        &self,
        x: View<'_, CpuBuffer>,
        cols: usize,
        causal: bool,
        log: bool,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::softmax(self, &x, cols, &out)?;
        super::norm::softmax(x, cols, causal, log, out)
    }

    fn softmax_backward(
        &self,
        y: View<'_, CpuBuffer>,
        dy: View<'_, CpuBuffer>,
        cols: usize,
        log: bool,
        dx: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::softmax_backward(self, &y, &dy, cols, &dx)?;
        super::norm::softmax_backward(y, dy, cols, log, dx)
    }
}
