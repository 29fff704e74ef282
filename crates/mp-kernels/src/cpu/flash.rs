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
//! The inputs are widened once into f32 scratch laid out for the inner loops: queries
//! pre-scaled by `1 / sqrt(hs)`, every row padded with zeros to a multiple of [`W`] elements
//! (and the rows to whole micro-tiles), keys and values also as [`BC`]-key tiles of
//! `hs x BC`; the scratch is O(b t width). The inner loops are register-blocked micro-kernels
//! over [`R`] query rows and [`W`] keys or head elements at a time, compiled again for AVX2 and
//! for AVX-512 with fused multiply-adds (`fma_dispatch`). Their summation order is fixed, so
//! results do not depend on the thread count or the vector width; CPUs with and without FMA
//! units round the products differently (one rounding instead of two).

use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{narrow, widen, with_f32_mut};
use super::math::{exp_with as exp, fma_dispatch};
use super::reduce::dot;
use crate::Result;
use crate::backend::{Attention, View, ViewMut};
use mp_dtype::DType;
use rayon::prelude::*;

mod bf16;

/// Query rows per forward task.
pub(crate) const BR: usize = 64;
/// Keys per tile.
pub(crate) const BC: usize = 64;
/// Query rows per micro-tile (divides [`BR`] and [`BC`]).
const R: usize = 4;
/// Keys, or head elements, per register block (divides [`BC`]).
const W: usize = 16;

/// The sizes every loop needs.
#[derive(Clone, Copy)]
struct Dims {
    t: usize,
    /// `t` rounded up to whole key tiles.
    tp: usize,
    hs: usize,
    /// `hs` rounded up to whole register blocks: the row length of the f32 scratch.
    hsp: usize,
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
            hsp: hs.div_ceil(W) * W,
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

/// One key or value head of one batch entry in f32: rows `tp x hsp` (zero-padded), and the
/// same as tiles `(tp / BC) x hs x BC` (tile `kb`, element `(d, j)` is row `kb BC + j`,
/// column `d`).
struct KvHead {
    rows: Vec<f32>,
    tiles: Vec<f32>,
}

impl KvHead {
    /// Head columns `col..col + hs` of the `t` rows of `src` (rows of `row` elements of `dt`).
    fn gather(src: &[u8], dt: DType, d: &Dims, col: usize) -> Self {
        let rows = gather_rows(src, dt, d, d.tp, d.row, col, 1.0);
        let (hs, hsp) = (d.hs, d.hsp);
        let mut tiles = vec![0.0f32; d.tp * hs];
        for (kb, tile) in tiles.chunks_exact_mut(hs * BC).enumerate() {
            let block = &rows[kb * BC * hsp..(kb + 1) * BC * hsp];
            for (j, r) in block.chunks_exact(hsp).enumerate() {
                for (dd, &x) in r[..hs].iter().enumerate() {
                    tile[dd * BC + j] = x;
                }
            }
        }
        KvHead { rows, tiles }
    }

    fn tile(&self, kb: usize, hs: usize) -> &[f32] {
        &self.tiles[kb * hs * BC..(kb + 1) * hs * BC]
    }

