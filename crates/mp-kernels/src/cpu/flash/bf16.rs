//! The attention forward on BF16 pair dot products ([`DotBf16`]: `vdpbf16ps`, twice the f32
//! FMA rate) for BF16 `qkv`: the parent module's tiles, task split and online softmax, with
//! both products reading pairs of BF16 values. (A backward on the same primitive was measured
//! slower than the f32 one at head size 16: its `Pᵀ dO` and `dSᵀ Q` products become bound by
//! the loads and stores of the `dV`, `dK` rows, and their operands need a transposition.)
//!
//! **Layouts.** A product's reduction runs over pairs, so each operand is gathered once with
//! the pairs along its reduced dimension (`u32`: the even element in the low half):
//! - `S = Q Kᵀ` reduces over head elements: query rows as pairs of elements, keys as tiles
//!   `hs2 x BC` of element pairs (`hs2` = pairs per head row);
//! - `O += P V` reduces over keys: values as tiles `BC / 2 x hsp` of key pairs, the
//!   probabilities as pairs of keys.
//!
//! **Numerics.** `q` and `k` are BF16 already, so `S` is exact products summed in f32, as in
//! the f32 kernel up to the order; the scale `1 / sqrt(hs)` multiplies the f32 scores. `P` is
//! rounded to BF16 (nearest even) where it enters `P V`, as PyTorch's CPU flash attention does
//! for BF16; the softmax statistics, `lse` and the output accumulators stay f32 (the row sum
//! `l` is of the unrounded `P`).

use super::{BC, Dims, R, Tile, TileProducts, forward_tiles};
use crate::cpu::dot_bf16::DotBf16;

// The bodies below are inlined into functions compiled with the primitive's target features;
// they use plain loops, not closures: a closure does not inherit those features, and the
// primitive's instructions inside it would become calls.

/// Lanes of a [`DotBf16`] accumulator.
const L: usize = 16;
/// Pairs of keys per key tile.
const HB: usize = BC / 2;

