//! BF16 x BF16 GEMM on AVX-512 BF16 (`vdpbf16ps`): packing, cache blocking and a
//! register-blocked micro-kernel generic over the one primitive it needs.
//!
//! # The primitive
//! [`DotBf16`] (`cpu/dot_bf16.rs`): `vdpbf16ps` on AVX-512 BF16 CPUs (`Avx512Bf16`), or its
//! portable emulation (`Emulated`, compiled for tests only). Everything else here (packing, blocking, the micro-kernel, the
//! epilogue) is the same code for both, so tests of the emulated path on any machine cover the
//! whole driver.
//!
//! # Numerics (differences from the widen-then-f32 path of the parent module)
//! - Products of two BF16 values are exact in f32; the sums are f32 with one rounding per FMA,
//!   like the f32 path, but in a different order: lane `j` of row `i` takes the pairs
//!   `k = 2p+1` then `k = 2p` for `p = 0, 1, ...`, whereas the f32 kernel runs `k` in its own
//!   order. Results differ by ordinary f32 reassociation (a few ulps of `sum |a b|`).
//! - Subnormal BF16 inputs count as zero and a partial sum that falls into the f32 subnormal
//!   range (below 2^-126 in magnitude) becomes zero, where the f32 path keeps them. Training
//!   values live far from that range; the difference is at most `k * 2^-126` absolute.
//! - `k` odd is padded with a zero element, which adds `+0` to every sum (it can turn a `-0`
//!   result into `+0`).
//! - The epilogue `alpha * acc + beta * c` is computed in f32 and rounded once to C's dtype
//!   (nearest even), as in the f32 path.
//!
//! # Blocking
//! A (`m x k`) is packed per row tile into panels of [`MR`] rows, B (`k x n`) once per product
//! into panels of [`NR`] columns, both as `u32` pairs of consecutive `k` (the layout the
//! instruction reads: one 64-byte B load and one broadcast A pair per step). Row tiles of at
//! most `MC_MAX` rows run in parallel (rayon); inside a tile, blocks of `NC` columns and
//! `KC` pairs of `k` keep a B micro-panel in L1 and the A block in L2, and partial sums live in
//! an f32 tile between `k` blocks. Each output element's sum runs in one fixed order whatever
//! the thread count, so results are bit-identical from run to run.

use super::super::convert::{as_f32_mut, narrow, widen};
#[cfg(target_arch = "x86_64")]
pub(super) use super::super::dot_bf16::Avx512Bf16;
use super::super::dot_bf16::DotBf16;
#[cfg(test)]
use super::super::dot_bf16::{Emulated, dp_lane};
use super::Out;
use crate::backend::Gemm;
use mp_dtype::DType;
use rayon::prelude::*;
use std::cell::Cell;
use std::thread::LocalKey;

/// 16-lane f32 vectors per micro-tile row.
const NV: usize = 2;
/// Rows of a micro-tile (one broadcast A pair each per step).
pub(super) const MR: usize = 12;
/// Columns of a micro-tile: `NV` vectors of 16 lanes (`MR * NV` = 24 accumulator registers).
pub(super) const NR: usize = 16 * NV;
/// Pairs of `k` per cache block: a B micro-panel of `KC * NR * 4` = 24 KiB stays in L1.
const KC: usize = 192;
/// Columns per cache block (8 micro-panels).
const NC: usize = 8 * NR;
/// Most rows per parallel row tile (the packed A block `MC_MAX x 2 KC` BF16 is 108 KiB).
const MC_MAX: usize = 12 * MR;
/// Scratch vectors longer than this (elements) are freed after use instead of kept.
const SCRATCH_KEEP: usize = 1 << 24;

/// A [`DotBf16`] primitive that can run [`macro_kernel`] compiled with the target features it
/// needs.
///
/// # Safety
/// As [`DotBf16`].
pub(super) unsafe trait Kernel: DotBf16 {
    /// Runs [`macro_kernel`] compiled with the target features the primitive needs.
    ///
    /// # Safety
    /// As [`macro_kernel`].
    unsafe fn block(self, blk: &Block);
}

