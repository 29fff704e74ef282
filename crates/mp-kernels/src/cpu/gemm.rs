//! Batched GEMM with transposes, alpha/beta and broadcast strides.
//!
//! Two routes, chosen per call:
//! - BF16 A and B on a CPU with AVX-512 BF16: our own packed, cache-blocked `vdpbf16ps` kernel
//!   ([`bf16`]), reading BF16 directly with FP32 accumulation (its numerics, which differ
//!   slightly from the f32 route, are documented there). `MP_CPU_BF16_GEMM=widen` in the
//!   environment turns it off (for A/B measurements).
//! - Everything else: the `gemm` crate's f32 kernels (packed, cache-blocked, AVX2/FMA or
//!   AVX-512 micro-kernels chosen at run time). Low-precision operands are widened to f32 once
//!   per call (exact: every F16/BF16/FP8 value is an f32) into per-thread scratch reused across
//!   calls (no allocation or zero-filling once warm), so accumulation is always FP32; a non-F32
//!   C is computed in an f32 scratch and rounded to nearest even once. Many small products
//!   (attention heads) run one per thread; large ones use the crate's own rayon parallelism.

// Only the tests reach the driver on other architectures (through the emulated primitive).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod bf16;

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{as_f32, as_f32_mut, narrow, widen};
use super::pointwise::CHUNK;
use crate::Result;
use crate::backend::contract;
use crate::backend::*;
use crate::backend::{Gemm, View, ViewMut};
use ::gemm::Parallelism;
use mp_dtype::DType;
use rayon::prelude::*;
use std::cell::Cell;

/// Where a product goes: C's dtype and an optional bias (one f32 per column of C) added to
/// the f32 result before the one rounding to C.
#[derive(Clone, Copy, Debug)]
pub(super) struct Out<'a> {
    /// C's element type.
    pub dtype: DType,
    /// `n` values added to every row (only with `beta == 0` and one batch entry).
    pub bias: Option<&'a [f32]>,
}

impl Out<'_> {
    /// C of `dtype` without a bias.
    #[cfg(test)]
    pub(super) fn plain(dtype: DType) -> Self {
        Out { dtype, bias: None }
    }
}

/// Products of at most this many multiply-adds run one per thread when batched.
const SMALL_PRODUCT: usize = 1 << 21;

/// Elements a batched operand spans: `(batch - 1) * stride + size` (checked by the contract).
fn span(batch: usize, stride: usize, size: usize) -> usize {
    if batch == 0 || size == 0 {
        return 0;
    }
    (batch - 1) * stride + size
}

/// Scratch vectors longer than this (elements) are freed after use instead of kept, so a
/// calling thread retains at most 3 x 64 MiB between calls.
const SCRATCH_KEEP: usize = 1 << 24;

thread_local! {
    /// Per-thread f32 scratch for widened A, B and C, reused across calls (no allocation or
    /// zero-filling per call once warm).
    static WIDE: [Cell<Vec<f32>>; 3] = const {
        [Cell::new(Vec::new()), Cell::new(Vec::new()), Cell::new(Vec::new())]
    };
}

/// Takes this thread's scratch vector `slot` with at least `len` elements (contents
/// unspecified); hand it back with [`put_scratch`]. Taking (not borrowing) keeps a nested call
/// (rayon work stealing) from aliasing it: that one gets a fresh vector.
fn take_scratch(slot: usize, len: usize) -> Vec<f32> {
    let mut v = WIDE.with(|w| w[slot].take());
    if v.len() < len {
        v.resize(len, 0.0);
    }
    v
}

/// Returns a vector taken with [`take_scratch`] (dropped when very large).
fn put_scratch(slot: usize, v: Vec<f32>) {
    if v.len() <= SCRATCH_KEEP {
        WIDE.with(|w| w[slot].set(v));
    }
}

/// A view's elements as f32: borrowed for F32, widened into `tmp` otherwise (in parallel).
fn f32_operand<'a>(dtype: DType, src: &'a [u8], tmp: &'a mut [f32]) -> &'a [f32] {
    if dtype == DType::F32 {
        return as_f32(src);
    }
    let s = dtype.size_in_bytes();
    let tmp = &mut tmp[..src.len() / s];
    tmp.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK * s))
        .for_each(|(o, i)| widen(dtype, i, o));
    tmp
}

/// The AVX-512 BF16 kernel, when this CPU has it and `MP_CPU_BF16_GEMM` is not `widen`.
#[cfg(target_arch = "x86_64")]
fn native_bf16() -> Option<bf16::Avx512Bf16> {
    use std::sync::OnceLock;
    static NATIVE: OnceLock<Option<bf16::Avx512Bf16>> = OnceLock::new();
    *NATIVE.get_or_init(|| {
        let off = std::env::var("MP_CPU_BF16_GEMM").is_ok_and(|v| v == "widen");
        bf16::Avx512Bf16::detect().filter(|_| !off)
    })
}

