//! The fused scaler and optimizer passes of the CPU backend: the gradient check (non-finite
//! flag and squared norm, one read pass), AdamW and SGD with momentum (one read-modify-write
//! pass that also writes the low-precision model copy).
//!
//! # Layout of the work
//!
//! A pass splits its element range into fixed blocks of [`BLOCK`] elements that rayon runs in
//! parallel, and each block into tiles of [`TILE`] elements that stay in L1: a tile of
//! gradients is widened to f32 on the stack (F32 gradients are read in place), the update runs
//! as one branch-free loop over equal-length slices (so LLVM vectorises it), and the model copy
//! of the tile is rounded straight from the updated master values. Every byte is read and
//! written once; nothing is allocated per block. The gradient check ([`stats`]) reads its
//! blocks in place with AVX2 kernels where the CPU has them.
//!
//! # Determinism
//!
//! Every element's result depends only on its own inputs, so the updates are bit-identical
//! whatever the thread count. The gradient check ([`stats`]) adds fixed blocks in f64 in index
//! order, so its result is reproducible too.
//! Stochastic rounding draws element `i` of a view from the counter at `view.offset + i`
//! ([`mp_dtype::sr_random`]), independent of blocking.
//!
//! # Arithmetic
//!
//! AdamW follows `torch.optim.AdamW` (its single-tensor CPU path) operation by operation in
//! f32: `p *= 1 - lr*wd`; `m = lerp(m, g, 1 - beta1)` (PyTorch's two-branch lerp);
//! `v = v*beta2 + ((1 - beta2)*g)*g`; bias corrections and `lr / bc1`, `sqrt(bc2)` in f64,
//! rounded once to f32; `denom = sqrt(v) / sqrt(bc2) + eps`; `p += ((-lr/bc1) * m) / denom`.
//! SGD follows `torch.optim.SGD`. Gradients are multiplied by `grad_mult` as they are read.

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut, shape_err};
use super::math::simd_dispatch;
use crate::Result;
use crate::backend::contract::{self, Check};
use crate::backend::*;
use crate::backend::{AdamW, Rounding, Sgd, View, ViewMut};
use mp_dtype::{DType, EncodeOptions};
use rayon::prelude::*;

mod stats;

pub(crate) use stats::grad_stats;

/// Elements per parallel task.
const BLOCK: usize = 1 << 15;
/// Elements per L1-resident tile inside a block.
const TILE: usize = 1024;

/// Gradients of one dtype, borrowed as their natural element type.
#[derive(Clone, Copy)]
enum Grads<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    Other(DType, &'a [u8]),
}

impl<'a> Grads<'a> {
    fn new(dtype: DType, b: &'a [u8]) -> Self {
        match dtype {
            DType::F32 => Grads::F32(bytemuck::cast_slice(b)),
            DType::BF16 => Grads::Bf16(bytemuck::cast_slice(b)),
            d => Grads::Other(d, b),
        }
    }

    /// Elements `start..start + len`.
    fn sub(self, start: usize, len: usize) -> Self {
        match self {
            Grads::F32(s) => Grads::F32(&s[start..start + len]),
            Grads::Bf16(s) => Grads::Bf16(&s[start..start + len]),
            Grads::Other(d, b) => {
                let w = d.size_in_bytes();
                Grads::Other(d, &b[start * w..(start + len) * w])
            }
        }
    }

    /// The elements as f32: in place for F32, widened into `tile` otherwise.
    fn load<'t>(self, tile: &'t mut [f32; TILE], len: usize) -> Result<&'t [f32]>
    where
        'a: 't,
    {
        match self {
            Grads::F32(s) => Ok(s),
            Grads::Bf16(s) => {
                let t = &mut tile[..len];
                for (o, &h) in t.iter_mut().zip(s) {
                    *o = f32::from_bits(u32::from(h) << 16);
                }
                Ok(t)
            }
            Grads::Other(d, b) => {
                let t = &mut tile[..len];
                mp_dtype::decode(b, d, t)?;
                Ok(t)
            }
        }
    }
}

