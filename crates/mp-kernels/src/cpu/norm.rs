//! Row softmax / log-softmax (optionally causal) and layer norm forward/backward, all
//! computed in f32 whatever the storage dtype.

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{as_f32, as_f32_mut, load, with_f32_mut};
use super::math::{exp_sub, simd_dispatch};
use super::pointwise::{CHUNK, map_rows};
use super::reduce::{dot, max, sum, sum_sq};
use crate::Result;
use crate::backend::contract;
use crate::backend::*;
use crate::backend::{View, ViewMut};
use rayon::prelude::*;

/// Softmax (or log-softmax) of `x` into `o`, of which only the first `visible` entries count;
/// the rest are written as 0 (softmax) or -inf (log-softmax).
#[inline]
pub(crate) fn softmax_row(x: &[f32], visible: usize, log: bool, o: &mut [f32]) {
    let m = max(&x[..visible]);
    exp_sub(&x[..visible], m, &mut o[..visible]);
    let s = sum(&o[..visible]);
    if log {
        let ls = s.ln();
        for (o, &v) in o[..visible].iter_mut().zip(&x[..visible]) {
            *o = v - m - ls;
        }
        o[visible..].fill(f32::NEG_INFINITY);
    } else {
        let inv = 1.0 / s;
        for o in &mut o[..visible] {
            *o *= inv;
        }
        o[visible..].fill(0.0);
    }
}

/// Row softmax / log-softmax over rows of `cols`, causal rows seeing `j <= r % cols`.
pub(crate) fn softmax(
    x: View<'_, CpuBuffer>,
    cols: usize,
    causal: bool,
    log: bool,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "softmax";
    let (dx, dout) = (x.dtype(), out.dtype());
    let (x, out) = (bytes(OP, "x", x)?, bytes_mut(OP, "out", out)?);
    map_rows(x, dx, out, dout, cols, |r, xrow, orow| {
        let visible = if causal { r % cols + 1 } else { cols };
        softmax_row(xrow, visible, log, orow);
    });
    Ok(())
}

/// Layer norm over rows of `c = weight.len`, saving f32 mean and rstd.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm(
    x: View<'_, CpuBuffer>,
    weight: View<'_, CpuBuffer>,
    bias: View<'_, CpuBuffer>,
    eps: f32,
    out: ViewMut<'_, CpuBuffer>,
    mean: ViewMut<'_, CpuBuffer>,
    rstd: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "layer_norm";
    let c = weight.len;
    let (dx, dout) = (x.dtype(), out.dtype());
    let (mut tw, mut tb) = (Vec::new(), Vec::new());
    let w = load(weight.dtype(), bytes(OP, "weight", weight)?, &mut tw);
    let b = load(bias.dtype(), bytes(OP, "bias", bias)?, &mut tb);
    let x = bytes(OP, "x", x)?;
    let out = bytes_mut(OP, "out", out)?;
    let mean = as_f32_mut(bytes_mut(OP, "mean", mean)?);
    let rstd = as_f32_mut(bytes_mut(OP, "rstd", rstd)?);
    let rows_per = (CHUNK / c).max(1);
    out.par_chunks_mut(rows_per * c * dout.size_in_bytes())
        .zip(x.par_chunks(rows_per * c * dx.size_in_bytes()))
        .zip(mean.par_chunks_mut(rows_per))
        .zip(rstd.par_chunks_mut(rows_per))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(tx, to), (((oc, xc), mc), rc)| {
                let xc = load(dx, xc, tx);
                with_f32_mut(dout, oc, to, false, |o| {
                    layer_norm_rows(xc, w, b, eps, o, mc, rc)
                });
            },
        );
    Ok(())
}

simd_dispatch! {
    /// Layer norm of rows of `c = w.len()` elements: `o`, and each row's `mean` and `rstd`.
    fn layer_norm_rows(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        o: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
    ) {
        let c = w.len();
        for (((orow, xrow), m), r) in o
            .chunks_exact_mut(c)
            .zip(x.chunks_exact(c))
            .zip(mean.iter_mut())
            .zip(rstd.iter_mut())
        {
            let mu = sum(xrow) / c as f32;
            let mut acc = [0.0f32; 8];
            let mut it = xrow.chunks_exact(8);
            for ch in &mut it {
                for k in 0..8 {
                    let d = ch[k] - mu;
                    acc[k] += d * d;
                }
            }
            let tail: f32 = it.remainder().iter().map(|&v| (v - mu) * (v - mu)).sum();
            let var = ((acc[0] + acc[4]) + (acc[1] + acc[5]))
                + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
                + tail;
            let rs = 1.0 / (var / c as f32 + eps).sqrt();
            *m = mu;
            *r = rs;
            for (((o, &v), &w), &b) in orow.iter_mut().zip(xrow).zip(w).zip(b) {
                *o = (v - mu) * rs * w + b;
            }
        }
    }
}