/// One product `c = alpha * op(a) op(b) + beta * c` on f32 slices starting at one batch
/// entry's elements.
///
/// # Panics
/// If a slice is shorter than its operand (a bug in the caller: `gemm` checks every length
/// first). The check keeps the raw-pointer call below sound whatever the caller does.
fn gemm_one(spec: &Gemm, a: &[f32], b: &[f32], c: &mut [f32], par: Parallelism) {
    let Gemm { m, n, k, .. } = *spec;
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm_one: operand slices shorter than m={m} n={n} k={k}"
    );
    if k == 0 || spec.alpha == 0.0 {
        let c = &mut c[..m * n];
        if spec.beta == 0.0 {
            c.fill(0.0);
        } else {
            c.iter_mut().for_each(|v| *v *= spec.beta);
        }
        return;
    }
    let (lhs_cs, lhs_rs) = if spec.trans_a {
        (m as isize, 1)
    } else {
        (1, k as isize)
    };
    let (rhs_cs, rhs_rs) = if spec.trans_b {
        (k as isize, 1)
    } else {
        (1, n as isize)
    };
    // SAFETY: `a` holds the m*k elements of op(A) under these strides, `b` the k*n of op(B)
    // and `c` the m*n of C (asserted by the caller's span checks); `c` is exclusively
    // borrowed and does not alias `a` or `b`. The crate computes
    // dst = alpha_dst * dst + beta_prod * lhs * rhs, so our beta and alpha swap places.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            spec.beta != 0.0,
            a.as_ptr(),
            lhs_cs,
            lhs_rs,
            b.as_ptr(),
            rhs_cs,
            rhs_rs,
            spec.beta,
            spec.alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// `C = alpha * op(A) op(B) + beta * C (+ bias)` (see [`Gemm`]; the bias, if any, widened to
/// f32 and added before C's one rounding).
pub(crate) fn gemm(
    a: View<'_, CpuBuffer>,
    b: View<'_, CpuBuffer>,
    c: ViewMut<'_, CpuBuffer>,
    spec: &Gemm,
    bias: Option<&[f32]>,
) -> Result<()> {
    const OP: &str = "gemm";
    let Gemm { m, n, k, batch, .. } = *spec;
    // the contract checked the dtypes, the spans and that batch outputs do not overlap
    let (size_a, size_b, size_c) = (m * k, k * n, m * n);
    let span_a = span(batch, spec.stride_a, size_a);
    let span_b = span(batch, spec.stride_b, size_b);
    let span_c = span(batch, spec.stride_c, size_c);
    if span_c == 0 {
        return Ok(());
    }
    let (da, dc) = (a.dtype(), c.dtype());
    let (sa, sc) = (da.size_in_bytes(), dc.size_in_bytes());
    let a = &bytes(OP, "A", a)?[..span_a * sa];
    let b = &bytes(OP, "B", b)?[..span_b * sa];
    let c = &mut bytes_mut(OP, "C", c)?[..span_c * sc];
    let out = Out { dtype: dc, bias };
    #[cfg(target_arch = "x86_64")]
    if da == DType::BF16
        && k > 0
        && spec.alpha != 0.0
        && let Some(p) = native_bf16()
    {
        bf16::gemm(p, spec, a, b, c, out, SMALL_PRODUCT);
        return Ok(());
    }
    gemm_widened(spec, da, a, b, out, c);
    Ok(())
}

