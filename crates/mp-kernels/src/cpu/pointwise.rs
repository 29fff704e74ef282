//! Element-wise kernels: casts, fill, binary ops, scale, axpy, bias add, unary functions and
//! their backward, broadcast products, dropout.
//!
//! Each op walks its operands in fixed blocks of [`CHUNK`] elements in parallel; a block of a
//! low-precision input is widened into a per-thread scratch vector, computed in f32 and
//! rounded back, so no op allocates a full-size f32 copy.

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{load, narrow, narrow_with, widen, with_f32_mut};
use super::math::{self, simd_dispatch};
use crate::Result;
use crate::backend::contract;
use crate::backend::*;
use crate::backend::{BinaryOp, Rounding, UnaryOp, View, ViewMut};
use mp_dtype::DType;
use rayon::prelude::*;

/// Elements per parallel block.
pub(crate) const CHUNK: usize = 1 << 13;

/// `out = f(a)` block by block; `read_out` loads `out`'s current values first.
fn map1(
    a: &[u8],
    da: DType,
    out: &mut [u8],
    dout: DType,
    read_out: bool,
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) {
    let (sa, so) = (da.size_in_bytes(), dout.size_in_bytes());
    out.par_chunks_mut(CHUNK * so)
        .zip(a.par_chunks(CHUNK * sa))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(ta, to), (oc, ac)| {
                let ac = load(da, ac, ta);
                with_f32_mut(dout, oc, to, read_out, |o| f(ac, o));
            },
        );
}

/// `out = f(a, b)` block by block; `read_out` loads `out`'s current values first.
#[allow(clippy::too_many_arguments)]
fn map2(
    a: &[u8],
    da: DType,
    b: &[u8],
    db: DType,
    out: &mut [u8],
    dout: DType,
    read_out: bool,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) {
    let (sa, sb, so) = (da.size_in_bytes(), db.size_in_bytes(), dout.size_in_bytes());
    out.par_chunks_mut(CHUNK * so)
        .zip(a.par_chunks(CHUNK * sa))
        .zip(b.par_chunks(CHUNK * sb))
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(ta, tb, to), ((oc, ac), bc)| {
                let ac = load(da, ac, ta);
                let bc = load(db, bc, tb);
                with_f32_mut(dout, oc, to, read_out, |o| f(ac, bc, o));
            },
        );
}

/// `f(r, x[r, ..], out[r, ..])` for every row `r` of `cols` elements, in parallel blocks of
/// whole rows (`x` and `out` are the raw bytes of their dtypes; `out` is written, not read).
pub(crate) fn map_rows(
    x: &[u8],
    dx: DType,
    out: &mut [u8],
    dout: DType,
    cols: usize,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) {
    let rows_per = (CHUNK / cols).max(1);
    out.par_chunks_mut(rows_per * cols * dout.size_in_bytes())
        .zip(x.par_chunks(rows_per * cols * dx.size_in_bytes()))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(tx, to), (bi, (oc, xc))| {
                let xc = load(dx, xc, tx);
                with_f32_mut(dout, oc, to, false, |o| {
                    for (i, (orow, xrow)) in o
                        .chunks_exact_mut(cols)
                        .zip(xc.chunks_exact(cols))
                        .enumerate()
                    {
                        f(bi * rows_per + i, xrow, orow);
                    }
                });
            },
        );
}

/// Rounds `data` to nearest even into the whole of `dst` (parallel).
pub(crate) fn narrow_par(data: &[f32], dst: ViewMut<'_, CpuBuffer>) -> Result<()> {
    const OP: &str = "upload_f32";
    let dt = dst.dtype();
    let s = dt.size_in_bytes();
    let out = bytes_mut(OP, "dst", dst)?;
    out.par_chunks_mut(CHUNK * s)
        .zip(data.par_chunks(CHUNK))
        .for_each(|(o, d)| narrow(dt, d, o));
    Ok(())
}

