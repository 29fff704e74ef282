//! Row ops over the last dimension: `softmax` and `log_softmax`, computed and returned in FP32
//! (PyTorch's autocast runs both in FP32).

use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::ops::rows_of;
use crate::policy::CastPolicy;
use crate::{Result, Tape, Tensor};

/// Softmax (or log-softmax when `log`) over the last dimension; the backward reads the output.
pub struct Softmax {
    /// Log-softmax instead of softmax.
    pub log: bool,
}

impl<B: Backend> TapeOp<B> for Softmax {
    fn name(&self) -> &'static str {
        if self.log { "log_softmax" } else { "softmax" }
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let (rows, cols) = rows_of(cx, 0)?;
        let mut out = cx.alloc(DType::F32, rows * cols)?;
        cx.backend()
            .softmax(cx.value(0)?, cols, false, self.log, out.view_mut())?;
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let cols = *cx.out_shape().last().unwrap_or(&1);
        if let Some(dx) = g.get(0)? {
            cx.backend()
                .softmax_backward(cx.output()?, cx.dy()?, cols, self.log, dx)?;
        }
        Ok(())
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// Softmax over the last dimension, in FP32.
    pub fn softmax(&mut self, x: Tensor) -> Result<Tensor> {
        self.apply(Softmax { log: false }, &[x])
    }

    /// Log-softmax over the last dimension, in FP32.
    pub fn log_softmax(&mut self, x: Tensor) -> Result<Tensor> {
        self.apply(Softmax { log: true }, &[x])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{GradCheck, assert_ok};

    #[test]
    fn softmax_and_log_softmax() {
        let c = GradCheck::new(&[("x", &[3, 7])], 6);
        assert_ok(c.run("softmax", |t, p| t.softmax(p[0])));
        assert_ok(c.run("log_softmax", |t, p| t.log_softmax(p[0])));
    }
}
