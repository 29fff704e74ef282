//! Losses and whole-tensor reductions, all scalar FP32 losses for [`Tape::backward`]:
//! `cross_entropy` (fused log-softmax + NLL, mean over rows), `mse_loss` (mean squared error),
//! `sum` and `mean` of all elements.

use std::cell::RefCell;

use mp_dtype::DType;
use mp_kernels::{Backend, BinaryOp, BufferExt, DeviceBuffer, ReduceOp};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::ops::{rows_of, same_shapes};
use crate::policy::CastPolicy;
use crate::{AutogradError, Result, Tape, Tensor};

/// Mean cross-entropy of logits `[.., vocab]` against one target per row.
///
/// When the logits need a gradient, the forward is the fused classifier
/// ([`LossOps::cross_entropy_fused`](mp_kernels::LossOps::cross_entropy_fused)): one pass over
/// the logits computes the losses and the gradient at the announced seed
/// ([`Tape::with_loss_seed`]), in the logits' dtype, which the backward hands on without
/// reading the logits again.
pub struct CrossEntropy<'i, B: Backend> {
    targets: &'i B::Index,
    /// The gradient computed by the forward, and the seed it was computed for (taken by the
    /// backward, which moves it on as the logits' gradient).
    early: RefCell<Option<(B::Buffer, f32)>>,
}

impl<'i, B: Backend> CrossEntropy<'i, B> {
    /// The loss against `targets`, one per row.
    pub fn new(targets: &'i B::Index) -> Self {
        CrossEntropy {
            targets,
            early: RefCell::new(None),
        }
    }
}

impl<B: Backend> TapeOp<B> for CrossEntropy<'_, B> {
    fn name(&self) -> &'static str {
        "cross_entropy"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let (rows, vocab) = rows_of(cx, 0)?;
        if rows == 0 {
            return Err(cx.shape_err("no rows: the mean over an empty batch"));
        }
        let be = cx.backend();
        let mut losses = cx.alloc(DType::F32, rows)?;
        let logits = cx.value(0)?;
        if cx.needs_grad(0) {
            // written in the logits' dtype: the usual case (an activation) takes it as its
            // gradient
            let seed = cx.loss_seed();
            let mut d = cx.alloc(cx.dtype(0), logits.len)?;
            let dloss = seed / rows as f32;
            be.cross_entropy_fused(
                logits,
                self.targets,
                vocab,
                dloss,
                losses.view_mut(),
                d.view_mut(),
            )?;
            self.early = RefCell::new(Some((d, seed)));
        } else {
            be.cross_entropy(logits, self.targets, vocab, losses.view_mut())?;
        }
        let mut loss = cx.alloc(DType::F32, 1)?;
        be.reduce_rows(ReduceOp::Mean, losses.view(), rows, loss.view_mut())?;
        Ok(Output::new(loss, &[]))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        if !g.needs(0) {
            return Ok(());
        }
        let seed = cx.seed();
        match self.early.borrow_mut().take() {
            Some((d, at)) if at == seed => g.add_owned(0, d),
            Some((d, at)) => g.add_scaled(0, seed / at, d.view()),
            None => Err(AutogradError::Backward {
                device: cx.backend().name(),
                msg: "cross_entropy: the forward computed no gradient for the logits".into(),
            }),
        }
    }
    fn saved_bytes(&self) -> usize {
        self.early
            .borrow()
            .as_ref()
            .map_or(0, |(d, _)| d.len() * d.dtype().size_in_bytes())
    }
}

/// Mean squared error `mean((pred - target)^2)` of two tensors of one shape (PyTorch's
/// `mse_loss`, reduction `"mean"`); both inputs get gradients.
pub struct MseLoss<B: Backend> {
    diff: Option<B::Buffer>,
}

impl<B: Backend> TapeOp<B> for MseLoss<B> {
    fn name(&self) -> &'static str {
        "mse_loss"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        same_shapes(cx)?;
        let be = cx.backend();
        let n = cx.value(0)?.len;
        if n == 0 {
            return Err(cx.shape_err("the mean of no elements"));
        }
        let mut diff = cx.alloc(DType::F32, n)?;
        be.binary(BinaryOp::Sub, cx.value(0)?, cx.value(1)?, diff.view_mut())?;
        let mut ss = cx.alloc(DType::F32, 1)?;
        be.reduce_rows(ReduceOp::SumSq, diff.view(), n, ss.view_mut())?;
        let mut loss = cx.alloc(DType::F32, 1)?;
        be.scale(ss.view(), 1.0 / n as f32, loss.view_mut())?;
        self.diff = Some(diff);
        Ok(Output::new(loss, &[]))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let diff = self.diff.as_ref().ok_or_else(|| AutogradError::Backward {
            device: cx.backend().name(),
            msg: "mse_loss: backward before forward".into(),
        })?;
        let diff = diff.view();
        let k = 2.0 * cx.seed() / diff.len as f32;
        g.add_scaled(0, k, diff)?;
        g.add_scaled(1, -k, diff)
    }
    fn saved_bytes(&self) -> usize {
        self.diff.as_ref().map_or(0, |d| d.len() * 4)
    }
}