// SAFETY: needs no CPU feature.
#[cfg(test)]
unsafe impl Kernel for Emulated {
    unsafe fn block(self, blk: &Block) {
        // SAFETY: forwarded from the caller.
        unsafe { macro_kernel(self, blk) }
    }
}

// SAFETY: values of `Avx512Bf16` exist only on CPUs with its features.
#[cfg(target_arch = "x86_64")]
unsafe impl Kernel for Avx512Bf16 {
    unsafe fn block(self, blk: &Block) {
        // SAFETY: `self` proves the features `block_avx512` is compiled for; the rest is
        // forwarded from the caller.
        unsafe { block_avx512(self, blk) }
    }
}

#[cfg(target_arch = "x86_64")]
/// [`macro_kernel`] compiled for AVX-512 BF16, so that the inlined primitives become
/// single instructions.
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 BF16; as [`macro_kernel`].
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block_avx512(p: Avx512Bf16, blk: &Block) {
    // SAFETY: forwarded from the caller.
    unsafe { macro_kernel(p, blk) }
}

/// One `(row tile, column block, k block)` of the product, in packed form.
pub(super) struct Block {
    /// Packed A at the block's first pair: panel `ip` starts `ip * a_stride` further.
    a: *const u32,
    a_stride: usize,
    /// Packed B at the block's first panel and pair: panel `jp` starts `jp * b_stride` further.
    b: *const u32,
    b_stride: usize,
    /// Pairs of `k` in this block.
    kc: usize,
    /// Row and column micro-panels.
    m_panels: usize,
    n_panels: usize,
    /// Partial sums, row stride `ld`: micro-tile `(ip, jp)` at `ip * MR * ld + jp * NR`.
    acc: *mut f32,
    ld: usize,
    /// Add to the partial sums (later k blocks) instead of overwriting them.
    load: bool,
}

/// Every micro-tile of a block, column panel by column panel (a B micro-panel is reused from
/// L1 across the row panels).
///
/// # Safety
/// `blk` describes live, disjoint buffers: `m_panels` A panels and `n_panels` B panels of at
/// least `kc` pairs each at the given strides, and an `(m_panels * MR) x ld` f32 tile with
/// `ld >= n_panels * NR`; the CPU supports `p`'s features (guaranteed by `p` existing).
#[inline(always)]
unsafe fn macro_kernel<P: DotBf16>(p: P, blk: &Block) {
    for jp in 0..blk.n_panels {
        for ip in 0..blk.m_panels {
            // SAFETY: offsets stay inside the buffers the caller describes.
            unsafe {
                micro_kernel(
                    p,
                    blk.kc,
                    blk.a.add(ip * blk.a_stride),
                    blk.b.add(jp * blk.b_stride),
                    blk.acc.add(ip * MR * blk.ld + jp * NR),
                    blk.ld,
                    blk.load,
                );
            }
        }
    }
}

/// An `MR x NR` tile: `c (+)= sum over kc pairs` of broadcast A pairs times B pair vectors, in
/// `MR * NV` accumulators.
///
/// # Safety
/// `a` holds `kc * MR` pairs, `b` `kc * NR`; `c` is an `MR x NR` f32 tile of row stride `ldc`.
#[inline(always)]
unsafe fn micro_kernel<P: DotBf16>(
    p: P,
    kc: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    load: bool,
) {
    let mut acc = [[p.zero(); NV]; MR];
    // SAFETY (whole body): every offset is inside the extents the caller guarantees.
    unsafe {
        if load {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, x) in row.iter_mut().enumerate() {
                    *x = p.load_acc(c.add(r * ldc + 16 * v));
                }
            }
        }
        for s in 0..kc {
            let bs = b.add(s * NR);
            let mut bv = [p.splat_pair(0); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = p.load_pairs(bs.add(16 * v));
            }
            let as_ = a.add(s * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let av = p.splat_pair(*as_.add(r));
                for (x, &bvv) in row.iter_mut().zip(&bv) {
                    *x = p.dot(*x, bvv, av);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                p.store_acc(c.add(r * ldc + 16 * v), x);
            }
        }
    }
}