    /// Rows `kb BC..(kb + 1) BC`.
    fn block(&self, kb: usize, hsp: usize) -> &[f32] {
        &self.rows[kb * BC * hsp..(kb + 1) * BC * hsp]
    }
}

/// A micro-tile of scores: [`R`] rows of one key tile.
type Tile = [[f32; BC]; R];

/// A register block of [`W`] lanes: one AVX-512 register, two AVX2 registers (LLVM keeps
/// these in registers when every index is a constant).
type V = [f32; W];

/// `acc + w * x`, lane by lane: fused (one rounding) when `F`, the copies compiled for FMA
/// units, else a multiply and an add.
#[inline(always)]
fn madd<const F: bool>(acc: V, w: f32, x: &V) -> V {
    let mut o = acc;
    for i in 0..W {
        o[i] = if F {
            w.mul_add(x[i], o[i])
        } else {
            o[i] + w * x[i]
        };
    }
    o
}

/// The [`R`] = 4 rows of a micro-tile, each `len` elements of `x` (rows `hsp` apart).
#[inline(always)]
fn rows4(x: &[f32], hsp: usize, len: usize) -> [&[f32]; R] {
    [0, 1, 2, 3].map(|r| &x[r * hsp..r * hsp + len])
}

/// `x[at..at + W]` as a block.
#[inline(always)]
fn block(x: &[f32], at: usize) -> &V {
    x[at..at + W].try_into().expect("a whole block")
}

/// `x[at..at + W]` as a mutable block.
#[inline(always)]
fn block_mut(x: &mut [f32], at: usize) -> &mut V {
    (&mut x[at..at + W]).try_into().expect("a whole block")
}

/// `s[r][j] = sum_{d < hs} x[r][d] tile[d][j]` for [`R`] rows of `x` (`hsp` apart) and the
/// [`BC`] keys of `tile`: per [`W`] keys, the `R x W` sums stay in registers.
#[inline(always)]
fn rows_dot_tile<const F: bool>(x: &[f32], hsp: usize, hs: usize, tile: &[f32], s: &mut Tile) {
    const { assert!(R == 4) };
    let [x0, x1, x2, x3] = rows4(x, hsp, hs);
    let tile = &tile[..hs * BC];
    for jc in (0..BC).step_by(W) {
        let mut acc = [[0.0f32; W]; R];
        let cols = x0.iter().zip(x1).zip(x2).zip(x3);
        for ((((&a, &b), &c), &e), krow) in cols.zip(tile.chunks_exact(BC)) {
            let k = block(krow, jc);
            for (r, xd) in [a, b, c, e].into_iter().enumerate() {
                acc[r] = madd::<F>(acc[r], xd, k);
            }
        }
        for (s, acc) in s.iter_mut().zip(&acc) {
            *block_mut(s, jc) = *acc;
        }
    }
}

/// `out[r][..] += sum_{j < n} w[r][j] m[j][..]` for [`R`] rows of `out` and rows of `m`
/// (both `hsp` apart): `P V` and `dS K`.
#[inline(always)]
fn tile_times_rows<const F: bool>(w: &Tile, n: usize, m: &[f32], hsp: usize, out: &mut [f32]) {
    let out = &mut out[..R * hsp];
    let m = &m[..n * hsp];
    let [w0, w1, w2, w3] = [0, 1, 2, 3].map(|r| &w[r][..n]);
    for dc in (0..hsp).step_by(W) {
        let mut acc: [V; R] = std::array::from_fn(|r| *block(out, r * hsp + dc));
        let ws = w0.iter().zip(w1).zip(w2).zip(w3);
        for ((((&a, &b), &c), &e), mrow) in ws.zip(m.chunks_exact(hsp)) {
            let v = block(mrow, dc);
            for (r, wj) in [a, b, c, e].into_iter().enumerate() {
                acc[r] = madd::<F>(acc[r], wj, v);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            *block_mut(out, r * hsp + dc) = *acc;
        }
    }
}

/// `m[j][..] += sum_r w[r][j] x[r][..]` for `j < n`, [`R`] rows of `x` (both `hsp` apart):
/// `dV += Pᵀ dO` and `dK += dSᵀ Q`.
#[inline(always)]
fn tile_t_times_rows<const F: bool>(w: &Tile, n: usize, x: &[f32], hsp: usize, m: &mut [f32]) {
    let x = &x[..R * hsp];
    let m = &mut m[..n * hsp];
    let [w0, w1, w2, w3] = [0, 1, 2, 3].map(|r| &w[r][..n]);
    for dc in (0..hsp).step_by(W) {
        let xs: [V; R] = std::array::from_fn(|r| *block(x, r * hsp + dc));
        let ws = w0.iter().zip(w1).zip(w2).zip(w3);
        for ((((&a, &b), &c), &e), mrow) in ws.zip(m.chunks_exact_mut(hsp)) {
            let row = block_mut(mrow, dc);
            let mut acc = *row;
            for (r, wj) in [a, b, c, e].into_iter().enumerate() {
                acc = madd::<F>(acc, wj, &xs[r]);
            }
            *row = acc;
        }
    }
}

/// `f` folded over a tile row: lane-wise over its register blocks, then as a tree over the
/// lanes (a fixed order). The forward's row maximum passes over NaN (`b > a` is false), which
/// still reaches the output through `e^(s - m)` and the row sum.
#[inline(always)]
fn fold_row(s: &[f32; BC], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = *block(s, 0);
    for jc in (W..BC).step_by(W) {
        let x = block(s, jc);
        for i in 0..W {
            acc[i] = f(acc[i], x[i]);
        }
    }
    let mut half = W / 2;
    while half > 0 {
        for i in 0..half {
            acc[i] = f(acc[i], acc[i + half]);
        }
        half /= 2;
    }
    acc[0]
}

/// One step of the online softmax for one query row and one key tile: the row's scores `s`
/// (the first `vis` keys visible) become `e^(s - m_new)` (exactly 0 for the masked keys), the
/// running maximum `m` becomes `m_new` and the running sum `l` is rescaled and extended.
/// Returns the rescaling `e^(m_old - m_new)` of everything accumulated so far.
#[inline(always)]
fn online_softmax<const F: bool>(s: &mut [f32; BC], vis: usize, m: &mut f32, l: &mut f32) -> f32 {
    // masked keys get -inf, so e^(s - m) is exactly 0 there; every loop below then runs over
    // the whole tile and vectorises
    s[vis..].fill(f32::NEG_INFINITY);
    let m_new = m.max(fold_row(s, |a, b| if b > a { b } else { a }));
    let corr = exp::<F>(*m - m_new);
    s.iter_mut().for_each(|x| *x = exp::<F>(*x - m_new));
    *l = *l * corr + fold_row(s, |a, b| a + b);
    *m = m_new;
    corr
}

/// Keys of tile `kb` that query row `i` sees (`i >= kb BC`).
#[inline(always)]
fn visible(i: usize, kb: usize) -> usize {
    (i + 1 - kb * BC).min(BC)
}

fma_dispatch! {
    /// One forward task: query rows `i0..i0 + lse.len()` of one head (`q` pre-scaled, rows of
    /// `hsp`, padded to whole micro-tiles) against its key/value head; writes `o` (rows of
    /// `hsp`, as many as `q`) and `lse`.
    fn forward_block => forward_body(d: &Dims, i0: usize, q: &[f32], k: &KvHead, v: &KvHead, o: &mut [f32], lse: &mut [f32])
}

/// The two products of the forward, for query micro-tile `g` of a task against key tile `kb`:
/// what [`forward_tiles`] needs besides the online softmax.
trait TileProducts {
    /// `s[r][j]`: the scaled scores of the micro-tile's [`R`] rows against the tile's keys.
    fn scores(&self, g: usize, kb: usize, s: &mut Tile);
    /// `o[r][..] += sum_{j < n} s[r][j] v[kb BC + j][..]` for the [`R`] rows of `o` (rows of
    /// `hsp`).
    fn accumulate(&self, s: &Tile, n: usize, kb: usize, o: &mut [f32]);
}

/// One forward task over its query micro-tiles (`o`: their rows of `hsp`, zeroed here):
/// FlashAttention-2's loop over the key tiles up to the diagonal with an online softmax,
/// writing `o / l` and `lse = m + ln l` (for the task's `lse.len()` real rows).
#[inline(always)]
fn forward_tiles<const F: bool, K: TileProducts>(
    k: &K,
    d: &Dims,
    i0: usize,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let hsp = d.hsp;
    let mut s: Tile = [[0.0; BC]; R];
    o.fill(0.0);
    for (g, o) in o.chunks_exact_mut(R * hsp).enumerate() {
        let first = i0 + g * R;
        let (mut m, mut l) = ([f32::NEG_INFINITY; R], [0.0f32; R]);
        for kb in 0..=first / BC {
            k.scores(g, kb, &mut s);
            for (r, s) in s.iter_mut().enumerate() {
                let corr = online_softmax::<F>(s, visible(first + r, kb), &mut m[r], &mut l[r]);
                if corr != 1.0 {
                    o[r * hsp..(r + 1) * hsp]
                        .iter_mut()
                        .for_each(|x| *x *= corr);
                }
            }
            k.accumulate(&s, visible(first + R - 1, kb), kb, o);
        }
        for r in 0..R {
            let inv = 1.0 / l[r];
            o[r * hsp..(r + 1) * hsp].iter_mut().for_each(|x| *x *= inv);
            if let Some(lse) = lse.get_mut(g * R + r) {
                *lse = m[r] + l[r].ln();
            }
        }
    }
}

/// The f32 products: pre-scaled queries (rows of `hsp`) against a key/value head.
struct F32Tiles<'a, const F: bool> {
    d: &'a Dims,
    q: &'a [f32],
    k: &'a KvHead,
    v: &'a KvHead,
}

impl<const F: bool> TileProducts for F32Tiles<'_, F> {
    #[inline(always)]
    fn scores(&self, g: usize, kb: usize, s: &mut Tile) {
        let (hs, hsp) = (self.d.hs, self.d.hsp);
        rows_dot_tile::<F>(&self.q[g * R * hsp..], hsp, hs, self.k.tile(kb, hs), s);
    }
    #[inline(always)]
    fn accumulate(&self, s: &Tile, n: usize, kb: usize, o: &mut [f32]) {
        let hsp = self.d.hsp;
        tile_times_rows::<F>(s, n, self.v.block(kb, hsp), hsp, o);
    }
}

