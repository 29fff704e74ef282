//! Layout ops, exact copies: `transpose` of the last two dimensions, `concat` and `split`
//! along a dimension. They run on the backend's layout family (the head-layout copy), as does
//! the rotary position embedding (`rope`, a rotation of each head's pairs).

use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, Heads, Rope};

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

/// The rotary position embedding of `[rows, heads * head_dim]` (see
/// [`mp_kernels::LayoutOps::rope`]): the leading `rotated` heads of each row rotate, the
/// others pass through; inputs `x`, `cos`, `sin` (FP32 `[t, head_dim / 2]`, constants). FP32
/// out; the gradient is the inverse rotation of `dy`.
struct RotaryEmbedding {
    heads: usize,
    rotated: usize,
    t: usize,
}

impl RotaryEmbedding {
    fn shape(&self, x: &[usize]) -> Option<Rope> {
        let (&cols, lead) = x.split_last()?;
        let head_dim = cols.checked_div(self.heads)?;
        (head_dim * self.heads == cols && self.rotated <= self.heads).then_some(Rope {
            rows: numel(lead),
            heads: self.heads,
            rotated: self.rotated,
            head_dim,
            t: self.t,
            inverse: false,
        })
    }
}

impl<B: Backend> TapeOp<B> for RotaryEmbedding {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let s = self.shape(cx.shape(0)).ok_or_else(|| {
            cx.shape_err(format!(
                "x {:?} is not rows of {} heads (of which {} rotate)",
                cx.shape(0),
                self.heads,
                self.rotated
            ))
        })?;
        let want = [s.t, s.head_dim / 2];
        if cx.inputs() != 3 || cx.shape(1) != want || cx.shape(2) != want {
            return Err(cx.shape_err(format!(
                "cos {:?} and sin {:?} must be [t, head_dim / 2] = {want:?}",
                cx.shape(1),
                cx.shape(2)
            )));
        }
        let mut out = cx.alloc(cx.out_dtype(), cx.value(0)?.len)?;
        let (x, cos, sin) = (cx.value(0)?, cx.value(1)?, cx.value(2)?);
        cx.backend().rope(x, cos, sin, &s, out.view_mut())?;
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        if g.needs(1) || g.needs(2) {
            return Err(crate::AutogradError::Backward {
                device: cx.backend().name(),
                msg: "rope: the cos and sin tables are constants and take no gradient".into(),
            });
        }
        if !g.needs(0) {
            return Ok(());
        }
        let s = Rope {
            inverse: true,
            ..self.shape(cx.shape(0)).expect("checked in the forward")
        };
        let dy = cx.dy()?;
        let mut dx = cx.alloc(cx.dtype(0), dy.len)?;
        let (cos, sin) = (cx.value(1)?, cx.value(2)?);
        cx.backend().rope(dy, cos, sin, &s, dx.view_mut())?;
        g.add_owned(0, dx)
    }
}

/// The FP32 `cos` and `sin` tables of HF's default rotary embedding for positions `0..t`
/// of heads of `head_dim`: `[t, head_dim / 2]` each, entry `(p, j)` of angle `p * inv_freq[j]`,
/// `inv_freq[j] = 1 / theta^(2j / head_dim)`, computed in FP32 as HF computes them.
pub fn rope_tables(t: usize, head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|j| 1.0 / theta.powf((2 * j) as f32 / head_dim as f32))
        .collect();
    let angles = (0..t).flat_map(|p| inv.iter().map(move |f| p as f32 * f));
    (
        angles.clone().map(f32::cos).collect(),
        angles.map(f32::sin).collect(),
    )
}

impl<'a, B: Backend> Tape<'a, B> {
    /// The rotary position embedding (HF Llama's rotate-half convention) of `x`, rows of
    /// `heads` heads, for sequences of `t` tokens from position 0 (row `r` at position
    /// `r % t`): the cos and sin tables ([`rope_tables`]) are constant inputs of `[t,
    /// head_dim / 2]`. FP32 out, as HF computes it.
    pub fn rope(
        &mut self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        heads: usize,
        t: usize,
    ) -> Result<Tensor> {
        self.rope_leading(x, cos, sin, (heads, heads), t)
    }

    /// [`Tape::rope`] of the leading `rotated` of the `heads` heads of each row, the others
    /// passed through unchanged (widened to FP32): `(heads, rotated)`. On packed `q | k | v`
    /// rows (one projection) it rotates the query and key heads and leaves the values, ready
    /// for [`Tape::grouped_attention`].
    pub fn rope_leading(
        &mut self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        (heads, rotated): (usize, usize),
        t: usize,
    ) -> Result<Tensor> {
        self.apply(RotaryEmbedding { heads, rotated, t }, &[x, cos, sin])
    }

    /// FP32 tape inputs holding [`rope_tables`].
    pub fn rope_inputs(
        &mut self,
        t: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = rope_tables(t, head_dim, theta);
        let shape = [t, head_dim / 2];
        let be = self.backend();
        let cos = be.upload_f32(&cos, DType::F32)?;
        let sin = be.upload_f32(&sin, DType::F32)?;
        Ok((self.input(cos, &shape)?, self.input(sin, &shape)?))
    }

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

    #[test]
    fn rope() {
        // 2 sequences of 3 tokens, 2 heads of 4
        let c = GradCheck::new(&[("x", &[6, 8])], 4);
        assert_ok(c.run("rope", |t, p| {
            let (cos, sin) = t.rope_inputs(3, 4, 100.0)?;
            t.rope(p[0], cos, sin, 2, 3)
        }));
        // packed rows of 3 heads of 4 (2 rotated, the third passed through)
        let c = GradCheck::new(&[("x", &[6, 12])], 5);
        assert_ok(c.run("rope of the leading heads", |t, p| {
            let (cos, sin) = t.rope_inputs(3, 4, 100.0)?;
            t.rope_leading(p[0], cos, sin, (3, 2), 3)
        }));
    }
}