simd_dispatch! {
    /// Layer-norm backward of rows of `c = w.len()` elements: `dx += ..` per row, and this
    /// block's `(dweight, dbias)` partial sums; `scratch` holds `2c` elements.
    fn layer_norm_backward_rows(
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        stats: (&[f32], &[f32]),
        dx: &mut [f32],
        dwb: (&mut Vec<f32>, &mut Vec<f32>),
        scratch: &mut [f32],
    ) {
        let c = w.len();
        let (mean, rstd) = stats;
        let (dw, db) = dwb;
        let (dxhat, xhat) = scratch.split_at_mut(c);
        for ((((dxrow, dyrow), xrow), &mu), &rs) in dx
            .chunks_exact_mut(c)
            .zip(dy.chunks_exact(c))
            .zip(x.chunks_exact(c))
            .zip(mean)
            .zip(rstd)
        {
            for (((((xh, d), &x), &g), &w), (dw, db)) in xhat
                .iter_mut()
                .zip(dxhat.iter_mut())
                .zip(xrow)
                .zip(dyrow)
                .zip(w)
                .zip(dw.iter_mut().zip(db.iter_mut()))
            {
                *xh = (x - mu) * rs;
                *db += g;
                *dw += g * *xh;
                *d = g * w;
            }
            let m1 = sum(dxhat) / c as f32;
            let m2 = dot(dxhat, xhat) / c as f32;
            for ((o, &d), &xh) in dxrow.iter_mut().zip(dxhat.iter()).zip(xhat.iter()) {
                *o += rs * (d - m1 - xh * m2);
            }
        }
    }
}

/// Layer-norm backward: `dx += ..`, `dweight += ..`, `dbias += ..`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward(
    dy: View<'_, CpuBuffer>,
    x: View<'_, CpuBuffer>,
    weight: View<'_, CpuBuffer>,
    mean: View<'_, CpuBuffer>,
    rstd: View<'_, CpuBuffer>,
    dx: ViewMut<'_, CpuBuffer>,
    dweight: ViewMut<'_, CpuBuffer>,
    dbias: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "layer_norm_backward";
    let c = weight.len;
    let (tdy, tx, tdx) = (dy.dtype(), x.dtype(), dx.dtype());
    let (tdw, tdb) = (dweight.dtype(), dbias.dtype());
    let mut tw = Vec::new();
    let w = load(weight.dtype(), bytes(OP, "weight", weight)?, &mut tw);
    let dy = bytes(OP, "dy", dy)?;
    let x = bytes(OP, "x", x)?;
    let mean = as_f32(bytes(OP, "mean", mean)?);
    let rstd = as_f32(bytes(OP, "rstd", rstd)?);
    let dx = bytes_mut(OP, "dx", dx)?;
    let dweight = bytes_mut(OP, "dweight", dweight)?;
    let dbias = bytes_mut(OP, "dbias", dbias)?;

    let rows_per = (4 * CHUNK / c).max(1);
    let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(rows_per * c * tdx.size_in_bytes())
        .zip(dy.par_chunks(rows_per * c * tdy.size_in_bytes()))
        .zip(x.par_chunks(rows_per * c * tx.size_in_bytes()))
        .zip(mean.par_chunks(rows_per))
        .zip(rstd.par_chunks(rows_per))
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new(), vec![0.0f32; 2 * c]),
            |(tdyv, txv, tdxv, scratch), ((((dxc, dyc), xc), mc), rc)| {
                let dyc = load(tdy, dyc, tdyv);
                let xc = load(tx, xc, txv);
                let mut dw = vec![0.0f32; c];
                let mut db = vec![0.0f32; c];
                with_f32_mut(tdx, dxc, tdxv, true, |dxo| {
                    let stats = (mc, rc);
                    layer_norm_backward_rows(dyc, xc, w, stats, dxo, (&mut dw, &mut db), scratch)
                });
                (dw, db)
            },
        )
        .collect();
    let mut dw_tot = vec![0.0f32; c];
    let mut db_tot = vec![0.0f32; c];
    for (dw, db) in parts {
        for j in 0..c {
            dw_tot[j] += dw[j];
            db_tot[j] += db[j];
        }
    }
    let mut tmp = Vec::new();
    with_f32_mut(tdw, dweight, &mut tmp, true, |o| {
        for (o, v) in o.iter_mut().zip(&dw_tot) {
            *o += v;
        }
    });
    with_f32_mut(tdb, dbias, &mut tmp, true, |o| {
        for (o, v) in o.iter_mut().zip(&db_tot) {
            *o += v;
        }
    });
    Ok(())
}