/// Packs `lines` lines of an operand, starting at line `l0`, into panels of `W` lines: element
/// `(l, kk)` sits at `src[l * ls + kk * ks]` (a line is a row of `op(A)` or a column of
/// `op(B)`), and `out[panel][p][w]` becomes the pair `(2p, 2p + 1)` of line `panel * W + w`,
/// low half first. Lines past `lines` and the element past an odd `k` are zero.
///
/// # Panics
/// If `src` does not hold every element addressed or `out` is shorter than the panels
/// (callers size both; indexing is checked).
fn pack<const W: usize>(
    src: &[u16],
    (ls, ks): (usize, usize),
    l0: usize,
    lines: usize,
    k: usize,
    out: &mut [u32],
) {
    let kp = k.div_ceil(2);
    let pair = |lo: u16, hi: u16| u32::from(lo) | (u32::from(hi) << 16);
    for (ip, panel) in out.chunks_mut(kp * W).take(lines.div_ceil(W)).enumerate() {
        let first = ip * W;
        let here = W.min(lines - first);
        if here < W {
            panel.fill(0);
        }
        if ks == 1 {
            // Contiguous along k (rows of A, or columns of a transposed B).
            for w in 0..here {
                let line = &src[(l0 + first + w) * ls..][..k];
                let mut dst = panel[w..].iter_mut().step_by(W);
                let pairs = line.chunks_exact(2);
                let odd = pairs.remainder().first().copied();
                // `pairs` first: zip stops without taking a slot from `dst`.
                for (two, d) in pairs.zip(dst.by_ref()) {
                    *d = pair(two[0], two[1]);
                }
                if let (Some(x), Some(d)) = (odd, dst.next()) {
                    *d = u32::from(x);
                }
            }
        } else if ls == 1 {
            // Contiguous along the lines (columns of B, or rows of a transposed A).
            let base = l0 + first;
            for (p, row) in panel.chunks_exact_mut(W).enumerate() {
                let even = &src[2 * p * ks + base..][..here];
                let row = &mut row[..here];
                if 2 * p + 1 < k {
                    let odd = &src[(2 * p + 1) * ks + base..][..here];
                    for ((d, &lo), &hi) in row.iter_mut().zip(even).zip(odd) {
                        *d = pair(lo, hi);
                    }
                } else {
                    for (d, &lo) in row.iter_mut().zip(even) {
                        *d = u32::from(lo);
                    }
                }
            }
        } else {
            // General strides: not produced by `Gemm`, kept for completeness.
            for (p, row) in panel.chunks_exact_mut(W).enumerate() {
                for (w, d) in row[..here].iter_mut().enumerate() {
                    let l = l0 + first + w;
                    let hi = if 2 * p + 1 < k {
                        src[l * ls + (2 * p + 1) * ks]
                    } else {
                        0
                    };
                    *d = pair(src[l * ls + 2 * p * ks], hi);
                }
            }
        }
    }
}

thread_local! {
    static PACK_A: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static PACK_B: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
    static TILE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static ROW: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of this thread's scratch vector `key` (contents unspecified).
/// The vector is taken out while `f` runs, so a nested use (rayon work stealing) gets a fresh
/// one instead of aliasing.
fn with_scratch<T: Copy + Default + 'static, R>(
    key: &'static LocalKey<Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    let mut v = key.take();
    if v.len() < len {
        v.resize(len, T::default());
    }
    let r = f(&mut v[..len]);
    if v.len() <= SCRATCH_KEEP {
        key.set(v);
    }
    r
}

/// Operand strides `(line stride, k stride)` of `op(A)` (lines: rows) and `op(B)` (lines:
/// columns).
fn strides(spec: &Gemm) -> ((usize, usize), (usize, usize)) {
    let Gemm { m, n, k, .. } = *spec;
    let a = if spec.trans_a { (1, m) } else { (k, 1) };
    let b = if spec.trans_b { (k, 1) } else { (1, n) };
    (a, b)
}

