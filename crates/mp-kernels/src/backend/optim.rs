//! The optimizer family: the fused gradient check, the fused optimizer passes, and the
//! counting passes of the precision-health report.

use super::{MemoryOps, Rounding, View, ViewMut, contract};
use crate::Result;
use mp_dtype::DType;
use std::borrow::Cow;

/// Hyper-parameters of one fused AdamW step (`torch.optim.AdamW` order: decoupled decay
/// `p *= 1 - lr * wd` first, then moments, bias corrections, `denom = sqrt(v)/sqrt(bc2) + eps`,
/// `p -= lr / bc1 * m / denom`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// 1-based step number used for the bias corrections.
    pub step: u64,
    /// Every gradient is multiplied by this before use: `clip_factor / loss_scale`.
    pub grad_mult: f32,
    /// Rounding of the low-precision copy (and of the parameters themselves when they are
    /// stored low-precision, the pure-BF16 mode).
    pub rounding: Rounding,
}

/// Hyper-parameters of one fused SGD-with-momentum step (`torch.optim.SGD` semantics:
/// `g += wd * p; buf = momentum * buf + (1 - dampening) * g` (the first step sets `buf = g`);
/// `g = nesterov ? g + momentum * buf : buf; p -= lr * g`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 disables the buffer).
    pub momentum: f32,
    /// Dampening of the momentum.
    pub dampening: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// True on the first step (the momentum buffer is initialised to the gradient).
    pub first_step: bool,
    /// Every gradient is multiplied by this before use: `clip_factor / loss_scale`.
    pub grad_mult: f32,
    /// Rounding of the low-precision copy.
    pub rounding: Rounding,
}

/// Result of the fused gradient check: one read pass over a gradient buffer.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct GradStats {
    /// True when any element is +-inf or NaN.
    pub non_finite: bool,
    /// Sum of squares of `grad * grad_mult` (FP32 accumulation per block, summed in f64);
    /// meaningless when `non_finite`.
    pub sum_sq: f64,
}

/// One question of [`OptimOps::range_counts`]: how the elements `offset..offset + len` of a
/// view would fare stored in `dtype` after multiplying by `scale` (in f32, round to nearest
/// even).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RangeQuery {
    /// First element, from the start of the view.
    pub offset: usize,
    /// Elements.
    pub len: usize,
    /// The format the values are classified in.
    pub dtype: DType,
    /// The values are multiplied by this first (a loss scale, an FP8 amax scale); finite.
    pub scale: f32,
}

/// The answer to one [`RangeQuery`]: the counts of [`mp_dtype::range_stats`], exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RangeCounts {
    /// Non-zero finite values whose product rounds to zero.
    pub underflow: u64,
    /// Finite values whose product rounds to a non-zero subnormal.
    pub subnormal: u64,
    /// Finite values whose product rounds beyond the format's largest finite value.
    pub overflow: u64,
    /// The largest finite `|x|` of the range, before scaling (0 when none): what per-tensor
    /// amax scaling divides by.
    pub amax: f32,
}

/// The answer to one range of [`OptimOps::lost_update_counts`]: the counts of
/// [`mp_dtype::lost_update_counts`], exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpdateCounts {
    /// Elements whose update `after - before` is non-zero and finite.
    pub updated: u64,
    /// Of those, the updates weights stored in the queried format would lose.
    pub lost: u64,
}

/// The values of `src` on the host: in place where the backend's memory is the host's
/// ([`MemoryOps::host_bytes`]; F32 as is, narrower formats decoded tile by tile as they are
/// counted), else downloaded.
fn host_values<'v, B: MemoryOps + ?Sized>(be: &B, src: View<'v, B::Buffer>) -> Result<Values<'v>> {
    use super::DeviceBuffer;
    let dtype = src.buf.dtype();
    if let Some(bytes) = be.host_bytes(src) {
        if dtype != DType::F32 {
            return Ok(Values::Packed(dtype, bytes));
        }
        if let Ok(f) = bytemuck::try_cast_slice(bytes) {
            return Ok(Values::F32(Cow::Borrowed(f)));
        }
    }
    Ok(Values::F32(Cow::Owned(be.download_f32(src)?)))
}

