//! Fused scaler and optimizer passes over flat parameter ranges: the gradient check
//! (non-finite flag and squared norm), AdamW and SGD with momentum.
//!
//! Every pass walks fixed blocks in parallel; the low-precision copies are rounded with the
//! step's [`Rounding`], stochastic rounding drawing element `i` of a view from the counter at
//! `view.offset + i`.

use super::CpuBuffer;
use super::check::{bytes, bytes_mut, expect_dtype, expect_len, shape_err};
use super::convert::{as_f32_mut, load, narrow_with, widen};
use super::pointwise::CHUNK;
use crate::Result;
use crate::backend::{AdamW, GradStats, Rounding, Sgd, View, ViewMut};
use mp_dtype::DType;
use rayon::prelude::*;

/// Non-finite flag and `sum((g * grad_mult)^2)` (f32 per block, f64 across blocks).
pub(crate) fn grad_stats(grads: View<'_, CpuBuffer>, grad_mult: f32) -> Result<GradStats> {
    let dg = grads.dtype();
    let g = bytes("grad_stats", "grads", grads)?;
    let parts: Vec<(bool, f32)> = g
        .par_chunks(CHUNK * dg.size_in_bytes())
        .map_init(Vec::new, |t, c| {
            let c = load(dg, c, t);
            let mut bad = false;
            let mut s = 0.0f32;
            for &v in c {
                bad |= !v.is_finite();
                let x = v * grad_mult;
                s += x * x;
            }
            (bad, s)
        })
        .collect();
    let mut out = GradStats::default();
    for (bad, s) in parts {
        out.non_finite |= bad;
        out.sum_sq += f64::from(s);
    }
    Ok(out)
}

/// Blocks of the model copy (`None` for every block when there is none).
type ModelBlocks<'a> = Box<dyn Iterator<Item = Option<&'a mut [u8]>> + 'a>;

/// The low-precision model copy of a step (view offset, dtype, blocks), split into the same
/// blocks as the parameters.
fn model_blocks<'a>(
    op: &'static str,
    model: Option<ViewMut<'a, CpuBuffer>>,
    n: usize,
) -> Result<(usize, Option<DType>, ModelBlocks<'a>)> {
    match model {
        Some(mv) => {
            expect_len(op, "model", mv.len, n)?;
            let (off, dt) = (mv.offset, mv.dtype());
            let b = bytes_mut(op, "model", mv)?;
            Ok((
                off,
                Some(dt),
                Box::new(b.chunks_mut(CHUNK * dt.size_in_bytes()).map(Some)),
            ))
        }
        None => Ok((0, None, Box::new(std::iter::repeat_with(|| None)))),
    }
}

/// Writes the updated f32 parameters of block `bi` back to `pb` and to the model copy.
#[allow(clippy::too_many_arguments)]
fn write_back(
    p: &[f32],
    dp: DType,
    pb: &mut [u8],
    p_off: usize,
    mb: Option<&mut [u8]>,
    mdt: Option<DType>,
    m_off: usize,
    bi: usize,
    rounding: Rounding,
) -> Result<()> {
    let start = bi * CHUNK;
    if dp == DType::F32 {
        as_f32_mut(pb).copy_from_slice(p);
    } else {
        narrow_with(dp, p, pb, rounding, p_off + start)?;
    }
    if let (Some(mb), Some(mdt)) = (mb, mdt) {
        narrow_with(mdt, p, mb, rounding, m_off + start)?;
    }
    Ok(())
}