/// One product `C = alpha * op(A) op(B) + beta * C` with `A`, `B` BF16 starting at this batch
/// entry and `c` the `m * n` output elements (bytes of `dc`); row tiles run in parallel when
/// `parallel`.
///
/// # Panics
/// If an operand is shorter than the spec says (the caller checks every length first).
fn gemm_one<P: Kernel>(
    p: P,
    spec: &Gemm,
    a: &[u16],
    b: &[u16],
    c: &mut [u8],
    out: Out<'_>,
    parallel: bool,
) {
    let Gemm { m, n, k, .. } = *spec;
    let sc = out.dtype.size_in_bytes();
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n * sc,
        "bf16 gemm: operands shorter than m={m} n={n} k={k}"
    );
    let kp = k.div_ceil(2);
    let n_panels = n.div_ceil(NR);
    let (sa, sb) = strides(spec);
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let mc = (m.div_ceil(threads).div_ceil(MR) * MR).clamp(MR, MC_MAX);
    let c = &mut c[..m * n * sc];
    with_scratch(&PACK_B, n_panels * kp * NR, |pb| {
        let pack_b = |(jp, panel): (usize, &mut [u32])| {
            pack::<NR>(b, sb, jp * NR, NR.min(n - jp * NR), k, panel)
        };
        if parallel {
            pb.par_chunks_mut(kp * NR).enumerate().for_each(pack_b);
        } else {
            pb.chunks_mut(kp * NR).enumerate().for_each(pack_b);
        }
        let pb: &[u32] = pb;
        let tile = |(it, ct): (usize, &mut [u8])| {
            let i0 = it * mc;
            let rows = ct.len() / (n * sc);
            row_tile(p, spec, (a, sa), pb, (i0, rows), ct, out);
        };
        if parallel {
            c.par_chunks_mut(mc * n * sc).enumerate().for_each(tile);
        } else {
            c.chunks_mut(mc * n * sc).enumerate().for_each(tile);
        }
    });
}

/// Rows `i0 .. i0 + rows` of the product into `ct` (those rows of C, all `n` columns).
fn row_tile<P: Kernel>(
    p: P,
    spec: &Gemm,
    (a, sa): (&[u16], (usize, usize)),
    pb: &[u32],
    (i0, rows): (usize, usize),
    ct: &mut [u8],
    out: Out<'_>,
) {
    let Gemm { n, k, .. } = *spec;
    let kp = k.div_ceil(2);
    let m_panels = rows.div_ceil(MR);
    with_scratch(&PACK_A, m_panels * kp * MR, |pa| {
        pack::<MR>(a, sa, i0, rows, k, pa);
        with_scratch(&TILE, m_panels * MR * NC, |acc| {
            for j0 in (0..n).step_by(NC) {
                let cols = NC.min(n - j0);
                for p0 in (0..kp).step_by(KC) {
                    let blk = Block {
                        a: pa[p0 * MR..].as_ptr(),
                        a_stride: kp * MR,
                        b: pb[(j0 / NR) * kp * NR + p0 * NR..].as_ptr(),
                        b_stride: kp * NR,
                        kc: KC.min(kp - p0),
                        m_panels,
                        n_panels: cols.div_ceil(NR),
                        acc: acc.as_mut_ptr(),
                        ld: NC,
                        load: p0 > 0,
                    };
                    // SAFETY: `pa` holds `m_panels` panels of `kp` pairs (stride `kp * MR`)
                    // and the block starts at pair `p0` with `kc <= kp - p0` pairs; `pb`
                    // likewise for the column panels of this block; `acc` is
                    // `m_panels * MR` rows of `NC >= n_panels * NR` f32. None alias.
                    unsafe { p.block(&blk) };
                }
                epilogue(spec, acc, (rows, j0, cols), ct, out);
            }
        });
    });
}

/// `C[r, j0 + j] = alpha * acc[r, j] + beta * C[r, j0 + j] (+ bias[j0 + j])` for the tile's
/// `rows x cols`, in f32, rounded once to nearest even into `out.dtype` (C is not read when
/// `beta == 0`).
fn epilogue(
    spec: &Gemm,
    acc: &[f32],
    (rows, j0, cols): (usize, usize, usize),
    ct: &mut [u8],
    out: Out<'_>,
) {
    let (n, alpha, beta, dc) = (spec.n, spec.alpha, spec.beta, out.dtype);
    let sc = dc.size_in_bytes();
    let bias = out.bias.map(|b| &b[j0..j0 + cols]);
    let combine = |out: &mut [f32], acc: &[f32]| {
        if beta == 0.0 {
            out.iter_mut().zip(acc).for_each(|(o, &s)| *o = alpha * s);
        } else {
            out.iter_mut()
                .zip(acc)
                .for_each(|(o, &s)| *o = alpha * s + beta * *o);
        }
        if let Some(bias) = bias {
            out.iter_mut().zip(bias).for_each(|(o, &b)| *o += b);
        }
    };
    with_scratch(&ROW, cols, |tmp| {
        for r in 0..rows {
            let acc = &acc[r * NC..][..cols];
            let dst = &mut ct[(r * n + j0) * sc..][..cols * sc];
            if dc == DType::F32 {
                combine(as_f32_mut(dst), acc);
            } else {
                if beta != 0.0 {
                    widen(dc, dst, tmp);
                }
                combine(tmp, acc);
                narrow(dc, tmp, dst);
            }
        }
    });
}

