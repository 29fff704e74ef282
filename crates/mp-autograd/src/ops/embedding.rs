//! `embedding`: rows of a table gathered by id, FP32 output (a gather is exact, and the
//! residual stream it starts is FP32); the backward scatter-adds into the table's gradient.

use mp_kernels::{Backend, BufferExt};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::policy::CastPolicy;
use crate::{Result, Tape, Tensor};

/// `table[ids[i], :]` for the `n` ids of an index buffer.
pub struct Embedding<'i, B: Backend> {
    /// The ids.
    pub ids: &'i B::Index,
    /// How many ids.
    pub n: usize,
}

impl<B: Backend> TapeOp<B> for Embedding<'_, B> {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let [_, c] = cx.shape(0)[..] else {
            return Err(cx.shape_err(format!("table of shape {:?}", cx.shape(0))));
        };
        let mut out = cx.alloc(cx.out_dtype(), self.n * c)?;
        cx.backend()
            .embedding(cx.value(0)?, self.ids, c, out.view_mut())?;
        Ok(Output::new(out, &[self.n, c]))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let c = cx.shape(0)[1];
        if let Some(dt) = g.get(0)? {
            cx.backend().embedding_backward(cx.dy()?, self.ids, c, dt)?;
        }
        Ok(())
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// `table[ids[i], :]` for `n` ids: `[n, c]` from a `[rows, c]` table (FP32 output).
    pub fn embedding(&mut self, table: Tensor, ids: &'a B::Index, n: usize) -> Result<Tensor> {
        self.apply(Embedding { ids, n }, &[table])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{GradCheck, assert_ok};

    #[derive(Default)]
    struct Env {
        ids: Vec<u32>,
    }

    #[test]
    fn embedding() {
        let c = GradCheck::new(&[("table", &[7, 5])], 10);
        let env = Env {
            ids: vec![3, 0, 3, 6, 1, 3],
        };
        assert_ok(c.run_with("embedding", &env, |t, p, env| {
            t.embedding(p[0], &env.ids, env.ids.len())
        }));
    }
}