/// The values of `src` as f32 on the host: in place when they are F32 in host memory, else
/// downloaded.
fn host_f32<'v, B: MemoryOps + ?Sized>(be: &B, src: View<'v, B::Buffer>) -> Result<Cow<'v, [f32]>> {
    match host_values(be, src)? {
        Values::F32(v) => Ok(v),
        Values::Packed(..) => Ok(Cow::Owned(be.download_f32(src)?)),
    }
}

/// Values to count: f32, or the raw bytes of a narrower format.
enum Values<'a> {
    F32(Cow<'a, [f32]>),
    Packed(DType, &'a [u8]),
}

impl Values<'_> {
    /// Elements `start..start + len`, borrowed.
    fn sub(&self, start: usize, len: usize) -> Tiles<'_> {
        match self {
            Values::F32(v) => Tiles::F32(&v[start..start + len]),
            Values::Packed(d, b) => {
                let w = d.size_in_bytes();
                Tiles::Packed(*d, &b[start * w..(start + len) * w])
            }
        }
    }
}

/// A borrowed range of [`Values`], read tile by tile as f32.
#[derive(Clone, Copy)]
enum Tiles<'a> {
    F32(&'a [f32]),
    Packed(DType, &'a [u8]),
}

impl<'a> Tiles<'a> {
    fn len(self) -> usize {
        match self {
            Tiles::F32(v) => v.len(),
            Tiles::Packed(d, b) => b.len() / d.size_in_bytes(),
        }
    }

    /// Elements `start..start + len`.
    fn sub(self, start: usize, len: usize) -> Self {
        match self {
            Tiles::F32(v) => Tiles::F32(&v[start..start + len]),
            Tiles::Packed(d, b) => {
                let w = d.size_in_bytes();
                Tiles::Packed(d, &b[start * w..(start + len) * w])
            }
        }
    }

    /// Calls `f` on every tile of at most [`COUNT_TILE`] elements as f32, in order (packed
    /// values decoded into `buf`).
    fn each(self, buf: &mut [f32], mut f: impl FnMut(&[f32])) {
        match self {
            Tiles::F32(v) => v.chunks(COUNT_TILE).for_each(f),
            Tiles::Packed(d, b) => {
                let w = d.size_in_bytes();
                for c in b.chunks(COUNT_TILE * w) {
                    let out = &mut buf[..c.len() / w];
                    mp_dtype::decode(c, d, out).expect("whole elements of the view's dtype");
                    f(out);
                }
            }
        }
    }
}

/// [`OptimOps::range_counts`] of host values, as the CPU counts them: the queries over one
/// range (consecutive queries with the same `offset` and `len`, such as one tensor in several
/// formats) share one pass over it, in L1-sized tiles, in parallel over blocks. The counts
/// are [`mp_dtype::range_stats`]'s, exactly.
///
/// # Panics
/// When a query is not inside `values` (the backends' contract refuses such a query first).
pub fn range_counts_of(values: &[f32], queries: &[RangeQuery]) -> Vec<RangeCounts> {
    count_queries(Tiles::F32(values), queries)
}

fn count_queries(values: Tiles<'_>, queries: &[RangeQuery]) -> Vec<RangeCounts> {
    let mut out = Vec::with_capacity(queries.len());
    let mut rest = queries;
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|q| (q.offset, q.len) == (first.offset, first.len))
            .count();
        let (group, tail) = rest.split_at(same);
        out.extend(count_range(values.sub(first.offset, first.len), group));
        rest = tail;
    }
    out
}

/// Elements per parallel block of [`count_range`], and per tile inside a block.
const COUNT_BLOCK: usize = 1 << 16;
const COUNT_TILE: usize = 4096;