/// The elements of a view widened to f32 (parallel).
pub(crate) fn widen_par(src: View<'_, CpuBuffer>) -> Result<Vec<f32>> {
    let dt = src.dtype();
    let s = dt.size_in_bytes();
    let inp = bytes("download_f32", "src", src)?;
    let mut out = vec![0.0f32; src.len];
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK * s))
        .for_each(|(o, i)| widen(dt, i, o));
    Ok(out)
}

/// `dst = src` converted to `dst`'s dtype with `rounding`.
pub(crate) fn cast(
    src: View<'_, CpuBuffer>,
    dst: ViewMut<'_, CpuBuffer>,
    rounding: Rounding,
) -> Result<()> {
    const OP: &str = "cast";
    let (ds, dd) = (src.dtype(), dst.dtype());
    let dst_offset = dst.offset;
    let inp = bytes(OP, "src", src)?;
    let out = bytes_mut(OP, "dst", dst)?;
    if ds == dd {
        // Already representable: rounding of any kind is the identity.
        out.par_chunks_mut(CHUNK * dd.size_in_bytes())
            .zip(inp.par_chunks(CHUNK * ds.size_in_bytes()))
            .for_each(|(o, i)| o.copy_from_slice(i));
        return Ok(());
    }
    out.par_chunks_mut(CHUNK * dd.size_in_bytes())
        .zip(inp.par_chunks(CHUNK * ds.size_in_bytes()))
        .enumerate()
        .try_for_each_init(Vec::new, |tmp, (ci, (o, i))| {
            let x = load(ds, i, tmp);
            narrow_with(dd, x, o, rounding, dst_offset + ci * CHUNK)
        })
}

/// Every element of `dst` set to `value` rounded to nearest even.
pub(crate) fn fill(dst: ViewMut<'_, CpuBuffer>, value: f32) -> Result<()> {
    let dt = dst.dtype();
    let s = dt.size_in_bytes();
    let mut pattern = [0u8; 4];
    narrow(dt, &[value], &mut pattern[..s]);
    let out = bytes_mut("fill", "dst", dst)?;
    out.par_chunks_mut(CHUNK * s).for_each(|o| {
        for e in o.chunks_exact_mut(s) {
            e.copy_from_slice(&pattern[..s]);
        }
    });
    Ok(())
}

/// `out = a op b`.
pub(crate) fn binary(
    op: BinaryOp,
    a: View<'_, CpuBuffer>,
    b: View<'_, CpuBuffer>,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "binary";
    let (da, db, dout) = (a.dtype(), b.dtype(), out.dtype());
    let (a, b, out) = (
        bytes(OP, "a", a)?,
        bytes(OP, "b", b)?,
        bytes_mut(OP, "out", out)?,
    );
    match op {
        BinaryOp::Sub => map2(a, da, b, db, out, dout, false, |a, b, o| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a - b;
            }
        }),
        BinaryOp::Add => map2(a, da, b, db, out, dout, false, |a, b, o| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        }),
        BinaryOp::Mul => map2(a, da, b, db, out, dout, false, |a, b, o| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a * b;
            }
        }),
    }
    Ok(())
}

/// `out = alpha * x`.
pub(crate) fn scale(x: View<'_, CpuBuffer>, alpha: f32, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
    const OP: &str = "scale";
    let (dx, dout) = (x.dtype(), out.dtype());
    let (x, out) = (bytes(OP, "x", x)?, bytes_mut(OP, "out", out)?);
    map1(x, dx, out, dout, false, |x, o| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = alpha * x;
        }
    });
    Ok(())
}

/// `dst += alpha * x`.
pub(crate) fn axpy(alpha: f32, x: View<'_, CpuBuffer>, dst: ViewMut<'_, CpuBuffer>) -> Result<()> {
    const OP: &str = "axpy";
    let (dx, dd) = (x.dtype(), dst.dtype());
    let (x, dst) = (bytes(OP, "x", x)?, bytes_mut(OP, "dst", dst)?);
    map1(x, dx, dst, dd, true, |x, o| {
        for (o, &x) in o.iter_mut().zip(x) {
            *o += alpha * x;
        }
    });
    Ok(())
}