/// Two BF16 values (bits) as one pair, `lo` in the low half.
#[inline(always)]
fn pair(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// Element `i` of BF16 bytes, as bits.
#[inline(always)]
fn elem(src: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([src[2 * i], src[2 * i + 1]])
}

/// Head columns `col..col + hs` of the first `rows` rows of BF16 `src` (rows of `row`
/// elements) as pairs of elements, `rows x hs2` (zero beyond `src`'s rows and the head).
pub(super) fn element_pairs(src: &[u8], d: &Dims, rows: usize, row: usize, col: usize) -> Vec<u32> {
    let hs2 = d.hs.div_ceil(2);
    let have = (src.len() / (2 * row)).min(rows);
    let mut out = vec![0u32; rows * hs2];
    for (i, o) in out.chunks_exact_mut(hs2).take(have).enumerate() {
        let at = 2 * (i * row + col);
        // whole pairs are the row's bytes read as little-endian u32; an odd head size ends in
        // a pair with a zero high half
        let whole = d.hs / 2;
        for (o, b) in o.iter_mut().zip(src[at..at + 4 * whole].chunks_exact(4)) {
            *o = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if d.hs % 2 == 1 {
            o[whole] = pair(elem(src, at / 2 + d.hs - 1), 0);
        }
    }
    out
}

/// The same columns as pairs of consecutive rows, `rows.div_ceil(2) x hsp` (row pair `ip`,
/// element `e`: rows `2 ip` and `2 ip + 1`).
fn row_pairs(src: &[u8], d: &Dims, rows: usize, row: usize, col: usize) -> Vec<u32> {
    let have = (src.len() / (2 * row)).min(rows);
    let mut out = vec![0u32; rows.div_ceil(2) * d.hsp];
    let hs = d.hs;
    for i in 0..have {
        let o = &mut out[(i / 2) * d.hsp..][..hs];
        let at = 2 * (i * row + col);
        let shift = 16 * (i % 2);
        for (o, b) in o.iter_mut().zip(src[at..at + 2 * hs].chunks_exact(2)) {
            *o |= u32::from(u16::from_le_bytes([b[0], b[1]])) << shift;
        }
    }
    out
}

/// One key or value head of one batch entry in the two layouts its products read.
pub(super) struct KvPairs {
    /// Tiles `hs2 x BC` of element pairs (`S = Q Kᵀ`, `dP = dO Vᵀ`).
    by_element: Vec<u32>,
    /// Tiles `HB x hsp` of key pairs (`O += P V`, `dQ += dS K`).
    by_key: Vec<u32>,
}

impl KvPairs {
    /// Head columns `col..col + hs` of the `t` rows of BF16 `src` (rows of `row` elements).
    pub(super) fn gather(src: &[u8], d: &Dims, col: usize) -> Self {
        let hs2 = d.hs.div_ceil(2);
        let rows = element_pairs(src, d, d.tp, d.row, col);
        let mut by_element = vec![0u32; d.tp * hs2];
        for (kb, tile) in by_element.chunks_exact_mut(hs2 * BC).enumerate() {
            for (j, r) in rows[kb * BC * hs2..][..BC * hs2]
                .chunks_exact(hs2)
                .enumerate()
            {
                for (pi, &x) in r.iter().enumerate() {
                    tile[pi * BC + j] = x;
                }
            }
        }
        KvPairs {
            by_element,
            by_key: row_pairs(src, d, d.tp, d.row, col),
        }
    }

    fn element_tile(&self, kb: usize, hs2: usize) -> &[u32] {
        &self.by_element[kb * hs2 * BC..(kb + 1) * hs2 * BC]
    }

    fn key_tile(&self, kb: usize, hsp: usize) -> &[u32] {
        &self.by_key[kb * HB * hsp..(kb + 1) * HB * hsp]
    }
}

/// 16 accumulators from `x[..16]`.
#[inline(always)]
fn load<P: DotBf16>(p: P, x: &[f32]) -> P::Acc {
    let x: &[f32; L] = x[..L].try_into().expect("16 lanes");
    // SAFETY: `x` is 16 readable f32.
    unsafe { p.load_acc(x.as_ptr()) }
}

/// 16 accumulators into `x[..16]`.
#[inline(always)]
fn store<P: DotBf16>(p: P, x: &mut [f32], v: P::Acc) {
    let x: &mut [f32; L] = (&mut x[..L]).try_into().expect("16 lanes");
    // SAFETY: `x` is 16 writable f32.
    unsafe { p.store_acc(x.as_mut_ptr(), v) }
}

/// 16 pairs from `x[..16]`.
#[inline(always)]
fn pairs<P: DotBf16>(p: P, x: &[u32]) -> P::Pairs {
    let x: &[u32; L] = x[..L].try_into().expect("16 lanes");
    // SAFETY: `x` is 16 readable u32.
    unsafe { p.load_pairs(x.as_ptr()) }
}

/// `s[r][j] = alpha * sum over pairs of x[r] tile[., j]` for [`R`] rows of element pairs `x`
/// (`hs2` apart) and the [`BC`] keys of an element-pair tile: the `R x BC` sums stay in
/// sixteen registers.
#[inline(always)]
fn rows_dot_tile<P: DotBf16>(p: P, x: &[u32], hs2: usize, tile: &[u32], alpha: f32, s: &mut Tile) {
    const NJ: usize = BC / L;
    let x = &x[..R * hs2];
    let mut acc = [[p.zero(); NJ]; R];
    for (pi, kp) in tile[..hs2 * BC].chunks_exact(BC).enumerate() {
        let mut kv = [p.splat_pair(0); NJ];
        for (jc, kv) in kv.iter_mut().enumerate() {
            *kv = pairs(p, &kp[jc * L..]);
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let a = p.splat_pair(x[r * hs2 + pi]);
            for (acc, &kv) in acc.iter_mut().zip(&kv) {
                *acc = p.dot(*acc, kv, a);
            }
        }
    }
    for (s, acc) in s.iter_mut().zip(&acc) {
        for (jc, &acc) in acc.iter().enumerate() {
            store(p, &mut s[jc * L..], acc);
        }
        if alpha != 1.0 {
            s.iter_mut().for_each(|x| *x *= alpha);
        }
    }
}

/// The rows of a tile rounded to BF16 as pairs of keys, `w[r][jp]` = keys `2 jp`, `2 jp + 1`.
#[inline(always)]
fn key_pairs<P: DotBf16>(p: P, s: &Tile) -> [[u32; HB]; R] {
    let mut w = [[0u32; HB]; R];
    for (w, row) in w.iter_mut().zip(s) {
        for (w, x) in w.chunks_exact_mut(L).zip(row.chunks_exact(2 * L)) {
            w.copy_from_slice(&p.narrow_pairs(x.try_into().expect("32 values")));
        }
    }
    w
}

/// `out[r][..] += sum_{jp < np} w[r][jp] m[jp][..]` for [`R`] rows of `out` (`hsp` apart)
/// and key-pair rows of `m` (`hsp` apart): `O += P V` and `dQ += dS K`. Even and odd pairs
/// go to two sets of accumulators (twice the independent chains), added at the end.
#[inline(always)]
fn pairs_times_rows<P: DotBf16>(
    p: P,
    w: &[[u32; HB]; R],
    np: usize,
    m: &[u32],
    hsp: usize,
    out: &mut [f32],
) {
    let np = np.div_ceil(2) * 2;
    let m = &m[..np * hsp];
    let out = &mut out[..R * hsp];
    for dc in (0..hsp).step_by(L) {
        let mut even = [p.zero(); R];
        for (r, even) in even.iter_mut().enumerate() {
            *even = load(p, &out[r * hsp + dc..]);
        }
        let mut odd = [p.zero(); R];
        for (jp, m2) in m.chunks_exact(2 * hsp).enumerate() {
            let (v0, v1) = (pairs(p, &m2[dc..]), pairs(p, &m2[hsp + dc..]));
            for r in 0..R {
                even[r] = p.dot(even[r], v0, p.splat_pair(w[r][2 * jp]));
                odd[r] = p.dot(odd[r], v1, p.splat_pair(w[r][2 * jp + 1]));
            }
        }
        let mut tmp = [0.0f32; L];
        for r in 0..R {
            let o = &mut out[r * hsp + dc..][..L];
            store(p, o, even[r]);
            store(p, &mut tmp, odd[r]);
            o.iter_mut().zip(&tmp).for_each(|(o, t)| *o += t);
        }
    }
}

/// One forward task's pair products: its queries as element pairs (`hs2` per row, unscaled)
/// against its key/value head.
pub(super) struct PairTiles<'a, P> {
    pub(super) p: P,
    pub(super) d: &'a Dims,
    pub(super) q: &'a [u32],
    pub(super) k: &'a KvPairs,
    pub(super) v: &'a KvPairs,
}

impl<P: DotBf16> TileProducts for PairTiles<'_, P> {
    #[inline(always)]
    fn scores(&self, g: usize, kb: usize, s: &mut Tile) {
        let hs2 = self.d.hs.div_ceil(2);
        let (q, k) = (&self.q[g * R * hs2..], self.k.element_tile(kb, hs2));
        rows_dot_tile(self.p, q, hs2, k, self.d.scale, s);
    }
    #[inline(always)]
    fn accumulate(&self, s: &Tile, n: usize, kb: usize, o: &mut [f32]) {
        let hsp = self.d.hsp;
        let w = key_pairs(self.p, s);
        pairs_times_rows(self.p, &w, n.div_ceil(2), self.v.key_tile(kb, hsp), hsp, o);
    }
}