/// The whole (validated) call: `batch` products of BF16 `a`, `b` (raw bytes, spans checked by
/// the caller) into `c` (bytes of `out.dtype`, plus `out.bias` per column), `alpha != 0`,
/// `k > 0`. Small batched products run one per thread, larger ones one after another with
/// parallel row tiles.
pub(super) fn gemm<P: Kernel>(
    p: P,
    spec: &Gemm,
    a: &[u8],
    b: &[u8],
    c: &mut [u8],
    out: Out<'_>,
    small_product: usize,
) {
    let a: &[u16] = bytemuck::cast_slice(a);
    let b: &[u16] = bytemuck::cast_slice(b);
    let Gemm { m, n, k, batch, .. } = *spec;
    let sc = out.dtype.size_in_bytes();
    let size_c = m * n;
    let a_at = |i: usize| &a[i * spec.stride_a..];
    let b_at = |i: usize| &b[i * spec.stride_b..];
    if batch > 1 && size_c.saturating_mul(k) <= small_product {
        c.par_chunks_mut((spec.stride_c * sc).max(1))
            .take(batch)
            .enumerate()
            .for_each(|(i, ci)| gemm_one(p, spec, a_at(i), b_at(i), ci, out, false));
    } else {
        for i in 0..batch {
            let ci = &mut c[i * spec.stride_c * sc..];
            gemm_one(p, spec, a_at(i), b_at(i), ci, out, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm_widened;
    use super::*;
    use crate::testing::random_vec;

    /// BF16 bits of `v` (nearest even).
    fn bf16_bits(v: &[f32]) -> Vec<u16> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect()
    }

    fn to_bytes(v: &[u16]) -> Vec<u8> {
        bytemuck::cast_slice(v).to_vec()
    }

    /// A product case: operands, the starting C (f32 values) and its spec.
    struct Case {
        spec: Gemm,
        a: Vec<u16>,
        b: Vec<u16>,
        c0: Vec<f32>,
    }

    fn case(spec: Gemm, seed: u64) -> Case {
        let Gemm { m, n, k, batch, .. } = spec;
        let span = |stride: usize, size: usize| (batch - 1) * stride + size;
        Case {
            a: bf16_bits(&random_vec(span(spec.stride_a, m * k), seed)),
            b: bf16_bits(&random_vec(span(spec.stride_b, k * n), seed + 1)),
            c0: random_vec(span(spec.stride_c, m * n), seed + 2),
            spec,
        }
    }

    /// C after the product, as f32, through `run` on bytes of `dc`.
    fn run_c(cs: &Case, dc: DType, run: impl FnOnce(&[u8], &[u8], &mut [u8])) -> Vec<f32> {
        let mut c = vec![0u8; cs.c0.len() * dc.size_in_bytes()];
        narrow(dc, &cs.c0, &mut c);
        run(&to_bytes(&cs.a), &to_bytes(&cs.b), &mut c);
        let mut out = vec![0.0; cs.c0.len()];
        widen(dc, &c, &mut out);
        out
    }

    fn ours<P: Kernel>(p: P, cs: &Case, dc: DType, small: usize) -> Vec<f32> {
        run_c(cs, dc, |a, b, c| {
            gemm(p, &cs.spec, a, b, c, Out::plain(dc), small)
        })
    }

    fn widened(cs: &Case, dc: DType) -> Vec<f32> {
        run_c(cs, dc, |a, b, c| {
            gemm_widened(&cs.spec, DType::BF16, a, b, Out::plain(dc), c);
        })
    }

    /// Element `(i, kk)` of `op(A)` and `(kk, j)` of `op(B)` of batch entry `bi`.
    fn elem(cs: &Case, bi: usize, i: usize, j: usize, kk: usize) -> (u16, u16) {
        let s = &cs.spec;
        let ((ar, ak), (bc, bk)) = strides(s);
        (
            cs.a[bi * s.stride_a + i * ar + kk * ak],
            cs.b[bi * s.stride_b + j * bc + kk * bk],
        )
    }

    /// The product by a plain triple loop over [`dp_lane`] in the driver's summation order,
    /// with the same epilogue: the driver must match it bit for bit.
    fn naive(cs: &Case, dc: DType) -> Vec<f32> {
        let s = &cs.spec;
        let mut c = vec![0u8; cs.c0.len() * dc.size_in_bytes()];
        narrow(dc, &cs.c0, &mut c);
        let mut old = vec![0.0; cs.c0.len()];
        widen(dc, &c, &mut old);
        let mut out = old.clone();
        for bi in 0..s.batch {
            for i in 0..s.m {
                for j in 0..s.n {
                    let mut acc = 0.0f32;
                    for kk in (0..s.k).step_by(2) {
                        let (a0, b0) = elem(cs, bi, i, j, kk);
                        let (a1, b1) = if kk + 1 < s.k {
                            elem(cs, bi, i, j, kk + 1)
                        } else {
                            (0, 0)
                        };
                        let pa = u32::from(a0) | u32::from(a1) << 16;
                        let pb = u32::from(b0) | u32::from(b1) << 16;
                        acc = dp_lane(acc, pa, pb);
                    }
                    let at = bi * s.stride_c + i * s.n + j;
                    out[at] = if s.beta == 0.0 {
                        s.alpha * acc
                    } else {
                        s.alpha * acc + s.beta * old[at]
                    };
                }
            }
        }
        let mut bytes = vec![0u8; out.len() * dc.size_in_bytes()];
        narrow(dc, &out, &mut bytes);
        widen(dc, &bytes, &mut out);
        out
    }

    /// Checks `got` against the f32 path `want`: within f32 reassociation error of
    /// `sum |alpha a b| + |beta c|` plus one rounding to `dc` (both round their f32 result).
    fn assert_close(cs: &Case, dc: DType, got: &[f32], want: &[f32], what: &str) {
        let s = &cs.spec;
        let ulp = match dc {
            DType::F32 => 0.0,
            DType::BF16 => 2f32.powi(-8),
            _ => 2f32.powi(-11),
        };
        let f = |h: u16| f32::from_bits(u32::from(h) << 16).abs();
        for bi in 0..s.batch {
            for i in 0..s.m {
                for j in 0..s.n {
                    let at = bi * s.stride_c + i * s.n + j;
                    let mag: f32 = (0..s.k)
                        .map(|kk| {
                            let (x, y) = elem(cs, bi, i, j, kk);
                            f(x) * f(y)
                        })
                        .sum::<f32>()
                        * s.alpha.abs()
                        + (s.beta * cs.c0[at]).abs();
                    let tol = 4.0 * (s.k as f32 + 4.0) * f32::EPSILON * mag
                        + 2.0 * ulp * want[at].abs().max(got[at].abs());
                    assert!(
                        (got[at] - want[at]).abs() <= tol,
                        "{what} {dc}: batch {bi} ({i}, {j}) of {:?}: {} vs f32 path {} (tol {tol})",
                        (s.m, s.n, s.k, s.trans_a, s.trans_b),
                        got[at],
                        want[at]
                    );
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Shapes covering ragged micro-tiles, odd k, several k blocks, column blocks and row
    /// tiles, single rows and columns.
    const SHAPES: [(usize, usize, usize); 12] = [
        (1, 1, 1),
        (1, 1, 2),
        (3, 5, 7),
        (12, 32, 2),
        (13, 33, 1),
        (25, 65, 3),
        (1, 513, 9),
        (130, 1, 33),
        (24, 64, 2 * KC + 1),
        (37, 300, 2 * KC + 2),
        (2 * MC_MAX + 5, 2 * NC + 40, 41),
        (64, 96, 128),
    ];

    fn specs() -> Vec<Gemm> {
        let mut out = Vec::new();
        for (si, &(m, n, k)) in SHAPES.iter().enumerate() {
            for t in 0..4 {
                let (alpha, beta) = [(1.0, 0.0), (0.5, 1.0), (-1.5, -0.75), (2.0, 0.0)][t];
                out.push(Gemm {
                    trans_a: t & 1 == 1,
                    trans_b: t & 2 == 2,
                    alpha,
                    beta,
                    ..Gemm::new(m, n, k)
                });
            }
            // Batched, with gaps between the batch entries (they must survive unchanged).
            if si % 3 == 0 {
                out.push(Gemm {
                    batch: 3,
                    trans_b: true,
                    beta: 1.0,
                    stride_a: m * k + 3,
                    stride_b: k * n,
                    stride_c: m * n + 5,
                    ..Gemm::new(m, n, k)
                });
            }
        }
        out
    }

    #[test]
    fn dp_lane_is_vdpbf16ps() {
        let one = 0x3f80u32;
        let two = 0x4000u32;
        // acc + hi*hi + lo*lo, hi first.
        assert_eq!(
            dp_lane(1.0, one | two << 16, two | two << 16),
            1.0 + 4.0 + 2.0
        );
        // Subnormal BF16 inputs read as zero.
        let sub = 0x0001u32;
        assert_eq!(dp_lane(0.0, sub, one), 0.0);
        assert_eq!(dp_lane(3.0, sub << 16, one << 16), 3.0);
        // A subnormal result is flushed (sign kept): 2^-100 * 2^-30 = 2^-130.
        let p100 = u32::from(half::bf16::from_f32(2f32.powi(-100)).to_bits());
        let p30 = u32::from(half::bf16::from_f32(-(2f32.powi(-30))).to_bits());
        let r = dp_lane(0.0, p100, p30);
        assert_eq!(r.to_bits(), (-0.0f32).to_bits());
        // Two roundings, hi first: 2^24 + 1 rounds to 2^24 (even) twice, where one rounding
        // of the whole sum would give 2^24 + 2.
        let big = 2f32.powi(24);
        let ones = one | one << 16;
        assert_eq!(dp_lane(big, ones, ones), big);
    }

    #[test]
    fn emulated_driver_matches_naive_bitwise_and_f32_path_closely() {
        for (ci, spec) in specs().into_iter().enumerate() {
            let cs = case(spec, 100 + ci as u64);
            for dc in [DType::F32, DType::BF16, DType::F16] {
                let got = ours(Emulated, &cs, dc, 0);
                assert_eq!(bits(&got), bits(&naive(&cs, dc)), "case {ci} {dc} vs naive");
                assert_close(&cs, dc, &got, &widened(&cs, dc), &format!("case {ci}"));
                // The batch-parallel mode (one product per thread) gives the same bits.
                if spec.batch > 1 {
                    let small = ours(Emulated, &cs, dc, usize::MAX);
                    assert_eq!(bits(&small), bits(&got), "case {ci} {dc}: batch-parallel");
                }
            }
        }
    }

    #[test]
    fn emulated_driver_large_product_matches_f32_path() {
        // Several row tiles, column blocks and k blocks at once, beta accumulating into BF16.
        let spec = Gemm {
            trans_b: true,
            beta: 1.0,
            ..Gemm::new(300, 2 * NC + NR + 3, 2 * KC * 2 + 17)
        };
        let cs = case(spec, 7);
        for dc in [DType::F32, DType::BF16] {
            let got = ours(Emulated, &cs, dc, 0);
            assert_close(&cs, dc, &got, &widened(&cs, dc), "large");
        }
    }

    #[test]
    fn bits_do_not_depend_on_thread_count() {
        // Row tiles shrink with more threads; each sum's order must not change.
        let spec = Gemm {
            trans_a: true,
            beta: 0.5,
            ..Gemm::new(2 * MC_MAX + 7, NC + 9, 2 * KC + 3)
        };
        let cs = case(spec, 11);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            pool.install(|| bits(&ours(Emulated, &cs, DType::BF16, 0)))
        };
        let one = on(1);
        for threads in [2, 3, 7] {
            assert_eq!(on(threads), one, "{threads} threads");
        }
    }

    #[test]
    fn packing_layout() {
        // 3 x 5 row-major A (lines = rows, contiguous along k) into panels of 4 lines.
        let a: Vec<u16> = (1..=15).collect();
        let mut out = vec![u32::MAX; 3 * 4];
        pack::<4>(&a, (5, 1), 0, 3, 5, &mut out);
        let p = |lo: u32, hi: u32| lo | hi << 16;
        let want = [
            [p(1, 2), p(6, 7), p(11, 12), 0],
            [p(3, 4), p(8, 9), p(13, 14), 0],
            [p(5, 0), p(10, 0), p(15, 0), 0],
        ];
        assert_eq!(out, want.concat());
        // The same operand stored transposed (5 x 3: contiguous along the lines).
        let at: Vec<u16> = (0..15).map(|x| a[(x % 3) * 5 + x / 3]).collect();
        let mut out_t = vec![u32::MAX; 3 * 4];
        pack::<4>(&at, (1, 3), 0, 3, 5, &mut out_t);
        assert_eq!(out_t, out);
    }

    #[test]
    fn special_values_propagate() {
        // An Inf in A gives Inf or NaN in its row only; a NaN in C with beta = 0 is ignored.
        let spec = Gemm::new(3, 40, 5);
        let mut cs = case(spec, 3);
        cs.a[5] = half::bf16::INFINITY.to_bits(); // row 1, k = 0
        cs.c0[0] = f32::NAN;
        let got = ours(Emulated, &cs, DType::F32, 0);
        let want = widened(&cs, DType::F32);
        for (g, w) in got.iter().zip(&want) {
            assert!(g.is_nan() == w.is_nan() && (g.is_infinite() == w.is_infinite()));
        }
        assert!(got[..40].iter().all(|x| x.is_finite()));
        assert!(got[40..80].iter().all(|x| !x.is_finite()));
    }

    #[test]
    fn avx512bf16_matches_emulation_bitwise() {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = Avx512Bf16::detect() {
            for (ci, spec) in specs().into_iter().enumerate() {
                let cs = case(spec, 500 + ci as u64);
                for dc in [DType::F32, DType::BF16] {
                    let hw = ours(p, &cs, dc, 0);
                    assert_eq!(
                        bits(&hw),
                        bits(&ours(Emulated, &cs, dc, 0)),
                        "case {ci} {dc}: vdpbf16ps differs from its emulation"
                    );
                    assert_close(&cs, dc, &hw, &widened(&cs, dc), &format!("hw case {ci}"));
                }
            }
            return;
        }
        eprintln!(
            "SKIPPED: avx512bf16_matches_emulation_bitwise: this CPU has no AVX-512 BF16; the \
             vdpbf16ps path is untested here"
        );
    }

    /// The bias in the epilogue (emulated primitive: any machine) equals the product without
    /// it plus the bias in f32, rounded once, across tile edges (n spans several `NC` blocks).
    #[test]
    fn the_epilogue_adds_the_bias_before_the_one_rounding() {
        let spec = Gemm {
            trans_b: true,
            ..Gemm::new(2 * MR + 5, NC + NR + 7, 2 * KC + 3)
        };
        let cs = case(spec, 900);
        let bias = random_vec(spec.n, 901);
        let with_bias = |dc: DType| {
            let out = Out {
                dtype: dc,
                bias: Some(&bias),
            };
            run_c(&cs, dc, |a, b, c| gemm(Emulated, &cs.spec, a, b, c, out, 0))
        };
        let mut want = ours(Emulated, &cs, DType::F32, 0);
        want.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += bias[i % spec.n]);
        for dc in [DType::F32, DType::BF16, DType::F16] {
            let mut rounded = vec![0u8; want.len() * dc.size_in_bytes()];
            narrow(dc, &want, &mut rounded);
            let mut want_dc = vec![0.0; want.len()];
            widen(dc, &rounded, &mut want_dc);
            assert_eq!(bits(&with_bias(dc)), bits(&want_dc), "{dc}");
        }
    }
}