/// One pass over `v` answering every query of `group` (all about `v`).
fn count_range(v: Tiles<'_>, group: &[RangeQuery]) -> Vec<RangeCounts> {
    use rayon::prelude::*;
    let classes: Vec<(mp_dtype::RangeThresholds, f32)> = group
        .iter()
        .map(|q| (mp_dtype::RangeThresholds::of(q.dtype), q.scale))
        .collect();
    let block = |b: Tiles<'_>| -> (Vec<[u64; 3]>, u32) {
        let mut counts = vec![[0u64; 3]; classes.len()];
        let mut amax = 0u32;
        let mut buf = [0f32; COUNT_TILE];
        b.each(&mut buf, |tile| {
            amax = amax.max(tile_amax(tile));
            for (c, (t, scale)) in counts.iter_mut().zip(&classes) {
                let [u, s, o] = tile_counts(tile, t, *scale);
                c[0] += u64::from(u);
                c[1] += u64::from(s);
                c[2] += u64::from(o);
            }
        });
        (counts, amax)
    };
    let merge = |(mut a, ma): (Vec<[u64; 3]>, u32), (b, mb): (Vec<[u64; 3]>, u32)| {
        for (x, y) in a.iter_mut().zip(&b) {
            for k in 0..3 {
                x[k] += y[k];
            }
        }
        (a, ma.max(mb))
    };
    let n = v.len();
    let (counts, amax) = if n <= COUNT_BLOCK {
        block(v)
    } else {
        (0..n.div_ceil(COUNT_BLOCK))
            .into_par_iter()
            .map(|k| block(v.sub(k * COUNT_BLOCK, COUNT_BLOCK.min(n - k * COUNT_BLOCK))))
            .reduce(|| (vec![[0u64; 3]; classes.len()], 0), merge)
    };
    counts
        .iter()
        .map(|&[underflow, subnormal, overflow]| RangeCounts {
            underflow,
            subnormal,
            overflow,
            amax: f32::from_bits(amax),
        })
        .collect()
}

/// `|x|`'s bits when `x` is finite and non-zero (the values the classes count), else 0.
#[inline(always)]
fn counted_bits(x: f32) -> u32 {
    let b = x.to_bits() & 0x7fff_ffff;
    // b in 1..0x7f80_0000, branch-free
    if b.wrapping_sub(1) < 0x7f7f_ffff {
        b
    } else {
        0
    }
}

/// The largest finite `|x|` bits of a tile: eight independent lanes, so it vectorises (the
/// bits are below 2^31, so the signed maximum SSE2 has serves).
fn tile_amax(tile: &[f32]) -> u32 {
    let mut lanes = [0i32; 8];
    let mut chunks = tile.chunks_exact(8);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = (*l).max(counted_bits(x) as i32);
        }
    }
    let tail = chunks.remainder().iter().map(|&x| counted_bits(x) as i32);
    lanes.into_iter().chain(tail).max().unwrap_or(0) as u32
}

/// `[underflow, subnormal, overflow]` of a tile in one format (branch-free, so it
/// vectorises): `|x * scale|`'s bits against the format's thresholds, `|x|`'s own at scale 1.
fn tile_counts(tile: &[f32], t: &mp_dtype::RangeThresholds, scale: f32) -> [u32; 3] {
    let (nz, nm, of) = (t.nonzero_from, t.normal_from, t.overflow_from);
    let (mut u, mut s, mut o) = (0u32, 0u32, 0u32);
    let mut count = |valid: bool, a: u32| {
        u += u32::from(valid & (a < nz));
        s += u32::from(valid & (a >= nz) & (a < nm));
        o += u32::from(valid & (a >= of));
    };
    if scale == 1.0 {
        for &x in tile {
            let b = counted_bits(x);
            count(b != 0, b);
        }
    } else {
        for &x in tile {
            let b = counted_bits(x);
            count(b != 0, (x * scale).to_bits() & 0x7fff_ffff);
        }
    }
    [u, s, o]
}