/// `out[r, j] = x[r, j] + bias[j]`.
pub(crate) fn bias_add(
    x: View<'_, CpuBuffer>,
    bias: View<'_, CpuBuffer>,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "bias_add";
    let n = bias.len;
    let (dx, dout) = (x.dtype(), out.dtype());
    let mut tb = Vec::new();
    let bias = load(bias.dtype(), bytes(OP, "bias", bias)?, &mut tb);
    let (x, out) = (bytes(OP, "x", x)?, bytes_mut(OP, "out", out)?);
    map_rows(x, dx, out, dout, n, |_, xrow, orow| {
        for ((o, &x), &b) in orow.iter_mut().zip(xrow).zip(bias) {
            *o = x + b;
        }
    });
    Ok(())
}

simd_dispatch! {
    /// `o = gelu(x)`.
    fn gelu_slice(x: &[f32], o: &mut [f32]) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = math::gelu(x);
        }
    }
}

simd_dispatch! {
    /// `o += gelu'(x) * dy`.
    fn gelu_backward_slice(x: &[f32], dy: &[f32], o: &mut [f32]) {
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(dy) {
            *o += math::gelu_grad(x) * g;
        }
    }
}

simd_dispatch! {
    /// `o = silu(x)` (the formula of [`UnaryOp::eval_with`], so bit-identical to the generic
    /// loop).
    fn silu_slice(x: &[f32], o: &mut [f32]) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = UnaryOp::Silu.eval_with(x, math::exp);
        }
    }
}

simd_dispatch! {
    /// `o += silu'(x) * dy`.
    fn silu_backward_slice(x: &[f32], dy: &[f32], o: &mut [f32]) {
        for ((o, &x), &g) in o.iter_mut().zip(x).zip(dy) {
            *o += UnaryOp::Silu.grad_with(x, math::exp) * g;
        }
    }
}

simd_dispatch! {
    /// `o = silu(g) * u` (SiLU by the formula of [`UnaryOp::eval_with`]).
    fn swiglu_row(g: &[f32], u: &[f32], o: &mut [f32]) {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = UnaryOp::Silu.eval_with(g, math::exp) * u;
        }
    }
}

simd_dispatch! {
    /// `dg += dy * u * silu'(g)`, `du += dy * silu(g)`.
    fn swiglu_backward_row(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for j in 0..dy.len() {
            let (x, y) = (g[j], dy[j]);
            let s = 1.0 / (1.0 + math::exp(-x));
            dg[j] += y * u[j] * (s * (1.0 + x * (1.0 - s)));
            du[j] += y * (x * s);
        }
    }
}

/// [`PointwiseOps::swiglu`] on `rows x 2f` packed rows (checked by the contract), in blocks
/// of whole rows.
fn swiglu(gu: View<'_, CpuBuffer>, f: usize, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
    const OP: &str = "swiglu";
    let (dg, dout) = (gu.dtype(), out.dtype());
    let (gu, out) = (bytes(OP, "gu", gu)?, bytes_mut(OP, "out", out)?);
    let rows_per = (CHUNK / (2 * f)).max(1);
    out.par_chunks_mut(rows_per * f * dout.size_in_bytes())
        .zip(gu.par_chunks(rows_per * 2 * f * dg.size_in_bytes()))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(tg, to), (oc, gc)| {
                let gc = load(dg, gc, tg);
                with_f32_mut(dout, oc, to, false, |o| {
                    for (orow, row) in o.chunks_exact_mut(f).zip(gc.chunks_exact(2 * f)) {
                        let (g, u) = row.split_at(f);
                        swiglu_row(g, u, orow);
                    }
                });
            },
        );
    Ok(())
}