/// One fused AdamW step (see [`AdamW`]).
pub(crate) fn adamw(
    params: ViewMut<'_, CpuBuffer>,
    grads: View<'_, CpuBuffer>,
    m: ViewMut<'_, CpuBuffer>,
    v: ViewMut<'_, CpuBuffer>,
    model: Option<ViewMut<'_, CpuBuffer>>,
    hp: &AdamW,
) -> Result<()> {
    const OP: &str = "adamw";
    let n = params.len;
    expect_len(OP, "grads", grads.len, n)?;
    expect_len(OP, "m", m.len, n)?;
    expect_len(OP, "v", v.len, n)?;
    expect_dtype(OP, "m", m.dtype(), DType::F32)?;
    expect_dtype(OP, "v", v.dtype(), DType::F32)?;
    if hp.step == 0 {
        return Err(shape_err(OP, "step is 1-based; got 0"));
    }
    let bc1 = 1.0 - f64::from(hp.beta1).powf(hp.step as f64);
    let bc2 = 1.0 - f64::from(hp.beta2).powf(hp.step as f64);
    let step_size = (f64::from(hp.lr) / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = 1.0 - hp.lr * hp.weight_decay;
    let (b1, b2, eps, gm) = (hp.beta1, hp.beta2, hp.eps, hp.grad_mult);
    let (dp, dg, p_off) = (params.dtype(), grads.dtype(), params.offset);
    let (m_off, mdt, mblocks) = model_blocks(OP, model, n)?;
    let p = bytes_mut(OP, "params", params)?;
    let g = bytes(OP, "grads", grads)?;
    let mm = as_f32_mut(bytes_mut(OP, "m", m)?);
    let vv = as_f32_mut(bytes_mut(OP, "v", v)?);
    let items: Vec<_> = p
        .chunks_mut(CHUNK * dp.size_in_bytes())
        .zip(g.chunks(CHUNK * dg.size_in_bytes()))
        .zip(mm.chunks_mut(CHUNK))
        .zip(vv.chunks_mut(CHUNK))
        .zip(mblocks)
        .enumerate()
        .collect();
    items.into_par_iter().try_for_each_init(
        || (Vec::new(), Vec::new()),
        |(tp, tg), (bi, ((((pb, gb), mc), vc), mb))| {
            tp.clear();
            tp.resize(mc.len(), 0.0);
            widen(dp, pb, tp);
            let gv = load(dg, gb, tg);
            for (((p, &g), m), v) in tp.iter_mut().zip(gv).zip(mc.iter_mut()).zip(vc.iter_mut()) {
                let g = g * gm;
                *p *= decay;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let denom = v.sqrt() / bc2_sqrt + eps;
                *p -= step_size * *m / denom;
            }
            write_back(tp, dp, pb, p_off, mb, mdt, m_off, bi, hp.rounding)
        },
    )
}

/// One fused SGD-with-momentum step (see [`Sgd`]).
pub(crate) fn sgd(
    params: ViewMut<'_, CpuBuffer>,
    grads: View<'_, CpuBuffer>,
    momentum_buf: ViewMut<'_, CpuBuffer>,
    model: Option<ViewMut<'_, CpuBuffer>>,
    hp: &Sgd,
) -> Result<()> {
    const OP: &str = "sgd";
    let n = params.len;
    expect_len(OP, "grads", grads.len, n)?;
    expect_len(OP, "momentum_buf", momentum_buf.len, n)?;
    expect_dtype(OP, "momentum_buf", momentum_buf.dtype(), DType::F32)?;
    let hp = *hp;
    let (dp, dg, p_off) = (params.dtype(), grads.dtype(), params.offset);
    let (m_off, mdt, mblocks) = model_blocks(OP, model, n)?;
    let p = bytes_mut(OP, "params", params)?;
    let g = bytes(OP, "grads", grads)?;
    let buf = as_f32_mut(bytes_mut(OP, "momentum_buf", momentum_buf)?);
    let items: Vec<_> = p
        .chunks_mut(CHUNK * dp.size_in_bytes())
        .zip(g.chunks(CHUNK * dg.size_in_bytes()))
        .zip(buf.chunks_mut(CHUNK))
        .zip(mblocks)
        .enumerate()
        .collect();
    items.into_par_iter().try_for_each_init(
        || (Vec::new(), Vec::new()),
        |(tp, tg), (bi, (((pb, gb), bc), mb))| {
            tp.clear();
            tp.resize(bc.len(), 0.0);
            widen(dp, pb, tp);
            let gv = load(dg, gb, tg);
            for ((p, &g), b) in tp.iter_mut().zip(gv).zip(bc.iter_mut()) {
                let mut g = g * hp.grad_mult + hp.weight_decay * *p;
                if hp.momentum != 0.0 {
                    *b = if hp.first_step {
                        g
                    } else {
                        hp.momentum * *b + (1.0 - hp.dampening) * g
                    };
                    g = if hp.nesterov {
                        g + hp.momentum * *b
                    } else {
                        *b
                    };
                }
                *p -= hp.lr * g;
            }
            write_back(tp, dp, pb, p_off, mb, mdt, m_off, bi, hp.rounding)
        },
    )
}