/// Rounds `src` into the `dtype` elements `dst` with `rounding`; `index` is the absolute
/// element index of `src[0]` in its buffer (the stochastic-rounding counter).
fn store(
    src: &[f32],
    dtype: DType,
    dst: &mut [u8],
    rounding: Rounding,
    index: usize,
) -> Result<()> {
    match (dtype, rounding) {
        (DType::F32, _) => {
            let d: &mut [f32] = bytemuck::cast_slice_mut(dst);
            d.copy_from_slice(src);
            return Ok(());
        }
        (DType::BF16, Rounding::NearestEven) => {
            to_bf16_rne(src, bytemuck::cast_slice_mut(dst));
            return Ok(());
        }
        _ => {}
    }
    let opts = EncodeOptions {
        rounding,
        saturate: false,
        index_offset: index as u64,
    };
    mp_dtype::encode(src, dst, dtype, &opts)?;
    Ok(())
}

simd_dispatch! {
    /// f32 -> BF16 bits, round to nearest even, branch-free (vectorises); bit for bit
    /// `mp_dtype::f32_to_bits(x, BF16, false)`: NaN stays a quiet NaN of the same sign.
    fn to_bf16_rne(src: &[f32], dst: &mut [u16]) {
        for (o, &x) in dst.iter_mut().zip(src) {
            let b = x.to_bits();
            let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
            let nan = ((b >> 16) as u16) | 0x0040;
            *o = if b & 0x7fff_ffff > 0x7f80_0000 { nan } else { rounded };
        }
    }
}

/// The parameters of a step: FP32 master weights (updated in place) or a low-precision
/// buffer (pure BF16/F16 mode: widened per tile, rounded back with the step's rounding).
enum Params<'a> {
    F32(&'a mut [f32]),
    Low(DType, &'a mut [u8]),
}

/// The per-block pieces of a fused optimizer pass.
struct Block<'a> {
    /// First element of the block within the views.
    start: usize,
    params: Params<'a>,
    /// The FP32 state buffers (AdamW: m and v; SGD: the momentum buffer and an empty slice).
    s1: &'a mut [f32],
    s2: &'a mut [f32],
    model: Option<&'a mut [u8]>,
}

/// The views of a fused pass after validation, split into [`Block`]s.
struct Pass<'a> {
    params_offset: usize,
    model_dtype: Option<DType>,
    model_offset: usize,
    grads: Grads<'a>,
    blocks: Vec<Block<'a>>,
}

/// Validates the views of a fused optimizer pass and splits them into blocks.
fn split<'a>(
    op: &'static str,
    params: ViewMut<'a, CpuBuffer>,
    grads: View<'a, CpuBuffer>,
    s1: (&'static str, ViewMut<'a, CpuBuffer>),
    s2: Option<(&'static str, ViewMut<'a, CpuBuffer>)>,
    model: Option<ViewMut<'a, CpuBuffer>>,
) -> Result<Pass<'a>> {
    // lengths and dtypes were checked by the op's contract
    let n = params.len;
    let params_dtype = params.dtype();
    let params_offset = params.offset;
    let grads = Grads::new(grads.dtype(), bytes(op, "grads", grads)?);
    let state = |(name, s): (&'static str, ViewMut<'a, CpuBuffer>)| -> Result<&'a mut [f32]> {
        Ok(bytemuck::cast_slice_mut(bytes_mut(op, name, s)?))
    };
    let s1 = state(s1)?;
    let s2 = s2.map(state).transpose()?;
    let (model_dtype, model_offset, model_bytes) = match model {
        Some(mv) => {
            let (d, off) = (mv.dtype(), mv.offset);
            (Some(d), off, Some(bytes_mut(op, "model", mv)?))
        }
        None => (None, 0, None),
    };
    let p = bytes_mut(op, "params", params)?;

    let nblocks = n.div_ceil(BLOCK);
    let mut blocks = Vec::with_capacity(nblocks);
    let mut s1_chunks = s1.chunks_mut(BLOCK);
    let mut s2_chunks = s2.map(|s| s.chunks_mut(BLOCK));
    let mut model_chunks = model_bytes
        .zip(model_dtype)
        .map(|(b, d)| b.chunks_mut(BLOCK * d.size_in_bytes()));
    let mut p_chunks = p.chunks_mut(BLOCK * params_dtype.size_in_bytes());
    for bi in 0..nblocks {
        let pb = p_chunks
            .next()
            .ok_or_else(|| shape_err(op, "params shorter than its view"))?;
        let params = match params_dtype {
            DType::F32 => Params::F32(bytemuck::cast_slice_mut(pb)),
            d => Params::Low(d, pb),
        };
        let s1 = s1_chunks.next().unwrap_or_default();
        let s2 = s2_chunks
            .as_mut()
            .and_then(Iterator::next)
            .unwrap_or_default();
        let model = model_chunks.as_mut().and_then(Iterator::next);
        blocks.push(Block {
            start: bi * BLOCK,
            params,
            s1,
            s2,
            model,
        });
    }
    Ok(Pass {
        params_offset,
        model_dtype,
        model_offset,
        grads,
        blocks,
    })
}