/// The sum (or, with `mean`, the mean) of all elements.
pub struct Reduce {
    /// Divide by the number of elements.
    pub mean: bool,
}

impl<B: Backend> TapeOp<B> for Reduce {
    fn name(&self) -> &'static str {
        if self.mean { "mean" } else { "sum" }
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let x = cx.value(0)?;
        let mut out = cx.alloc(DType::F32, 1)?;
        match (x.len, self.mean) {
            (0, true) => return Err(cx.shape_err("the mean of no elements")),
            (0, false) => cx.backend().fill(out.view_mut(), 0.0)?,
            (n, mean) => {
                let op = if mean { ReduceOp::Mean } else { ReduceOp::Sum };
                cx.backend().reduce_rows(op, x, n, out.view_mut())?
            }
        }
        Ok(Output::new(out, &[]))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let n: usize = cx.shape(0).iter().product();
        if g.needs(0) && n > 0 {
            let d = if self.mean {
                cx.seed() / n as f32
            } else {
                cx.seed()
            };
            let mut t = cx.alloc(DType::F32, n)?;
            cx.backend().fill(t.view_mut(), d)?;
            g.add(0, t.view())?;
        }
        Ok(())
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// Mean cross-entropy of `logits` (`[.., vocab]`) against `targets` (one per row): a
    /// scalar FP32 loss, to be passed to [`Tape::backward`].
    pub fn cross_entropy(&mut self, logits: Tensor, targets: &'a B::Index) -> Result<Tensor> {
        self.apply(CrossEntropy::new(targets), &[logits])
    }

    /// Mean squared error of `pred` against `target` (same shapes): a scalar FP32 loss.
    pub fn mse_loss(&mut self, pred: Tensor, target: Tensor) -> Result<Tensor> {
        self.apply(MseLoss { diff: None }, &[pred, target])
    }

    /// The sum of all elements of `x`: a scalar FP32 loss, to be passed to [`Tape::backward`].
    pub fn sum(&mut self, x: Tensor) -> Result<Tensor> {
        self.apply(Reduce { mean: false }, &[x])
    }

    /// The mean of all elements of `x`: a scalar FP32 loss (an error for an empty `x`).
    pub fn mean(&mut self, x: Tensor) -> Result<Tensor> {
        self.apply(Reduce { mean: true }, &[x])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{GradCheck, assert_ok};

    #[derive(Default)]
    struct Env {
        targets: Vec<u32>,
    }

    #[test]
    fn losses_and_reductions() {
        let mut c = GradCheck::new(&[("logits", &[2, 3, 6]), ("target", &[2, 3, 6])], 7);
        let env = Env {
            targets: vec![0, 5, 2, 2, 1, 4],
        };
        assert_ok(c.run_with("cross_entropy", &env, |t, p, env| {
            t.cross_entropy(p[0], &env.targets)
        }));
        assert_ok(c.run("sum", |t, p| t.sum(p[0])));
        assert_ok(c.run("mean", |t, p| t.mean(p[0])));
        assert_ok(c.run("mse_loss", |t, p| t.mse_loss(p[0], p[1])));
        c.values_mut()[0] += 1.0;
        assert_ok(c.run("mse_loss shifted", |t, p| t.mse_loss(p[0], p[1])));
    }

    /// The fused classifier computes the logits' gradient in the forward at the announced
    /// seed; a backward with another seed rescales it, and with the announced one passes it on.
    #[test]
    fn cross_entropy_gradient_follows_the_backward_seed() {
        use crate::Tape;
        use mp_kernels::prelude::*;
        use mp_kernels::{CpuBackend, DType};
        let be = CpuBackend::new();
        let master = be
            .upload_f32(&crate::gradcheck::randn(3, 4 * 6), DType::F32)
            .unwrap();
        let targets = vec![0, 5, 2, 1];
        let grad = |announced: Option<f32>, seed: f32| {
            let mut grads = be.zeros(DType::F32, 24).unwrap();
            let mut tape = Tape::new(&be).with_params(&master);
            if let Some(s) = announced {
                tape = tape.with_loss_seed(s);
            }
            let x = tape.param_at(0, &[4, 6]).unwrap();
            let loss = tape.cross_entropy(x, &targets).unwrap();
            tape.backward(loss, seed, &mut grads).unwrap();
            be.download_f32(grads.view()).unwrap()
        };
        let exact = grad(Some(256.0), 256.0);
        let rescaled = grad(None, 256.0);
        assert_eq!(exact, rescaled, "a power-of-two rescale is exact");
        let at_one = grad(None, 1.0);
        for (a, b) in exact.iter().zip(&at_one) {
            assert_eq!(*a, b * 256.0);
        }
        assert!(exact.iter().any(|&g| g != 0.0));
    }
}