/// A [`DotBf16`] primitive that runs a forward task compiled with the features it needs (the
/// default: none needed).
pub(super) trait Kernels: DotBf16 {
    /// One forward task (as the parent's `forward_block`): query rows `i0..` of `tiles`,
    /// writing `o` and `lse`.
    fn forward_block(tiles: &PairTiles<'_, Self>, i0: usize, o: &mut [f32], lse: &mut [f32]) {
        forward_tiles::<true, _>(tiles, tiles.d, i0, o, lse);
    }
}

#[cfg(test)]
impl Kernels for crate::cpu::dot_bf16::Emulated {}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::cpu::dot_bf16::Avx512Bf16;

    /// The forward task compiled for AVX-512 BF16 (AVX-512F brings FMA, which the softmax
    /// uses).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn forward_avx512(
        tiles: &PairTiles<'_, Avx512Bf16>,
        i0: usize,
        o: &mut [f32],
        lse: &mut [f32],
    ) {
        forward_tiles::<true, _>(tiles, tiles.d, i0, o, lse);
    }

    impl Kernels for Avx512Bf16 {
        fn forward_block(tiles: &PairTiles<'_, Self>, i0: usize, o: &mut [f32], lse: &mut [f32]) {
            // SAFETY: `tiles.p` proves AVX-512F and AVX-512 BF16.
            unsafe { forward_avx512(tiles, i0, o, lse) }
        }
    }
}