#[inline(always)]
fn forward_body<const F: bool>(
    d: &Dims,
    i0: usize,
    q: &[f32],
    k: &KvHead,
    v: &KvHead,
    o: &mut [f32],
    lse: &mut [f32],
) {
    forward_tiles::<F, _>(&F32Tiles::<F> { d, q, k, v }, d, i0, o, lse);
}

/// What the backward of one query head reads, each `t` rows padded to whole micro-tiles (of
/// `hsp` elements): its pre-scaled queries, upstream gradient (zero in the padding, so padded
/// rows contribute nothing), `lse` and `D = rowsum(dO ∘ O)`.
struct QueryHead {
    q: Vec<f32>,
    dout: Vec<f32>,
    lse: Vec<f32>,
    delta: Vec<f32>,
}

fma_dispatch! {
    /// The backward of one query head against its key/value head: `dq += dS K` (unscaled),
    /// `dk += dSᵀ Q` (the queries pre-scaled), `dv += Pᵀ dO`; rows of `hsp` (`dq` as many as
    /// the query rows, `dk` and `dv` `tp`).
    fn backward_head => backward_body(d: &Dims, qh: &QueryHead, k: &KvHead, v: &KvHead, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32])
}

#[inline(always)]
fn backward_body<const F: bool>(
    d: &Dims,
    qh: &QueryHead,
    k: &KvHead,
    v: &KvHead,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (hs, hsp) = (d.hs, d.hsp);
    let (mut p, mut ds): (Tile, Tile) = ([[0.0; BC]; R], [[0.0; BC]; R]);
    let groups = qh.lse.len() / R;
    for kb in 0..d.t.div_ceil(BC) {
        let (ktile, vtile, krows) = (k.tile(kb, hs), v.tile(kb, hs), k.block(kb, hsp));
        let dk = &mut dk[kb * BC * hsp..(kb + 1) * BC * hsp];
        let dv = &mut dv[kb * BC * hsp..(kb + 1) * BC * hsp];
        for g in kb * BC / R..groups {
            let (first, at) = (g * R, g * R * hsp);
            let (q, go) = (&qh.q[at..at + R * hsp], &qh.dout[at..at + R * hsp]);
            rows_dot_tile::<F>(q, hsp, hs, ktile, &mut p);
            rows_dot_tile::<F>(go, hsp, hs, vtile, &mut ds);
            for r in 0..R {
                let vis = visible(first + r, kb);
                let (lse, delta) = (qh.lse[first + r], qh.delta[first + r]);
                for (j, (p, ds)) in p[r].iter_mut().zip(ds[r].iter_mut()).enumerate() {
                    let pj = if j < vis { exp::<F>(*p - lse) } else { 0.0 };
                    *p = pj;
                    *ds = pj * (*ds - delta);
                }
            }
            let n = visible(first + R - 1, kb);
            tile_t_times_rows::<F>(&p, n, go, hsp, dv);
            tile_t_times_rows::<F>(&ds, n, q, hsp, dk);
            tile_times_rows::<F>(&ds, n, krows, hsp, &mut dq[at..at + R * hsp]);
        }
    }
}

