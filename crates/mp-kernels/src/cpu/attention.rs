//! The head-layout copies, and the attention family's wiring to the tiled kernel of
//! [`super::flash`].

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{as_f32, narrow, widen};
use super::flash;
use crate::Result;
use crate::backend::contract;
use crate::backend::*;
use crate::backend::{Attention, Heads, Rope, View, ViewMut};
use rayon::prelude::*;

/// [`LayoutOps::split_heads`](crate::LayoutOps::split_heads): one head row (`hs` elements) per
/// task, widened and rounded to `dst`'s dtype (copied when the dtypes agree).
pub(crate) fn split_heads(
    src: View<'_, CpuBuffer>,
    l: &Heads,
    dst: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "split_heads";
    let (ds, dd) = (src.dtype(), dst.dtype());
    let (ss, sd) = (ds.size_in_bytes(), dd.size_in_bytes());
    let src = bytes(OP, "src", src)?;
    let dst = bytes_mut(OP, "dst", dst)?;
    if l.hs == 0 {
        return Ok(());
    }
    dst.par_chunks_mut(l.hs * sd)
        .enumerate()
        .for_each_init(Vec::new, |tmp, (r, d)| {
            let (i, nh) = (r % l.t, r / l.t);
            let (h, n) = (nh % l.heads, nh / l.heads);
            let at = ((n * l.t + i) * l.row + l.col + h * l.hs) * ss;
            let s = &src[at..at + l.hs * ss];
            if ds == dd {
                d.copy_from_slice(s);
            } else {
                tmp.resize(l.hs, 0.0);
                widen(ds, s, tmp);
                narrow(dd, tmp, d);
            }
        });
    Ok(())
}

/// [`LayoutOps::merge_heads`](crate::LayoutOps::merge_heads): one token row per task, each head's
/// slice written (or added in f32 and rounded once) in place.
pub(crate) fn merge_heads(
    src: View<'_, CpuBuffer>,
    l: &Heads,
    dst: ViewMut<'_, CpuBuffer>,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "merge_heads";
    let (ds, dd) = (src.dtype(), dst.dtype());
    let (ss, sd) = (ds.size_in_bytes(), dd.size_in_bytes());
    let src = bytes(OP, "src", src)?;
    let dst = bytes_mut(OP, "dst", dst)?;
    if l.row == 0 || l.hs == 0 {
        return Ok(());
    }
    let width = l.heads * l.hs;
    dst.par_chunks_mut(l.row * sd).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(a, b), (r, row)| {
            let (i, n) = (r % l.t, r / l.t);
            let part = &mut row[l.col * sd..(l.col + width) * sd];
            a.resize(width, 0.0);
            b.resize(l.hs, 0.0);
            if accumulate {
                widen(dd, part, a);
            }
            for (h, a) in a.chunks_exact_mut(l.hs).enumerate() {
                let at = ((n * l.heads + h) * l.t + i) * l.hs * ss;
                let s = &src[at..at + l.hs * ss];
                if accumulate {
                    widen(ds, s, b);
                    a.iter_mut().zip(b.iter()).for_each(|(a, b)| *a += b);
                } else {
                    widen(ds, s, a);
                }
            }
            narrow(dd, a, part);
        },
    );
    Ok(())
}

/// [`LayoutOps::rope`](crate::LayoutOps::rope): one token row per task, widened to f32,
/// rotated head by head (the heads after `s.rotated` copied), rounded to `out`'s dtype.
fn rope(
    x: View<'_, CpuBuffer>,
    cos: View<'_, CpuBuffer>,
    sin: View<'_, CpuBuffer>,
    s: &Rope,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "rope";
    let (dx, dout) = (x.dtype(), out.dtype());
    let (sx, so) = (dx.size_in_bytes(), dout.size_in_bytes());
    let (cos, sin) = (
        as_f32(bytes(OP, "cos", cos)?),
        as_f32(bytes(OP, "sin", sin)?),
    );
    let x = bytes(OP, "x", x)?;
    let out = bytes_mut(OP, "out", out)?;
    let (width, h) = (s.heads * s.head_dim, s.head_dim / 2);
    let turned = s.rotated * s.head_dim;
    if width == 0 {
        return Ok(());
    }
    let sign = if s.inverse { -1.0f32 } else { 1.0 };
    out.par_chunks_mut(width * so).enumerate().for_each_init(
        || (vec![0f32; width], vec![0f32; width]),
        |(xs, ys), (r, o)| {
            widen(dx, &x[r * width * sx..(r + 1) * width * sx], xs);
            let p = r % s.t;
            let (c, sn) = (&cos[p * h..(p + 1) * h], &sin[p * h..(p + 1) * h]);
            ys[turned..].copy_from_slice(&xs[turned..]);
            let pairs = xs[..turned].chunks_exact(2 * h);
            for (xh, yh) in pairs.zip(ys[..turned].chunks_exact_mut(2 * h)) {
                let (x1, x2) = xh.split_at(h);
                let (y1, y2) = yh.split_at_mut(h);
                for j in 0..h {
                    let sj = sign * sn[j];
                    y1[j] = x1[j] * c[j] - x2[j] * sj;
                    y2[j] = x2[j] * c[j] + x1[j] * sj;
                }
            }
            narrow(dout, ys, o);
        },
    );
    Ok(())
}

impl LayoutOps for CpuBackend {
    fn rope(
        &self,
        x: View<'_, CpuBuffer>,
        cos: View<'_, CpuBuffer>,
        sin: View<'_, CpuBuffer>,
        s: &Rope,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::rope(self, &x, &cos, &sin, s, &out)?;
        rope(x, cos, sin, s, out)
    }

    fn split_heads(
        &self,
        src: View<'_, CpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::heads(self, layout, &src, &dst, false)?;
        split_heads(src, layout, dst)
    }

    fn merge_heads(
        &self,
        src: View<'_, CpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CpuBuffer>,
        accumulate: bool,
    ) -> Result<()> {
        contract::heads(self, layout, &src, &dst, true)?;
        merge_heads(src, layout, dst, accumulate)
    }
}

impl AttentionOps for CpuBackend {
    fn attention(
        &self,
        qkv: View<'_, CpuBuffer>,
        shape: &Attention,
        out: ViewMut<'_, CpuBuffer>,
        lse: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::attention_forward(self, &qkv, shape, &out, &lse)?;
        flash::attention(qkv, shape, out, lse)
    }

    fn attention_backward(
        &self,
        dout: View<'_, CpuBuffer>,
        qkv: View<'_, CpuBuffer>,
        out: View<'_, CpuBuffer>,
        lse: View<'_, CpuBuffer>,
        shape: &Attention,
        dqkv: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::attention_backward(self, &dout, &qkv, &out, &lse, shape, &dqkv)?;
        flash::attention_backward(dout, qkv, out, lse, shape, dqkv)
    }
}