impl Pass<'_> {
    /// Runs `update(p, g, s1, s2)` over every tile of every block in parallel, then writes the
    /// parameters (pure low-precision mode) and the model copy of the tile with `rounding`.
    fn run<F>(self, rounding: Rounding, update: F) -> Result<()>
    where
        F: Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
    {
        let Pass {
            params_offset,
            model_dtype,
            model_offset,
            grads,
            blocks,
        } = self;
        blocks.into_par_iter().try_for_each(|blk| {
            let Block {
                start,
                mut params,
                s1,
                s2,
                mut model,
            } = blk;
            let len = match &params {
                Params::F32(p) => p.len(),
                Params::Low(d, b) => b.len() / d.size_in_bytes(),
            };
            let mut gtile = [0.0f32; TILE];
            let mut ptile = [0.0f32; TILE];
            let mut t0 = 0;
            while t0 < len {
                let n = TILE.min(len - t0);
                let index = start + t0;
                let g = grads.sub(index, n).load(&mut gtile, n)?;
                let s1 = s1.get_mut(t0..t0 + n).unwrap_or_default();
                let s2 = s2.get_mut(t0..t0 + n).unwrap_or_default();
                let p: &[f32] = match &mut params {
                    Params::F32(p) => {
                        let p = &mut p[t0..t0 + n];
                        update(p, g, s1, s2);
                        p
                    }
                    Params::Low(d, b) => {
                        let w = d.size_in_bytes();
                        let b = &mut b[t0 * w..(t0 + n) * w];
                        let t = &mut ptile[..n];
                        mp_dtype::decode(b, *d, t)?;
                        update(t, g, s1, s2);
                        store(t, *d, b, rounding, params_offset + index)?;
                        t
                    }
                };
                if let (Some(mb), Some(md)) = (model.as_deref_mut(), model_dtype) {
                    let w = md.size_in_bytes();
                    store(
                        p,
                        md,
                        &mut mb[t0 * w..(t0 + n) * w],
                        rounding,
                        model_offset + index,
                    )?;
                }
                t0 += n;
            }
            Ok(())
        })
    }
}

/// The step constants of an AdamW pass, rounded to f32 the way PyTorch's scalar arguments are.
#[derive(Clone, Copy, Debug)]
struct AdamCoef {
    decay: f32,
    w1: f32,
    beta2: f32,
    w2: f32,
    bc2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
    grad_mult: f32,
}

impl AdamCoef {
    /// The tile loop's scalars: the contract's per-step values plus `hp`'s own.
    fn new(hp: &AdamW, c: &contract::AdamCoef) -> Self {
        AdamCoef {
            decay: c.decay,
            w1: c.w1,
            beta2: hp.beta2,
            w2: c.w2,
            bc2_sqrt: c.bc2_sqrt,
            eps: hp.eps,
            neg_step_size: c.neg_step_size,
            grad_mult: hp.grad_mult,
        }
    }
}

