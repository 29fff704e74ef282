//! `attention`: causal multi-head or grouped-query self-attention over packed q, k, v
//! projection rows (HF GPT-2's fused `c_attn` output), lowered under autocast, saving only
//! the FP32 log-sum-exp of each score row (O(b heads t)) for the backward.

use mp_kernels::{Attention as Shape, Backend, BufferExt, DType, DeviceBuffer};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::policy::CastPolicy;
use crate::{Result, Tape, Tensor};

/// Causal self-attention of `heads` query heads and `kv_heads` key/value heads over `qkv`
/// `[b, t, (heads + 2 kv_heads) hs]`.
pub struct Attention<B: Backend> {
    heads: usize,
    kv_heads: usize,
    saved: Option<(B::Buffer, Shape)>,
}

impl<B: Backend> TapeOp<B> for Attention<B> {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Lower
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let s = cx.shape(0);
        let (heads, kv_heads) = (self.heads, self.kv_heads);
        let parts = heads + 2 * kv_heads;
        let [b, t, width] = s[..] else {
            return Err(cx.shape_err(format!("qkv of shape {s:?}")));
        };
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !width.is_multiple_of(parts) {
            return Err(cx.shape_err(format!(
                "qkv of shape {s:?} with {heads} heads and {kv_heads} key/value heads (the last \
                 dimension must be (heads + 2 kv_heads) x head size, kv_heads dividing heads)"
            )));
        }
        let shape = Shape {
            b,
            t,
            c: heads * (width / parts),
            heads,
            kv_heads,
        };
        let mut out = cx.alloc(cx.out_dtype(), b * t * shape.c)?;
        let mut lse = cx.alloc(DType::F32, shape.lse_len())?;
        cx.backend()
            .attention(cx.value(0)?, &shape, out.view_mut(), lse.view_mut())?;
        if cx.grad_enabled() {
            self.saved = Some((lse, shape));
        }
        Ok(Output::new(out, &[b, t, shape.c]))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let Some((lse, shape)) = &self.saved else {
            return Ok(());
        };
        if let Some(dqkv) = g.get(0)? {
            let (dy, qkv, out) = (cx.dy()?, cx.value(0)?, cx.output()?);
            cx.backend()
                .attention_backward(dy, qkv, out, lse.view(), shape, dqkv)?;
        }
        Ok(())
    }
    fn saved_bytes(&self) -> usize {
        self.saved
            .as_ref()
            .map_or(0, |(l, _)| l.len() * l.dtype().size_in_bytes())
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// Causal self-attention of `heads` heads over `qkv` of shape `[b, t, 3c]` (HF GPT-2's
    /// `c_attn` output); returns `[b, t, c]`.
    pub fn attention(&mut self, qkv: Tensor, heads: usize) -> Result<Tensor> {
        self.grouped_attention(qkv, heads, heads)
    }

    /// Causal grouped-query self-attention: `heads` query heads sharing `kv_heads` key/value
    /// heads (query head `h` uses key/value head `h / (heads / kv_heads)`), over `qkv` of shape
    /// `[b, t, (heads + 2 kv_heads) hs]` (queries, then keys, then values); returns
    /// `[b, t, heads hs]`.
    pub fn grouped_attention(
        &mut self,
        qkv: Tensor,
        heads: usize,
        kv_heads: usize,
    ) -> Result<Tensor> {
        let op = Attention {
            heads,
            kv_heads,
            saved: None,
        };
        self.apply(op, &[qkv])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{GradCheck, assert_ok};

    #[test]
    fn attention() {
        // b=2, t=5, c=8, 2 heads.
        let c = GradCheck::new(&[("qkv", &[2, 5, 24])], 11);
        assert_ok(c.run("attention", |t, p| t.attention(p[0], 2)));
    }

    #[test]
    fn grouped_attention() {
        // b=2, t=70 (two key tiles), 4 query heads of 2 sharing 2 key/value heads.
        let c = GradCheck::new(&[("qkv", &[2, 70, 16])], 12);
        assert_ok(c.run("grouped_attention", |t, p| t.grouped_attention(p[0], 4, 2)));
    }
}
