//! `attention`: causal multi-head self-attention over HF GPT-2's fused `c_attn` output,
//! lowered under autocast, saving the softmax probabilities for the backward.

use mp_kernels::{Attention as Shape, Backend, BufferExt, DeviceBuffer};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::policy::CastPolicy;
use crate::{Result, Tape, Tensor};

/// Causal self-attention of `heads` heads over `qkv` `[b, t, 3c]`.
pub struct Attention<B: Backend> {
    heads: usize,
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
        let heads = self.heads;
        let [b, t, c3] = s[..] else {
            return Err(cx.shape_err(format!("qkv of shape {s:?}")));
        };
        if c3 % 3 != 0 || heads == 0 || (c3 / 3) % heads != 0 {
            return Err(cx.shape_err(format!("qkv of shape {s:?} with {heads} heads")));
        }
        let shape = Shape {
            b,
            t,
            c: c3 / 3,
            heads,
        };
        let mut out = cx.alloc(cx.out_dtype(), b * t * shape.c)?;
        let mut probs = cx.alloc(cx.out_dtype(), b * heads * t * t)?;
        cx.backend()
            .attention(cx.value(0)?, &shape, out.view_mut(), probs.view_mut())?;
        self.saved = Some((probs, shape));
        Ok(Output::new(out, &[b, t, shape.c]))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let Some((probs, shape)) = &self.saved else {
            return Ok(());
        };
        if let Some(dqkv) = g.get(0)? {
            cx.backend()
                .attention_backward(cx.dy()?, cx.value(0)?, probs.view(), shape, dqkv)?;
        }
        Ok(())
    }
    fn saved_bytes(&self) -> usize {
        self.saved
            .as_ref()
            .map_or(0, |(p, _)| p.len() * p.dtype().size_in_bytes())
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// Causal self-attention of `heads` heads over `qkv` of shape `[b, t, 3c]` (HF GPT-2's
    /// `c_attn` output); returns `[b, t, c]`.
    pub fn attention(&mut self, qkv: Tensor, heads: usize) -> Result<Tensor> {
        self.apply(Attention { heads, saved: None }, &[qkv])
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
}