simd_dispatch! {
    /// The AdamW update of one tile; all slices have the same length.
    fn adamw_tile(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &AdamCoef) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        // PyTorch's lerp takes one of two forms depending on the (loop-invariant) weight.
        if c.w1.abs() < 0.5 {
            for i in 0..n {
                let gi = g[i] * c.grad_mult;
                let mi = m[i] + c.w1 * (gi - m[i]);
                adam_finish(p, m, v, i, gi, mi, c);
            }
        } else {
            for i in 0..n {
                let gi = g[i] * c.grad_mult;
                let mi = gi - (gi - m[i]) * (1.0 - c.w1);
                adam_finish(p, m, v, i, gi, mi, c);
            }
        }
    }
}

/// The rest of the AdamW update of element `i` once its new first moment `mi` is known.
#[inline(always)]
fn adam_finish(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    i: usize,
    gi: f32,
    mi: f32,
    c: &AdamCoef,
) {
    let pi = p[i] * c.decay;
    let vi = v[i] * c.beta2 + c.w2 * gi * gi;
    let denom = vi.sqrt() / c.bc2_sqrt + c.eps;
    p[i] = pi + c.neg_step_size * mi / denom;
    m[i] = mi;
    v[i] = vi;
}

/// One fused AdamW step over a flat range (see [`AdamW`]): gradients of any dtype times
/// `hp.grad_mult`, FP32 moments, FP32 (or BF16/F16, pure mode) parameters, and the model
/// copy rounded with `hp.rounding`.
pub(crate) fn adamw(
    params: ViewMut<'_, CpuBuffer>,
    grads: View<'_, CpuBuffer>,
    m: ViewMut<'_, CpuBuffer>,
    v: ViewMut<'_, CpuBuffer>,
    model: Option<ViewMut<'_, CpuBuffer>>,
    hp: &AdamW,
    coef: &contract::AdamCoef,
) -> Result<()> {
    const OP: &str = "adamw";
    let c = AdamCoef::new(hp, coef);
    let pass = split(OP, params, grads, ("m", m), Some(("v", v)), model)?;
    pass.run(hp.rounding, |p, g, m, v| adamw_tile(p, g, m, v, &c))
}

simd_dispatch! {
    /// The SGD update of one tile (`torch.optim.SGD`); all slices have the same length.
    fn sgd_tile(p: &mut [f32], g: &[f32], buf: &mut [f32], hp: &Sgd) {
    let n = p.len();
    let g = &g[..n];
    let neg_lr = -hp.lr;
    let damp = 1.0 - hp.dampening;
    if hp.momentum == 0.0 {
        for i in 0..n {
            let gi = g[i] * hp.grad_mult + hp.weight_decay * p[i];
            p[i] += neg_lr * gi;
        }
        return;
    }
    let buf = &mut buf[..n];
    for i in 0..n {
        let gi = g[i] * hp.grad_mult + hp.weight_decay * p[i];
        let b = if hp.first_step {
            gi
        } else {
            buf[i] * hp.momentum + damp * gi
        };
        buf[i] = b;
        let d = if hp.nesterov { gi + hp.momentum * b } else { b };
        p[i] += neg_lr * d;
    }
}
}

/// One fused SGD-with-momentum step over a flat range (see [`Sgd`]); `momentum_buf` is FP32
/// and untouched when `hp.momentum` is 0.
pub(crate) fn sgd(
    params: ViewMut<'_, CpuBuffer>,
    grads: View<'_, CpuBuffer>,
    momentum_buf: ViewMut<'_, CpuBuffer>,
    model: Option<ViewMut<'_, CpuBuffer>>,
    hp: &Sgd,
) -> Result<()> {
    const OP: &str = "sgd";
    let hp = *hp;
    let pass = split(
        OP,
        params,
        grads,
        ("momentum_buf", momentum_buf),
        None,
        model,
    )?;
    pass.run(hp.rounding, |p, g, b, _| sgd_tile(p, g, b, &hp))
}

