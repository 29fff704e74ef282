//! Layout ops, exact copies: `transpose` of the last two dimensions, `concat` and `split`
//! along a dimension. They run on the backend's layout family (the head-layout copy).

use mp_kernels::{Backend, BufferExt, Heads};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::policy::CastPolicy;
use crate::tape::numel;
use crate::{Result, Tape, Tensor};

/// Swaps the last two dimensions: `[.., m, n]` to `[.., n, m]`.
pub struct Transpose;

/// `(batch, m, n)` of a shape with at least two dimensions.
fn bmn(shape: &[usize]) -> Option<(usize, usize, usize)> {
    let d = shape.len();
    (d >= 2).then(|| (numel(&shape[..d - 2]), shape[d - 2], shape[d - 1]))
}

impl<B: Backend> TapeOp<B> for Transpose {
    fn name(&self) -> &'static str {
        "transpose"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let s = cx.shape(0);
        let (b, m, n) = bmn(s).ok_or_else(|| cx.shape_err(format!("{s:?}: fewer than 2 dims")))?;
        let mut out = cx.alloc(cx.out_dtype(), b * m * n)?;
        cx.backend()
            .transpose(cx.value(0)?, b, m, n, out.view_mut())?;
        let mut shape = s.to_vec();
        shape.swap(s.len() - 2, s.len() - 1);
        Ok(Output::new(out, &shape))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        if let Some((b, m, n)) = bmn(cx.shape(0))
            && g.needs(0)
        {
            let dy = cx.dy()?;
            let mut t = cx.alloc(dy.dtype(), dy.len)?;
            cx.backend().transpose(dy, b, n, m, t.view_mut())?;
            g.add_owned(0, t)?;
        }
        Ok(())
    }
}

/// `(outer, size, inner)` of `shape` around dimension `dim`.
fn around(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (numel(&shape[..dim]), shape[dim], numel(&shape[dim + 1..]))
}

/// Elements `start..start + len` of dimension `dim` (one part of a split).
pub struct Narrow {
    /// The dimension.
    pub dim: usize,
    /// First index kept.
    pub start: usize,
    /// Number of indices kept.
    pub len: usize,
}

impl Narrow {
    fn layout(&self, shape: &[usize]) -> Heads {
        let (outer, size, inner) = around(shape, self.dim);
        Heads::block(outer, size * inner, self.start * inner, self.len * inner)
    }
}

impl<B: Backend> TapeOp<B> for Narrow {
    fn name(&self) -> &'static str {
        "split"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let s = cx.shape(0);
        if self.dim >= s.len() || self.start + self.len > s[self.dim] {
            let (d, a, l) = (self.dim, self.start, self.len);
            return Err(cx.shape_err(format!("{a}..{} of dim {d} of {s:?}", a + l)));
        }
        let mut shape = s.to_vec();
        shape[self.dim] = self.len;
        let mut out = cx.alloc(cx.out_dtype(), numel(&shape))?;
        cx.backend()
            .split_heads(cx.value(0)?, &self.layout(s), out.view_mut())?;
        Ok(Output::new(out, &shape))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let layout = self.layout(cx.shape(0));
        if let Some(dx) = g.get(0)? {
            cx.backend().merge_heads(cx.dy()?, &layout, dx, true)?;
        }
        Ok(())
    }
}

/// Joins tensors of one shape but for dimension `dim` along it.
pub struct Concat {
    /// The dimension.
    pub dim: usize,
}

impl Concat {
    /// The layout of part `i` in the output, from the inputs' shapes.
    fn parts(&self, shapes: &[&[usize]]) -> Vec<Heads> {
        let total: usize = shapes.iter().map(|s| s[self.dim]).sum();
        let mut at = 0;
        shapes
            .iter()
            .map(|s| {
                let (outer, size, inner) = around(s, self.dim);
                let h = Heads::block(outer, total * inner, at * inner, size * inner);
                at += size;
                h
            })
            .collect()
    }
}

impl<B: Backend> TapeOp<B> for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let shapes: Vec<&[usize]> = (0..cx.inputs()).map(|i| cx.shape(i)).collect();
        let first = shapes[0];
        let fits = |s: &&[usize]| {
            s.len() == first.len()
                && self.dim < s.len()
                && s.iter()
                    .zip(first)
                    .enumerate()
                    .all(|(d, (a, b))| d == self.dim || a == b)
        };
        if !shapes.iter().all(fits) {
            return Err(cx.shape_err(format!("shapes {shapes:?} along dim {}", self.dim)));
        }
        let mut shape = first.to_vec();
        shape[self.dim] = shapes.iter().map(|s| s[self.dim]).sum();
        let mut out = cx.alloc(cx.out_dtype(), numel(&shape))?;
        for (i, part) in self.parts(&shapes).iter().enumerate() {
            cx.backend()
                .merge_heads(cx.value(i)?, part, out.view_mut(), false)?;
        }
        Ok(Output::new(out, &shape))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let shapes: Vec<&[usize]> = (0..cx.inputs()).map(|i| cx.shape(i)).collect();
        let dy = cx.dy()?;
        for (i, part) in self.parts(&shapes).iter().enumerate() {
            if g.needs(i) {
                let mut t = cx.alloc(dy.dtype(), numel(shapes[i]))?;
                cx.backend().split_heads(dy, part, t.view_mut())?;
                g.add_owned(i, t)?;
            }
        }
        Ok(())
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// Swaps the last two dimensions of `x` (`[.., m, n]` to `[.., n, m]`; a copy).
    pub fn transpose(&mut self, x: Tensor) -> Result<Tensor> {
        self.apply(Transpose, &[x])
    }

    /// Joins `xs` (one shape but for `dim`) along `dim`, in the widest input dtype.
    pub fn concat(&mut self, xs: &[Tensor], dim: usize) -> Result<Tensor> {
        if xs.is_empty() {
            return Err(self.shape_err("concat", "no tensors to join".into()));
        }
        self.apply(Concat { dim }, xs)
    }

    /// Splits `x` along `dim` into parts of `sizes` (which must add up to that dimension).
    pub fn split(&mut self, x: Tensor, dim: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
        let shape = self.shape(x)?.to_vec();
        if dim >= shape.len() || sizes.iter().sum::<usize>() != shape[dim] {
            let msg = format!("sizes {sizes:?} along dim {dim} of {shape:?}");
            return Err(self.shape_err("split", msg));
        }
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for &len in sizes {
            parts.push(self.apply(Narrow { dim, start, len }, &[x])?);
            start += len;
        }
        Ok(parts)
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{GradCheck, assert_ok};

    #[test]
    fn layout_ops() {
        let c = GradCheck::new(&[("x", &[2, 3, 4]), ("y", &[2, 5, 4])], 9);
        assert_ok(c.run("transpose", |t, p| t.transpose(p[0])));
        assert_ok(c.run("concat", |t, p| t.concat(&[p[0], p[1]], 1)));
        assert_ok(c.run("split", |t, p| {
            // parts used in another order and one of them twice
            let parts = t.split(p[1], 1, &[2, 3])?;
            let a = t.scale(parts[0], 3.0)?;
            t.concat(&[parts[1], parts[0], a], 1)
        }));
        assert_ok(c.run("split last dim", |t, p| Ok(t.split(p[0], 2, &[1, 3])?[1])));
    }
}