/// The fused scaler and optimizer passes over flat arenas, and the counting passes of the
/// precision-health report.
pub trait OptimOps: MemoryOps {
    /// One read pass over `grads`: whether any is non-finite, and the sum of squares of
    /// `grad * grad_mult` (the global norm of unscaled gradients, squared). Waits for the
    /// device: this is the one host read of a step.
    fn grad_stats(&self, grads: View<'_, Self::Buffer>, grad_mult: f32) -> Result<GradStats>;

    /// [`OptimOps::grad_stats`] of each consecutive `part`-element piece of `grads` (the last
    /// one may be shorter), in order: partial sums that a caller adds in a fixed order, so
    /// that the total does not depend on how the buffer is split between processes. The
    /// default makes one `grad_stats` call per part.
    fn grad_stats_parts(
        &self,
        grads: View<'_, Self::Buffer>,
        grad_mult: f32,
        part: usize,
    ) -> Result<Vec<GradStats>> {
        let part = part.max(1);
        (0..grads.len.div_ceil(part))
            .map(|i| {
                let len = part.min(grads.len - i * part);
                let v = View {
                    buf: grads.buf,
                    offset: grads.offset + i * part,
                    len,
                };
                self.grad_stats(v, grad_mult)
            })
            .collect()
    }

    /// One fused AdamW pass over a flat parameter range: reads `grads` (any dtype) times
    /// `hp.grad_mult`, updates the FP32 moments `m`, `v` and `params`, and writes `model`
    /// (when given) as `params` rounded to its dtype with `hp.rounding`. `params` is FP32
    /// master weights, or BF16/F16 for the pure low-precision mode (then rounded with
    /// `hp.rounding`). The per-step scalars are [`crate::contract::adam_coef`]'s.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        params: ViewMut<'_, Self::Buffer>,
        grads: View<'_, Self::Buffer>,
        m: ViewMut<'_, Self::Buffer>,
        v: ViewMut<'_, Self::Buffer>,
        model: Option<ViewMut<'_, Self::Buffer>>,
        hp: &AdamW,
    ) -> Result<()>;

    /// One fused SGD-with-momentum pass (see [`Sgd`]); `momentum_buf` is FP32.
    fn sgd(
        &self,
        params: ViewMut<'_, Self::Buffer>,
        grads: View<'_, Self::Buffer>,
        momentum_buf: ViewMut<'_, Self::Buffer>,
        model: Option<ViewMut<'_, Self::Buffer>>,
        hp: &Sgd,
    ) -> Result<()>;

    /// Per query, how the range's values would fare in its format (see [`RangeQuery`]), and
    /// the range's amax: one read pass on the device, answered in one host read. The counts
    /// are exactly [`mp_dtype::range_stats`]'s. The default reads the values on the host (in
    /// place where the backend's memory is the host's, as on the CPU); device backends
    /// override it with a counting kernel.
    fn range_counts(
        &self,
        src: View<'_, Self::Buffer>,
        queries: &[RangeQuery],
    ) -> Result<Vec<RangeCounts>> {
        contract::range_counts(self, &src, queries)?;
        let values = host_values(self, src)?;
        Ok(count_queries(values.sub(0, src.len), queries))
    }