/// [`PointwiseOps::swiglu_backward`] (lengths checked by the contract).
fn swiglu_backward(
    gu: View<'_, CpuBuffer>,
    dy: View<'_, CpuBuffer>,
    f: usize,
    dgu: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "swiglu_backward";
    let (tg, ty, td) = (gu.dtype(), dy.dtype(), dgu.dtype());
    let (gu, dy) = (bytes(OP, "gu", gu)?, bytes(OP, "dy", dy)?);
    let dgu = bytes_mut(OP, "dgu", dgu)?;
    let rows_per = (CHUNK / (2 * f)).max(1);
    let packed = rows_per * 2 * f;
    dgu.par_chunks_mut(packed * td.size_in_bytes())
        .zip(gu.par_chunks(packed * tg.size_in_bytes()))
        .zip(dy.par_chunks(rows_per * f * ty.size_in_bytes()))
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(bg, by, bd), ((dc, gc), yc)| {
                let (gc, yc) = (load(tg, gc, bg), load(ty, yc, by));
                with_f32_mut(td, dc, bd, true, |d| {
                    let rows = d.chunks_exact_mut(2 * f).zip(gc.chunks_exact(2 * f));
                    for ((drow, row), y) in rows.zip(yc.chunks_exact(f)) {
                        let ((g, u), (dg, du)) = (row.split_at(f), drow.split_at_mut(f));
                        swiglu_backward_row(g, u, y, dg, du);
                    }
                });
            },
        );
    Ok(())
}

/// `out = f(x)` (lengths checked by the contract).
pub(crate) fn unary(
    op: UnaryOp,
    x: View<'_, CpuBuffer>,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    let name = op.name();
    let (dx, dout) = (x.dtype(), out.dtype());
    let (x, out) = (bytes(name, "x", x)?, bytes_mut(name, "out", out)?);
    match op {
        // GELU and SiLU are the hot ones (every GPT and Llama MLP): their loops are compiled
        // for AVX2 too.
        UnaryOp::GeluTanh => map1(x, dx, out, dout, false, gelu_slice),
        UnaryOp::Silu => map1(x, dx, out, dout, false, silu_slice),
        _ => map1(x, dx, out, dout, false, |x, o| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = op.eval_with(x, math::exp);
            }
        }),
    }
    Ok(())
}

/// `dx += f'(x) * dy` (lengths checked by the contract).
pub(crate) fn unary_backward(
    op: UnaryOp,
    x: View<'_, CpuBuffer>,
    dy: View<'_, CpuBuffer>,
    dx: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    let name = op.backward_name();
    let (tx, tdy, tdx) = (x.dtype(), dy.dtype(), dx.dtype());
    let (x, dy, dx) = (
        bytes(name, "x", x)?,
        bytes(name, "dy", dy)?,
        bytes_mut(name, "dx", dx)?,
    );
    match op {
        UnaryOp::GeluTanh => map2(x, tx, dy, tdy, dx, tdx, true, gelu_backward_slice),
        UnaryOp::Silu => map2(x, tx, dy, tdy, dx, tdx, true, silu_backward_slice),
        _ => map2(x, tx, dy, tdy, dx, tdx, true, |x, dy, o| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(dy) {
                *o += op.grad_with(x, math::exp) * g;
            }
        }),
    }
    Ok(())
}

/// `out[r, j] = x[r, j] * row_scale[r] * col_scale[j]` over rows of `cols` (checked by the
/// contract).
pub(crate) fn mul_broadcast(
    x: View<'_, CpuBuffer>,
    row_scale: Option<View<'_, CpuBuffer>>,
    col_scale: Option<View<'_, CpuBuffer>>,
    cols: usize,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "mul_broadcast";
    if cols == 0 || x.len == 0 {
        return Ok(());
    }
    let (dx, dout) = (x.dtype(), out.dtype());
    let (mut tr, mut tc) = (Vec::new(), Vec::new());
    let rs = match row_scale {
        Some(r) => Some(load(r.dtype(), bytes(OP, "row_scale", r)?, &mut tr)),
        None => None,
    };
    let cs = match col_scale {
        Some(c) => Some(load(c.dtype(), bytes(OP, "col_scale", c)?, &mut tc)),
        None => None,
    };
    let (x, out) = (bytes(OP, "x", x)?, bytes_mut(OP, "out", out)?);
    map_rows(x, dx, out, dout, cols, |r, xrow, orow| {
        let rf = rs.map_or(1.0, |rs| rs[r]);
        match cs {
            Some(cs) => {
                for ((o, &x), &c) in orow.iter_mut().zip(xrow).zip(cs) {
                    *o = x * rf * c;
                }
            }
            None => {
                for (o, &x) in orow.iter_mut().zip(xrow) {
                    *o = x * rf;
                }
            }
        }
    });
    Ok(())
}