impl OptimOps for CpuBackend {
    fn grad_stats(&self, grads: View<'_, CpuBuffer>, grad_mult: f32) -> Result<GradStats> {
        Check::new(self, "grad_stats").view("grads", &grads)?;
        grad_stats(grads, grad_mult)
    }

    fn grad_stats_parts(
        &self,
        grads: View<'_, CpuBuffer>,
        grad_mult: f32,
        part: usize,
    ) -> Result<Vec<GradStats>> {
        Check::new(self, "grad_stats_parts").view("grads", &grads)?;
        let part = part.max(1);
        // the parts in parallel, each part's blocks in parallel inside it
        (0..grads.len.div_ceil(part))
            .into_par_iter()
            .map(|i| {
                let len = part.min(grads.len - i * part);
                grad_stats(
                    View {
                        buf: grads.buf,
                        offset: grads.offset + i * part,
                        len,
                    },
                    grad_mult,
                )
            })
            .collect()
    }

    fn adamw(
        &self,
        params: ViewMut<'_, CpuBuffer>,
        grads: View<'_, CpuBuffer>,
        m: ViewMut<'_, CpuBuffer>,
        v: ViewMut<'_, CpuBuffer>,
        model: Option<ViewMut<'_, CpuBuffer>>,
        hp: &AdamW,
    ) -> Result<()> {
        let (_, coef) = contract::adamw(self, &params, &grads, &m, &v, model.as_ref(), hp)?;
        adamw(params, grads, m, v, model, hp, &coef)
    }

    fn sgd(
        &self,
        params: ViewMut<'_, CpuBuffer>,
        grads: View<'_, CpuBuffer>,
        momentum_buf: ViewMut<'_, CpuBuffer>,
        model: Option<ViewMut<'_, CpuBuffer>>,
        hp: &Sgd,
    ) -> Result<()> {
        contract::sgd(self, &params, &grads, &momentum_buf, model.as_ref(), hp)?;
        sgd(params, grads, momentum_buf, model, hp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BufferExt;

    /// The backend op: the contract, then the kernel.
    fn adamw(
        params: ViewMut<'_, CpuBuffer>,
        grads: View<'_, CpuBuffer>,
        m: ViewMut<'_, CpuBuffer>,
        v: ViewMut<'_, CpuBuffer>,
        model: Option<ViewMut<'_, CpuBuffer>>,
        hp: &AdamW,
    ) -> Result<()> {
        crate::OptimOps::adamw(&super::super::CpuBackend, params, grads, m, v, model, hp)
    }

    fn buf(data: &[f32], dtype: DType) -> CpuBuffer {
        CpuBuffer::from_f32(data, dtype)
    }

    fn hp(step: u64) -> AdamW {
        AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
            grad_mult: 0.5,
            rounding: Rounding::NearestEven,
        }
    }

    /// The same update, element by element, with no blocking or tiling.
    fn reference(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], hp: &AdamW) {
        let c = AdamCoef::new(hp, &contract::adam_coef(hp));
        for i in 0..p.len() {
            adamw_tile(
                &mut p[i..i + 1],
                &g[i..i + 1],
                &mut m[i..i + 1],
                &mut v[i..i + 1],
                &c,
            );
        }
    }