    /// Per range `(offset, len)` of two equal-length views, how many of the updates
    /// `after - before` are non-zero and how many of those weights stored in `dtype` would
    /// lose (exactly [`mp_dtype::lost_update_counts`]): one read pass on the device, answered
    /// in one host read. The default reads the values on the host; device backends override
    /// it with a counting kernel.
    fn lost_update_counts(
        &self,
        before: View<'_, Self::Buffer>,
        after: View<'_, Self::Buffer>,
        ranges: &[(usize, usize)],
        dtype: DType,
    ) -> Result<Vec<UpdateCounts>> {
        contract::lost_update_counts(self, &before, &after, ranges)?;
        let (b, a) = (host_f32(self, before)?, host_f32(self, after)?);
        Ok(ranges
            .iter()
            .map(|&(o, n)| {
                let (updated, lost) =
                    mp_dtype::lost_update_counts(&b[o..o + n], &a[o..o + n], dtype);
                UpdateCounts { updated, lost }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU's tiled, parallel counts are `range_stats`' exactly: every format, scales that
    /// move values across every class, the specials, ranges shared by several queries, a
    /// range over several parallel blocks.
    #[test]
    fn range_counts_of_equals_range_stats() {
        let n = 3 * COUNT_BLOCK + 123;
        let mut v: Vec<f32> = (0..n)
            .map(|i| {
                let u = mp_dtype::sr_random(7, i as u64);
                let e = (u % 60) as i32 - 40;
                let sign = if u & (1 << 31) != 0 { -1.0 } else { 1.0 };
                sign * (1.0 + (u >> 8) as f32 / 16_777_216.0) * 2f32.powi(e)
            })
            .collect();
        let specials = [
            0.0,
            -0.0,
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-40,
            f32::MAX,
        ];
        for (k, x) in specials.iter().enumerate() {
            v[k * 1000] = *x;
        }
        let mut queries = Vec::new();
        for dtype in DType::ALL {
            for scale in [1.0, 65536.0, 1.0 / 4096.0, 3.5] {
                queries.push(RangeQuery {
                    offset: 0,
                    len: n,
                    dtype,
                    scale,
                });
                queries.push(RangeQuery {
                    offset: 999,
                    len: 5000,
                    dtype,
                    scale,
                });
            }
        }
        queries.push(RangeQuery {
            offset: 5,
            len: 0,
            dtype: DType::F16,
            scale: 1.0,
        });
        let got = range_counts_of(&v, &queries);
        let mut seen = [0u64; 3];
        for (q, c) in queries.iter().zip(&got) {
            let x = &v[q.offset..q.offset + q.len];
            let s = mp_dtype::range_stats(x, q.dtype, q.scale);
            assert_eq!(
                (c.underflow, c.subnormal, c.overflow),
                (s.underflow_to_zero, s.subnormal, s.overflow),
                "{q:?}"
            );
            let amax = x
                .iter()
                .filter(|x| x.is_finite())
                .fold(0.0f32, |m, x| m.max(x.abs()));
            assert_eq!(c.amax.to_bits(), amax.to_bits(), "{q:?}");
            seen[0] += c.underflow;
            seen[1] += c.subnormal;
            seen[2] += c.overflow;
        }
        assert!(seen.iter().all(|&k| k > 0), "every class occurs: {seen:?}");
    }

    /// The trait's default on the CPU counts every buffer dtype in place (narrow formats
    /// decoded tile by tile) with the counts of the downloaded values.
    #[test]
    fn the_cpu_counts_every_dtype_in_place() {
        use crate::{BufferExt, CpuBackend, MemoryOps};
        let be = CpuBackend::new();
        let n = COUNT_BLOCK + 3 * COUNT_TILE + 17;
        let v: Vec<f32> = (0..n)
            .map(|i| {
                let u = mp_dtype::sr_random(3, i as u64);
                ((u >> 8) as f32 / 16_777_216.0 - 0.5) * 2f32.powi((u % 40) as i32 - 30)
            })
            .collect();
        for dtype in DType::ALL {
            let buf = be.upload_f32(&v, dtype).unwrap();
            let view = buf.slice(5, n - 5);
            let stored = be.download_f32(view).unwrap();
            let queries: Vec<RangeQuery> = DType::ALL
                .iter()
                .flat_map(|&d| {
                    [(0, n - 5), (COUNT_TILE - 1, 2 * COUNT_TILE + 3)].map(|(offset, len)| {
                        RangeQuery {
                            offset,
                            len,
                            dtype: d,
                            scale: 1.0,
                        }
                    })
                })
                .collect();
            let got = be.range_counts(view, &queries).unwrap();
            assert_eq!(got, range_counts_of(&stored, &queries), "{dtype} buffer");
        }
    }
}