/// The f32 route of [`gemm()`] on validated operands: `a`, `b` (elements of `da`) and `c`
/// (elements of `out.dtype`) span exactly the batch entries `spec` addresses.
fn gemm_widened(spec: &Gemm, da: DType, a: &[u8], b: &[u8], out: Out<'_>, c: &mut [u8]) {
    let Gemm { m, n, k, batch, .. } = *spec;
    let dc = out.dtype;
    let sc = dc.size_in_bytes();
    let size_c = m * n;
    let span_c = c.len() / sc;
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    if da != DType::F32 {
        ta = take_scratch(0, a.len() / da.size_in_bytes());
        tb = take_scratch(1, b.len() / da.size_in_bytes());
    }
    let mut tc = if dc == DType::F32 {
        Vec::new()
    } else {
        take_scratch(2, span_c)
    };
    let af = f32_operand(da, a, &mut ta);
    let bf = f32_operand(da, b, &mut tb);
    let cf: &mut [f32] = if dc == DType::F32 {
        as_f32_mut(c)
    } else {
        let tc = &mut tc[..span_c];
        // Read unless every element is overwritten: with beta = 0 and no gaps between batch
        // outputs (gaps must survive the final rounding pass unchanged; widening then
        // rounding is exact).
        if spec.beta != 0.0 || span_c != batch * size_c {
            tc.par_chunks_mut(CHUNK)
                .zip(c.par_chunks(CHUNK * sc))
                .for_each(|(o, i)| widen(dc, i, o));
        }
        tc
    };

    let a_at = |i: usize| &af[i * spec.stride_a..];
    let b_at = |i: usize| &bf[i * spec.stride_b..];
    let work = size_c.saturating_mul(k);
    if batch > 1 && work <= SMALL_PRODUCT {
        cf.par_chunks_mut(spec.stride_c.max(1))
            .take(batch)
            .enumerate()
            .for_each(|(i, ci)| gemm_one(spec, a_at(i), b_at(i), ci, Parallelism::None));
    } else {
        for i in 0..batch {
            let ci = &mut cf[i * spec.stride_c..];
            gemm_one(spec, a_at(i), b_at(i), ci, Parallelism::Rayon(0));
        }
    }
    match (out.bias, dc) {
        (None, DType::F32) => {}
        (None, _) => c
            .par_chunks_mut(CHUNK * sc)
            .zip(tc[..span_c].par_chunks(CHUNK))
            .for_each(|(o, i)| narrow(dc, i, o)),
        // one row per task: the bias added in f32, then the rounding (in place for F32)
        (Some(bias), DType::F32) => as_f32_mut(c)
            .par_chunks_mut(n)
            .for_each(|row| add_bias(row, bias)),
        (Some(bias), _) => c
            .par_chunks_mut(n * sc)
            .zip(tc[..span_c].par_chunks_mut(n))
            .for_each(|(o, row)| {
                add_bias(row, bias);
                narrow(dc, row, o);
            }),
    }
    if dc != DType::F32 {
        put_scratch(2, tc);
    }
    if da != DType::F32 {
        put_scratch(0, ta);
        put_scratch(1, tb);
    }
}

/// `row[j] += bias[j]` in f32.
fn add_bias(row: &mut [f32], bias: &[f32]) {
    row.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
}

impl GemmOps for CpuBackend {
    fn gemm(
        &self,
        a: View<'_, CpuBuffer>,
        b: View<'_, CpuBuffer>,
        c: ViewMut<'_, CpuBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        if contract::gemm(self, &a, &b, &c, spec)? == 0 {
            return Ok(());
        }
        gemm(a, b, c, spec, None)
    }

    /// The bias added in the GEMM's own write-back (the BF16 kernel's epilogue, or the f32
    /// route's rounding pass): no FP32 product buffer and no second pass.
    fn gemm_bias(
        &self,
        a: View<'_, CpuBuffer>,
        b: View<'_, CpuBuffer>,
        bias: View<'_, CpuBuffer>,
        c: ViewMut<'_, CpuBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        if contract::gemm_bias(self, &a, &b, &bias, &c, spec)? == 0 {
            return Ok(());
        }
        if spec.k == 0 || spec.alpha == 0.0 {
            // C = bias on every row: the composition (a zero product plus the bias)
            return crate::backend::compose_gemm_bias(self, a, b, bias, c, spec);
        }
        let mut wide = vec![0f32; bias.len];
        widen(bias.dtype(), bytes("gemm_bias", "bias", bias)?, &mut wide);
        gemm(a, b, c, spec, Some(&wide))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::random_vec;

    /// The bias in the write-back equals the composition (product to FP32, then
    /// `bias_add`) bit for bit, on both routes (BF16 inputs take the AVX-512 BF16 kernel
    /// where the CPU has it), for every output and bias dtype, with odd sizes and both
    /// weight layouts.
    #[test]
    fn gemm_bias_equals_its_composition() {
        let be = CpuBackend::new();
        let (m, n, k) = (50, 70, 33);
        for da in [DType::F32, DType::BF16, DType::F16] {
            for dc in [DType::F32, DType::BF16, DType::F16] {
                for (trans_b, bias_dt) in [(false, DType::F32), (true, DType::BF16)] {
                    let s = Gemm {
                        trans_b,
                        alpha: 0.75,
                        ..Gemm::new(m, n, k)
                    };
                    let a = be.upload_f32(&random_vec(m * k, 1), da).unwrap();
                    let b = be.upload_f32(&random_vec(k * n, 2), da).unwrap();
                    let bias = be.upload_f32(&random_vec(n, 3), bias_dt).unwrap();
                    let run = |fused: bool| {
                        let mut c = be.zeros(dc, m * n).unwrap();
                        let (a, b, bias, c_out) = (a.view(), b.view(), bias.view(), c.view_mut());
                        if fused {
                            be.gemm_bias(a, b, bias, c_out, &s).unwrap();
                        } else {
                            compose_gemm_bias(&be, a, b, bias, c_out, &s).unwrap();
                        }
                        be.download_bytes(c.view()).unwrap()
                    };
                    assert_eq!(run(true), run(false), "{da} -> {dc}, trans_b {trans_b}");
                }
            }
        }
    }
}