    #[test]
    fn grad_stats_parts_are_the_per_part_stats_in_order() {
        let be = CpuBackend;
        let mut x = data(3 * BLOCK + 1000, 9);
        x[2 * BLOCK + 5] = f32::NAN;
        let g = buf(&x, DType::F32);
        for part in [BLOCK / 2, BLOCK, 2 * BLOCK + 3] {
            let parts = be
                .grad_stats_parts(g.slice(7, x.len() - 7), 0.5, part)
                .unwrap();
            assert_eq!(parts.len(), (x.len() - 7).div_ceil(part));
            for (i, p) in parts.iter().enumerate() {
                let len = part.min(x.len() - 7 - i * part);
                let want = be.grad_stats(g.slice(7 + i * part, len), 0.5).unwrap();
                assert_eq!(p.non_finite, want.non_finite, "part {i} of {part}");
                if !want.non_finite {
                    assert_eq!(
                        p.sum_sq.to_bits(),
                        want.sum_sq.to_bits(),
                        "part {i} of {part}"
                    );
                }
            }
        }
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| (mp_dtype::mix32(i ^ seed) as f32 / u32::MAX as f32 - 0.5) * 2.0)
            .collect()
    }

    #[test]
    fn adamw_matches_elementwise_reference_across_blocks_and_dtypes() {
        let n = BLOCK + TILE + 37;
        for gd in [DType::F32, DType::BF16, DType::F16] {
            let p0 = data(n, 1);
            let g0: Vec<f32> = buf(&data(n, 2), gd).to_f32_vec();
            let (mut p, mut m, mut v) = (
                buf(&p0, DType::F32),
                CpuBuffer::zeros(DType::F32, n),
                CpuBuffer::zeros(DType::F32, n),
            );
            let g = buf(&g0, gd);
            let mut model = CpuBuffer::zeros(DType::BF16, n);
            let (mut rp, mut rm, mut rv) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
            for step in 1..=3 {
                adamw(
                    p.view_mut(),
                    g.view(),
                    m.view_mut(),
                    v.view_mut(),
                    Some(model.view_mut()),
                    &hp(step),
                )
                .unwrap();
                reference(&mut rp, &g0, &mut rm, &mut rv, &hp(step));
            }
            assert_eq!(p.as_f32().unwrap(), &rp[..], "grads {gd}");
            assert_eq!(m.as_f32().unwrap(), &rm[..]);
            assert_eq!(v.as_f32().unwrap(), &rv[..]);
            assert_eq!(model.to_f32_vec(), buf(&rp, DType::BF16).to_f32_vec());
        }
    }

    #[test]
    fn adamw_on_a_sub_range_touches_nothing_else() {
        let n = 100;
        let p0 = data(n, 3);
        let mut p = buf(&p0, DType::F32);
        let g = buf(&data(n, 4), DType::F32);
        let (mut m, mut v) = (
            CpuBuffer::zeros(DType::F32, n),
            CpuBuffer::zeros(DType::F32, n),
        );
        adamw(
            p.slice_mut(10, 20),
            g.slice(10, 20),
            m.slice_mut(10, 20),
            v.slice_mut(10, 20),
            None,
            &hp(1),
        )
        .unwrap();
        let out = p.as_f32().unwrap();
        assert_eq!(&out[..10], &p0[..10]);
        assert_eq!(&out[30..], &p0[30..]);
        assert!(out[10..30].iter().zip(&p0[10..30]).all(|(a, b)| a != b));
        assert!(m.as_f32().unwrap()[..10].iter().all(|&x| x == 0.0));
    }

    #[test]
    fn adamw_rejects_bad_arguments() {
        let mut p = CpuBuffer::zeros(DType::F32, 8);
        let g = CpuBuffer::zeros(DType::F32, 7);
        let (mut m, mut v) = (
            CpuBuffer::zeros(DType::F32, 8),
            CpuBuffer::zeros(DType::BF16, 8),
        );
        let e = adamw(
            p.view_mut(),
            g.view(),
            m.view_mut(),
            v.view_mut(),
            None,
            &hp(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("grads has 7"), "{e}");
        let g = CpuBuffer::zeros(DType::F32, 8);
        let e = adamw(
            p.view_mut(),
            g.view(),
            m.view_mut(),
            v.view_mut(),
            None,
            &hp(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("v must be f32"), "{e}");
        let mut v = CpuBuffer::zeros(DType::F32, 8);
        let e = adamw(
            p.view_mut(),
            g.view(),
            m.view_mut(),
            v.view_mut(),
            None,
            &hp(0),
        )
        .unwrap_err();
        assert!(e.to_string().contains("1-based"), "{e}");
        let mut q = CpuBuffer::zeros(DType::F8E4M3, 8);
        assert!(
            adamw(
                q.view_mut(),
                g.view(),
                m.view_mut(),
                v.view_mut(),
                None,
                &hp(1)
            )
            .is_err()
        );
    }

    #[test]
    fn pure_bf16_stochastic_params_are_reproducible_and_blocking_independent() {
        let n = BLOCK + 5;
        let p0 = data(n, 5);
        let g = buf(&data(n, 6), DType::BF16);
        let run = |split_at: usize| {
            let mut p = buf(&p0, DType::BF16);
            let (mut m, mut v) = (
                CpuBuffer::zeros(DType::F32, n),
                CpuBuffer::zeros(DType::F32, n),
            );
            let h = AdamW {
                rounding: Rounding::Stochastic { seed: 42 },
                ..hp(1)
            };
            adamw(
                p.slice_mut(0, split_at),
                g.slice(0, split_at),
                m.slice_mut(0, split_at),
                v.slice_mut(0, split_at),
                None,
                &h,
            )
            .unwrap();
            let r = n - split_at;
            adamw(
                p.slice_mut(split_at, r),
                g.slice(split_at, r),
                m.slice_mut(split_at, r),
                v.slice_mut(split_at, r),
                None,
                &h,
            )
            .unwrap();
            p.as_u16().unwrap().to_vec()
        };
        let a = run(n);
        assert_eq!(a, run(1000), "same counter per absolute index");
        let rne = {
            let mut p = buf(&p0, DType::BF16);
            let (mut m, mut v) = (
                CpuBuffer::zeros(DType::F32, n),
                CpuBuffer::zeros(DType::F32, n),
            );
            adamw(
                p.view_mut(),
                g.view(),
                m.view_mut(),
                v.view_mut(),
                None,
                &hp(1),
            )
            .unwrap();
            p.as_u16().unwrap().to_vec()
        };
        assert_ne!(a, rne, "stochastic rounding differs from RNE somewhere");
    }

    #[test]
    fn bf16_rne_matches_mp_dtype_bit_for_bit() {
        let mut xs: Vec<f32> = (0..1u32 << 20)
            .map(|i| f32::from_bits(mp_dtype::mix32(i)))
            .collect();
        xs.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xff80_0001),
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x7f7f_ffff),
        ]);
        let mut ours = vec![0u16; xs.len()];
        to_bf16_rne(&xs, &mut ours);
        for (x, o) in xs.iter().zip(&ours) {
            let want = mp_dtype::f32_to_bits(*x, DType::BF16, false) as u16;
            assert_eq!(*o, want, "{:#010x}", x.to_bits());
        }
    }

    #[test]
    fn sgd_matches_pytorch_formulas() {
        let p0 = [1.0f32, -2.0, 0.5];
        let g0 = [0.1f32, 0.2, -0.3];
        let h = Sgd {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.1,
            weight_decay: 0.01,
            nesterov: true,
            first_step: true,
            grad_mult: 2.0,
            rounding: Rounding::NearestEven,
        };
        let mut p = buf(&p0, DType::F32);
        let g = buf(&g0, DType::F32);
        let mut b = CpuBuffer::zeros(DType::F32, 3);
        let mut model = CpuBuffer::zeros(DType::F16, 3);
        sgd(
            p.view_mut(),
            g.view(),
            b.view_mut(),
            Some(model.view_mut()),
            &h,
        )
        .unwrap();
        let h2 = Sgd {
            first_step: false,
            ..h
        };
        sgd(
            p.view_mut(),
            g.view(),
            b.view_mut(),
            Some(model.view_mut()),
            &h2,
        )
        .unwrap();
        for i in 0..3 {
            let (mut pp, mut bb) = (p0[i], 0.0f32);
            for first in [true, false] {
                let gi = g0[i] * 2.0 + 0.01 * pp;
                bb = if first {
                    gi
                } else {
                    bb * 0.9 + (1.0 - 0.1) * gi
                };
                pp += -0.1 * (gi + 0.9 * bb);
            }
            assert_eq!(p.as_f32().unwrap()[i], pp);
            assert_eq!(b.as_f32().unwrap()[i], bb);
            assert_eq!(model.to_f32_vec()[i], half::f16::from_f32(pp).to_f32());
        }
    }
}