/// Inverted dropout: element `i` kept (and scaled by `scale`) when
/// `sr_random(seed, i) >= threshold`.
pub(crate) fn dropout(
    x: View<'_, CpuBuffer>,
    threshold: u32,
    scale: f32,
    seed: u64,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "dropout";
    let (dx, dout) = (x.dtype(), out.dtype());
    let (x, out) = (bytes(OP, "x", x)?, bytes_mut(OP, "out", out)?);
    let key = mp_dtype::rng::seed_key(seed);
    out.par_chunks_mut(CHUNK * dout.size_in_bytes())
        .zip(x.par_chunks(CHUNK * dx.size_in_bytes()))
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(tx, to), (ci, (oc, xc))| {
                let xc = load(dx, xc, tx);
                with_f32_mut(dout, oc, to, false, |o| {
                    for (j, (o, &x)) in o.iter_mut().zip(xc).enumerate() {
                        let r = mp_dtype::rng::keyed_random(key, (ci * CHUNK + j) as u64);
                        *o = if r >= threshold { x * scale } else { 0.0 };
                    }
                });
            },
        );
    Ok(())
}

impl PointwiseOps for CpuBackend {
    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_, CpuBuffer>,
        b: View<'_, CpuBuffer>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::same_len(self, "binary", &[("a", &a), ("b", &b)], ("out", &out))?;
        binary(op, a, b, out)
    }

    fn unary(
        &self,
        op: UnaryOp,
        x: View<'_, CpuBuffer>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::same_len(self, op.name(), &[("x", &x)], ("out", &out))?;
        unary(op, x, out)
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: View<'_, CpuBuffer>,
        dy: View<'_, CpuBuffer>,
        dx: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::same_len(
            self,
            op.backward_name(),
            &[("x", &x), ("dy", &dy)],
            ("dx", &dx),
        )?;
        unary_backward(op, x, dy, dx)
    }

    fn scale(&self, x: View<'_, CpuBuffer>, alpha: f32, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
        contract::same_len(self, "scale", &[("x", &x)], ("out", &out))?;
        scale(x, alpha, out)
    }

    fn axpy(&self, alpha: f32, x: View<'_, CpuBuffer>, dst: ViewMut<'_, CpuBuffer>) -> Result<()> {
        contract::same_len(self, "axpy", &[("x", &x)], ("dst", &dst))?;
        axpy(alpha, x, dst)
    }

    fn bias_add(
        &self,
        x: View<'_, CpuBuffer>,
        bias: View<'_, CpuBuffer>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::bias_add(self, &x, &bias, &out)?;
        bias_add(x, bias, out)
    }

    fn mul_broadcast(
        &self,
        x: View<'_, CpuBuffer>,
        row_scale: Option<View<'_, CpuBuffer>>,
        col_scale: Option<View<'_, CpuBuffer>>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        let (_, cols) =
            contract::mul_broadcast(self, &x, row_scale.as_ref(), col_scale.as_ref(), &out)?;
        mul_broadcast(x, row_scale, col_scale, cols, out)
    }

    fn dropout(
        &self,
        x: View<'_, CpuBuffer>,
        p: f32,
        seed: u64,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        let (threshold, scale) = contract::dropout(self, &x, p, &out)?;
        dropout(x, threshold, scale, seed, out)
    }

    fn swiglu(&self, gu: View<'_, CpuBuffer>, f: usize, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
        contract::swiglu(self, "swiglu", &gu, None, f, &out)?;
        swiglu(gu, f, out)
    }

    fn swiglu_backward(
        &self,
        gu: View<'_, CpuBuffer>,
        dy: View<'_, CpuBuffer>,
        f: usize,
        dgu: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::swiglu(self, "swiglu_backward", &gu, Some(&dy), f, &dgu)?;
        swiglu_backward(gu, dy, f, dgu)
    }
}