/// Softmax / log-softmax backward from the output `y`: `dx += ..`.
pub(crate) fn softmax_backward(
    y: View<'_, CpuBuffer>,
    dy: View<'_, CpuBuffer>,
    cols: usize,
    log: bool,
    dx: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "softmax_backward";
    let (ty, tdy, tdx) = (y.dtype(), dy.dtype(), dx.dtype());
    let y = bytes(OP, "y", y)?;
    let dy = bytes(OP, "dy", dy)?;
    let dx = bytes_mut(OP, "dx", dx)?;
    let rows_per = (CHUNK / cols).max(1);
    dx.par_chunks_mut(rows_per * cols * tdx.size_in_bytes())
        .zip(y.par_chunks(rows_per * cols * ty.size_in_bytes()))
        .zip(dy.par_chunks(rows_per * cols * tdy.size_in_bytes()))
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(t_y, t_dy, t_dx), ((dxc, yc), dyc)| {
                let yc = load(ty, yc, t_y);
                let dyc = load(tdy, dyc, t_dy);
                with_f32_mut(tdx, dxc, t_dx, true, |o| {
                    for ((orow, yrow), grow) in o
                        .chunks_exact_mut(cols)
                        .zip(yc.chunks_exact(cols))
                        .zip(dyc.chunks_exact(cols))
                    {
                        if log {
                            // Masked entries are -inf: they take no part.
                            let s: f32 = yrow
                                .iter()
                                .zip(grow)
                                .filter(|(y, _)| **y != f32::NEG_INFINITY)
                                .map(|(_, g)| g)
                                .sum();
                            for ((o, &y), &g) in orow.iter_mut().zip(yrow).zip(grow) {
                                if y != f32::NEG_INFINITY {
                                    *o += g - y.exp() * s;
                                }
                            }
                        } else {
                            let s: f32 = yrow.iter().zip(grow).map(|(y, g)| y * g).sum();
                            for ((o, &y), &g) in orow.iter_mut().zip(yrow).zip(grow) {
                                if y != 0.0 {
                                    *o += y * (g - s);
                                }
                            }
                        }
                    }
                });
            },
        );
    Ok(())
}

simd_dispatch! {
    /// RMSNorm of rows of `c = w.len()` elements: `o` and each row's `rstd`.
    fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, o: &mut [f32], rstd: &mut [f32]) {
        let c = w.len();
        for ((orow, xrow), r) in o.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(rstd) {
            let rs = 1.0 / (sum_sq(xrow) / c as f32 + eps).sqrt();
            *r = rs;
            for ((o, &v), &w) in orow.iter_mut().zip(xrow).zip(w) {
                *o = v * rs * w;
            }
        }
    }
}

/// RMSNorm over rows of `c = weight.len` (checked by the contract), saving f32 rstd.
pub(crate) fn rms_norm(
    x: View<'_, CpuBuffer>,
    weight: View<'_, CpuBuffer>,
    eps: f32,
    out: ViewMut<'_, CpuBuffer>,
    rstd: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "rms_norm";
    let c = weight.len;
    let (dx, dout) = (x.dtype(), out.dtype());
    let mut tw = Vec::new();
    let w = load(weight.dtype(), bytes(OP, "weight", weight)?, &mut tw);
    let x = bytes(OP, "x", x)?;
    let out = bytes_mut(OP, "out", out)?;
    let rstd = as_f32_mut(bytes_mut(OP, "rstd", rstd)?);
    let rows_per = (CHUNK / c).max(1);
    out.par_chunks_mut(rows_per * c * dout.size_in_bytes())
        .zip(x.par_chunks(rows_per * c * dx.size_in_bytes()))
        .zip(rstd.par_chunks_mut(rows_per))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(tx, to), ((oc, xc), rc)| {
                let xc = load(dx, xc, tx);
                with_f32_mut(dout, oc, to, false, |o| rms_norm_rows(xc, w, eps, o, rc));
            },
        );
    Ok(())
}

simd_dispatch! {
    /// RMSNorm backward of rows of `c = w.len()` elements: `dx += ..` per row and this
    /// block's `dweight` partial sums; `scratch` holds `2c` elements.
    fn rms_norm_backward_rows(
        dy: &[f32],
        x: &[f32],
        w: &[f32],
        rstd: &[f32],
        dx: &mut [f32],
        dw: &mut [f32],
        scratch: &mut [f32],
    ) {
        let c = w.len();
        let (g, xhat) = scratch.split_at_mut(c);
        for (((dxrow, dyrow), xrow), &rs) in dx
            .chunks_exact_mut(c)
            .zip(dy.chunks_exact(c))
            .zip(x.chunks_exact(c))
            .zip(rstd)
        {
            for (((((xh, g), &x), &d), &w), dw) in xhat
                .iter_mut()
                .zip(g.iter_mut())
                .zip(xrow)
                .zip(dyrow)
                .zip(w)
                .zip(dw.iter_mut())
            {
                *xh = x * rs;
                *dw += d * *xh;
                *g = d * w;
            }
            let m = dot(g, xhat) / c as f32;
            for ((o, &g), &xh) in dxrow.iter_mut().zip(g.iter()).zip(xhat.iter()) {
                *o += rs * (g - xh * m);
            }
        }
    }
}