/// The native primitive, when this CPU has AVX-512 BF16 and `MP_CPU_BF16_ATTENTION` is not
/// `f32`.
#[cfg(target_arch = "x86_64")]
pub(super) fn native() -> Option<crate::cpu::dot_bf16::Avx512Bf16> {
    use std::sync::OnceLock;
    static NATIVE: OnceLock<Option<crate::cpu::dot_bf16::Avx512Bf16>> = OnceLock::new();
    *NATIVE.get_or_init(|| {
        let off = std::env::var("MP_CPU_BF16_ATTENTION").is_ok_and(|v| v == "f32");
        crate::cpu::dot_bf16::Avx512Bf16::detect().filter(|_| !off)
    })
}

#[cfg(test)]
mod tests {
    use super::super::{Dims, R, forward_f32, forward_pairs};
    use crate::backend::Attention;
    use crate::cpu::dot_bf16::Emulated;
    use crate::testing::random_vec;
    use mp_dtype::DType;

    /// Shapes with partial tiles and micro-tiles, grouped queries and an odd head size.
    fn cases() -> Vec<Attention> {
        let gqa = |b, t, c, heads, kv_heads| Attention {
            kv_heads,
            ..Attention::mha(b, t, c, heads)
        };
        vec![
            Attention::mha(2, 150, 64, 4),
            gqa(1, 97, 48, 4, 2),
            gqa(2, 70, 36, 4, 1),
            Attention::mha(1, 1, 16, 1),
        ]
    }

    /// BF16 bytes of random `qkv` (scaled so that the softmax is far from uniform).
    fn qkv(s: &Attention, seed: u64) -> Vec<u8> {
        random_vec(s.b * s.t * s.qkv_row(), seed)
            .iter()
            .flat_map(|&x| half::bf16::from_f32(3.0 * x).to_le_bytes())
            .collect()
    }

    /// The head-major f32 output and `lse` of one forward path.
    fn run(s: &Attention, qkv: &[u8], pairs: Option<impl super::Kernels>) -> (Vec<f32>, Vec<f32>) {
        let d = Dims::new(s);
        let tq = s.t.div_ceil(R) * R;
        let mut o = vec![0.0f32; s.b * s.heads * tq * d.hsp];
        let mut lse = vec![0.0f32; s.lse_len()];
        match pairs {
            Some(p) => forward_pairs(p, qkv, &d, s, tq, &mut o, &mut lse),
            None => forward_f32(qkv, DType::BF16, &d, s, tq, &mut o, &mut lse),
        }
        (o, lse)
    }

    fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
        let (mut e, mut n) = (0.0f64, 0.0f64);
        for (&g, &w) in got.iter().zip(want) {
            e += (f64::from(g) - f64::from(w)).powi(2);
            n += f64::from(w).powi(2);
        }
        (e / n.max(f64::MIN_POSITIVE)).sqrt()
    }

    /// The pair-product forward (emulated: any machine) against the f32 kernel: the same
    /// `lse` up to summation order, and outputs within the rounding of `P` to BF16.
    #[test]
    fn pair_forward_matches_the_f32_kernel() {
        for (i, s) in cases().iter().enumerate() {
            let qkv = qkv(s, 40 + i as u64);
            let (o, lse) = run(s, &qkv, Some(Emulated));
            let (o32, lse32) = run(s, &qkv, None::<Emulated>);
            let worst = lse
                .iter()
                .zip(&lse32)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "case {i}: lse differs by {worst}");
            let err = rel_l2(&o, &o32);
            assert!(err < 2e-3, "case {i}: output relative error {err}");
            // one key: P = 1 exactly, nothing to round
            assert!(s.t == 1 || err > 0.0, "case {i}: P was not rounded");
            eprintln!("case {i}: output relative error {err:.2e}, lse {worst:.1e}");
        }
    }

    /// `vdpbf16ps` and `vcvtne2ps2bf16` give the same bits as their emulation.
    #[test]
    fn native_pair_forward_equals_its_emulation_bitwise() {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = super::native() {
            for (i, s) in cases().iter().enumerate() {
                let qkv = qkv(s, 60 + i as u64);
                let (o, lse) = run(s, &qkv, Some(p));
                let (oe, lsee) = run(s, &qkv, Some(Emulated));
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&o), bits(&oe), "case {i}: output");
                assert_eq!(bits(&lse), bits(&lsee), "case {i}: lse");
            }
            return;
        }
        eprintln!(
            "SKIPPED: native_pair_forward_equals_its_emulation_bitwise: this CPU has no \
             AVX-512 BF16; the vdpbf16ps attention path is untested here"
        );
    }
}