/// Head columns `col..col + hs` of the first rows of `src` (rows of `row` elements of `dt`),
/// times `alpha`, as `rows x hsp` f32, zero beyond the `min(rows, t)` rows of `src` and the
/// `hs` columns.
#[allow(clippy::too_many_arguments)]
fn gather_rows(
    src: &[u8],
    dt: DType,
    d: &Dims,
    rows: usize,
    row: usize,
    col: usize,
    alpha: f32,
) -> Vec<f32> {
    let (hs, es) = (d.hs, dt.size_in_bytes());
    let have = (src.len() / (row * es)).min(rows);
    let mut out = vec![0.0f32; rows * d.hsp];
    for (i, r) in out.chunks_exact_mut(d.hsp).take(have).enumerate() {
        let at = (i * row + col) * es;
        let r = &mut r[..hs];
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

/// The forward tasks, one per (batch entry, query head, block of [`BR`] query rows): each
/// writes its rows of the head-major output `o` (`tq` rows of `hsp` per head) and of `lse`.
/// `run(task rows, i0, batch entry, head, o, lse)` computes one.
fn forward_tasks(
    d: &Dims,
    s: &Attention,
    tq: usize,
    o: &mut [f32],
    lse: &mut [f32],
    run: impl Fn(usize, usize, usize, usize, &mut [f32], &mut [f32]) + Sync,
) {
    let blocks = d.t.div_ceil(BR);
    let tasks: Vec<(&mut [f32], &mut [f32])> = o
        .chunks_mut(tq * d.hsp)
        .zip(lse.chunks_mut(d.t))
        .flat_map(|(o, l)| o.chunks_mut(BR * d.hsp).zip(l.chunks_mut(BR)))
        .collect();
    tasks
        .into_par_iter()
        .enumerate()
        .for_each(|(task, (o, l))| {
            let (nh, qb) = (task / blocks, task % blocks);
            let (n, h) = (nh / s.heads, nh % s.heads);
            run(o.len() / d.hsp, qb * BR, n, h, o, l);
        });
}

/// The forward with f32 products (any `qkv` dtype).
fn forward_f32(
    qkv: &[u8],
    dt: DType,
    d: &Dims,
    s: &Attention,
    tq: usize,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (sq, g) = (dt.size_in_bytes(), s.group());
    let kv = kv_heads(qkv, dt, d, s.b);
    forward_tasks(d, s, tq, o, lse, |rows, i0, n, h, o, l| {
        let at = (n * d.t + i0) * d.row * sq;
        let src = &qkv[at..(n + 1) * d.t * d.row * sq];
        let q = gather_rows(src, dt, d, rows, d.row, h * d.hs, d.scale);
        let (k, v) = &kv[n * d.kv_heads + h / g];
        forward_block(d, i0, &q, k, v, o, l);
    });
}

/// The forward with BF16 pair products (`qkv` BF16).
fn forward_pairs<P: bf16::Kernels>(
    p: P,
    qkv: &[u8],
    d: &Dims,
    s: &Attention,
    tq: usize,
    o: &mut [f32],
    lse: &mut [f32],
) {
    let (stride, g) = (d.t * d.row * 2, s.group());
    let kv: Vec<(bf16::KvPairs, bf16::KvPairs)> = (0..s.b * d.kv_heads)
        .into_par_iter()
        .map(|nk| {
            let (n, kvh) = (nk / d.kv_heads, nk % d.kv_heads);
            let src = &qkv[n * stride..(n + 1) * stride];
            (
                bf16::KvPairs::gather(src, d, d.kv_col(1, kvh)),
                bf16::KvPairs::gather(src, d, d.kv_col(2, kvh)),
            )
        })
        .collect();
    forward_tasks(d, s, tq, o, lse, |rows, i0, n, h, o, l| {
        let src = &qkv[(n * d.t + i0) * d.row * 2..(n + 1) * stride];
        let q = bf16::element_pairs(src, d, rows, d.row, h * d.hs);
        let (k, v) = &kv[n * d.kv_heads + h / g];
        let tiles = bf16::PairTiles { p, d, q: &q, k, v };
        P::forward_block(&tiles, i0, o, l);
    });
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
    let so = dout.size_in_bytes();
    let qkv = bytes(OP, "qkv", qkv)?;
    let out = bytes_mut(OP, "out", out)?;
    let lse = super::convert::as_f32_mut(bytes_mut(OP, "lse", lse)?);
    let (t, hs, hsp) = (d.t, d.hs, d.hsp);
    // head-major f32 output (rows of hsp, t padded to whole micro-tiles), one chunk per task
    let tq = t.div_ceil(R) * R;
    let mut o = vec![0.0f32; s.b * d.heads * tq * hsp];
    #[cfg(target_arch = "x86_64")]
    let paired = bf16::native()
        .filter(|_| dq == DType::BF16)
        .map(|p| forward_pairs(p, qkv, &d, s, tq, &mut o, lse))
        .is_some();
    #[cfg(not(target_arch = "x86_64"))]
    let paired = false;
    if !paired {
        forward_f32(qkv, dq, &d, s, tq, &mut o, lse);
    }
    // token-major rows of the output
    out.par_chunks_mut(t * d.c * so)
        .zip(o.par_chunks(d.heads * tq * hsp))
        .for_each(|(out_b, o_b)| {
            let mut row = vec![0.0f32; d.c];
            for (i, orow) in out_b.chunks_exact_mut(d.c * so).enumerate() {
                for (h, r) in row.chunks_exact_mut(hs).enumerate() {
                    let at = (h * tq + i) * hsp;
                    r.copy_from_slice(&o_b[at..at + hs]);
                }
                narrow(dout, &row, orow);
            }
        });
    Ok(())
}
/// The backward's inputs: bytes and dtypes of `qkv`, `dout` and `out`, and `lse`.
struct Backward<'a> {
    d: &'a Dims,
    s: &'a Attention,
    /// `t` padded to whole micro-tiles.
    tq: usize,
    qkv: (&'a [u8], DType),
    dout: (&'a [u8], DType),
    out: (&'a [u8], DType),
    lse: &'a [f32],
}

/// The f32 gradients `(dq, dk, dv)` of each (batch entry, key/value head): rows of `hsp`,
/// `dq` for the group's query heads (`tq` rows each).
type Grads = Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>;

impl Backward<'_> {
    /// Batch entry `n`'s rows of `x` (rows of `row` elements).
    fn entry<'b>(&self, x: (&'b [u8], DType), n: usize, row: usize) -> &'b [u8] {
        let len = self.d.t * row * x.1.size_in_bytes();
        &x.0[n * len..(n + 1) * len]
    }

    /// Head `h` of batch entry `n`: its upstream gradient as f32 rows (`tq` of `hsp`), its
    /// `D = rowsum(dO ∘ O)` and its `lse` (both `tq` long).
    fn head(&self, n: usize, h: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, tq, c) = (self.d, self.tq, self.d.c);
        let go_b = self.entry(self.dout, n, c);
        let go = gather_rows(go_b, self.dout.1, d, tq, c, h * d.hs, 1.0);
        let o = gather_rows(
            self.entry(self.out, n, c),
            self.out.1,
            d,
            tq,
            c,
            h * d.hs,
            1.0,
        );
        let delta = go
            .chunks_exact(d.hsp)
            .zip(o.chunks_exact(d.hsp))
            .map(|(a, b)| dot(a, b))
            .collect();
        let at = (n * d.heads + h) * d.t;
        let mut lse = self.lse[at..at + d.t].to_vec();
        lse.resize(tq, 0.0);
        (go, delta, lse)
    }
}