/// RMSNorm backward (checked by the contract): `dx += ..`, `dweight += ..`.
pub(crate) fn rms_norm_backward(
    dy: View<'_, CpuBuffer>,
    x: View<'_, CpuBuffer>,
    weight: View<'_, CpuBuffer>,
    rstd: View<'_, CpuBuffer>,
    dx: ViewMut<'_, CpuBuffer>,
    dweight: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "rms_norm_backward";
    let c = weight.len;
    if c == 0 || x.len == 0 {
        return Ok(());
    }
    let (tdy, tx, tdx, tdw) = (dy.dtype(), x.dtype(), dx.dtype(), dweight.dtype());
    let mut tw = Vec::new();
    let w = load(weight.dtype(), bytes(OP, "weight", weight)?, &mut tw);
    let dy = bytes(OP, "dy", dy)?;
    let x = bytes(OP, "x", x)?;
    let rstd = as_f32(bytes(OP, "rstd", rstd)?);
    let dx = bytes_mut(OP, "dx", dx)?;
    let dweight = bytes_mut(OP, "dweight", dweight)?;
    let rows_per = (4 * CHUNK / c).max(1);
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(rows_per * c * tdx.size_in_bytes())
        .zip(dy.par_chunks(rows_per * c * tdy.size_in_bytes()))
        .zip(x.par_chunks(rows_per * c * tx.size_in_bytes()))
        .zip(rstd.par_chunks(rows_per))
        .map_init(
            || (Vec::new(), Vec::new(), Vec::new(), vec![0.0f32; 2 * c]),
            |(tdyv, txv, tdxv, scratch), (((dxc, dyc), xc), rc)| {
                let dyc = load(tdy, dyc, tdyv);
                let xc = load(tx, xc, txv);
                let mut dw = vec![0.0f32; c];
                with_f32_mut(tdx, dxc, tdxv, true, |dxo| {
                    rms_norm_backward_rows(dyc, xc, w, rc, dxo, &mut dw, scratch)
                });
                dw
            },
        )
        .collect();
    let mut dw_tot = vec![0.0f32; c];
    for dw in parts {
        for (t, v) in dw_tot.iter_mut().zip(&dw) {
            *t += v;
        }
    }
    let mut tmp = Vec::new();
    with_f32_mut(tdw, dweight, &mut tmp, true, |o| {
        for (o, v) in o.iter_mut().zip(&dw_tot) {
            *o += v;
        }
    });
    Ok(())
}

impl NormOps for CpuBackend {
    fn layer_norm(
        &self,
        x: View<'_, CpuBuffer>,
        weight: View<'_, CpuBuffer>,
        bias: View<'_, CpuBuffer>,
        eps: f32,
        out: ViewMut<'_, CpuBuffer>,
        mean: ViewMut<'_, CpuBuffer>,
        rstd: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::layer_norm(self, &x, &weight, &bias, &out, &mean, &rstd)?;
        layer_norm(x, weight, bias, eps, out, mean, rstd)
    }

    fn layer_norm_backward(
        &self,
        dy: View<'_, CpuBuffer>,
        x: View<'_, CpuBuffer>,
        weight: View<'_, CpuBuffer>,
        mean: View<'_, CpuBuffer>,
        rstd: View<'_, CpuBuffer>,
        dx: ViewMut<'_, CpuBuffer>,
        dweight: ViewMut<'_, CpuBuffer>,
        dbias: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::layer_norm_backward(self, &dy, &x, &weight, &mean, &rstd, &dx, &dweight, &dbias)?;
        layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias)
    }

    fn rms_norm(
        &self,
        x: View<'_, CpuBuffer>,
        weight: View<'_, CpuBuffer>,
        eps: f32,
        out: ViewMut<'_, CpuBuffer>,
        rstd: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::rms_norm(self, &x, &weight, eps, &out, &rstd)?;
        rms_norm(x, weight, eps, out, rstd)
    }

    fn rms_norm_backward(
        &self,
        dy: View<'_, CpuBuffer>,
        x: View<'_, CpuBuffer>,
        weight: View<'_, CpuBuffer>,
        rstd: View<'_, CpuBuffer>,
        dx: ViewMut<'_, CpuBuffer>,
        dweight: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::rms_norm_backward(self, &dy, &x, &weight, &rstd, &dx, &dweight)?;
        rms_norm_backward(dy, x, weight, rstd, dx, dweight)
    }
}