/// The backward, one task per (batch entry, key/value head): the task owns its key and value
/// heads' gradients and its query heads', so no two tasks write the same value.
fn backward_f32(a: &Backward<'_>) -> Grads {
    let (d, g, hsp, dt) = (a.d, a.s.group(), a.d.hsp, a.qkv.1);
    (0..a.s.b * d.kv_heads)
        .into_par_iter()
        .map(|nk| {
            let (n, kvh) = (nk / d.kv_heads, nk % d.kv_heads);
            let src = a.entry(a.qkv, n, d.row);
            let k = KvHead::gather(src, dt, d, d.kv_col(1, kvh));
            let v = KvHead::gather(src, dt, d, d.kv_col(2, kvh));
            let (mut dk, mut dv) = (vec![0.0f32; d.tp * hsp], vec![0.0f32; d.tp * hsp]);
            let mut dq = vec![0.0f32; g * a.tq * hsp];
            for (r, dq) in dq.chunks_exact_mut(a.tq * hsp).enumerate() {
                let h = kvh * g + r;
                let (dout, delta, lse) = a.head(n, h);
                let qh = QueryHead {
                    q: gather_rows(src, dt, d, a.tq, d.row, h * d.hs, d.scale),
                    dout,
                    delta,
                    lse,
                };
                backward_head(d, &qh, &k, &v, dq, &mut dk, &mut dv);
                dq.iter_mut().for_each(|x| *x *= d.scale);
            }
            (dq, dk, dv)
        })
        .collect()
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
    let (tdo, tq_dt, to, tdq) = (dout.dtype(), qkv.dtype(), out.dtype(), dqkv.dtype());
    let dout = bytes(OP, "dout", dout)?;
    let qkv = bytes(OP, "qkv", qkv)?;
    let out = bytes(OP, "out", out)?;
    let lse = super::convert::as_f32(bytes(OP, "lse", lse)?);
    let dqkv = bytes_mut(OP, "dqkv", dqkv)?;
    let (t, hs, hsp, g) = (d.t, d.hs, d.hsp, s.group());
    let tq = t.div_ceil(R) * R;
    let args = Backward {
        d: &d,
        s,
        tq,
        qkv: (qkv, tq_dt),
        dout: (dout, tdo),
        out: (out, to),
        lse,
    };
    let grads = backward_f32(&args);
    let sdq = tdq.size_in_bytes();
    dqkv.par_chunks_mut(t * d.row * sdq)
        .zip(grads.par_chunks(d.kv_heads))
        .for_each(|(dqkv_b, grads_b)| {
            let mut tmp = Vec::new();
            let add = |src: &[f32], dst: &mut [f32]| {
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            };
            for (i, drow) in dqkv_b.chunks_exact_mut(d.row * sdq).enumerate() {
                with_f32_mut(tdq, drow, &mut tmp, true, |row| {
                    for (kvh, (dq, dk, dv)) in grads_b.iter().enumerate() {
                        for r in 0..g {
                            let h = kvh * g + r;
                            let at = (r * tq + i) * hsp;
                            add(&dq[at..at + hs], &mut row[h * hs..(h + 1) * hs]);
                        }
                        let (ck, cv, at) = (d.kv_col(1, kvh), d.kv_col(2, kvh), i * hsp);
                        add(&dk[at..at + hs], &mut row[ck..ck + hs]);
                        add(&dv[at..at + hs], &mut row[cv..cv + hs]);
                    }
                });
            }
        });
    Ok(())
}
