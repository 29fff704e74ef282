//! The tape's public surface from outside the crate: a user-defined loss op (`is_loss`),
//! recorded with `Tape::apply`, checked with `GradCheck`, and its misuse errors.

use mp_autograd::gradcheck::GradCheck;
use mp_autograd::{AutogradError, Backward, CastPolicy, Forward, Grads, Output, Result, TapeOp};
use mp_dtype::DType;
use mp_kernels::prelude::*;
use mp_kernels::{CpuBackend, ReduceOp};

/// `sum(x^2) / 2`: a scalar loss whose gradient is `seed * x`.
struct HalfSquaredNorm;

impl<B: Backend> TapeOp<B> for HalfSquaredNorm {
    fn name(&self) -> &'static str {
        "half_squared_norm"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let x = cx.value(0)?;
        let mut ss = cx.alloc(DType::F32, 1)?;
        cx.backend()
            .reduce_rows(ReduceOp::SumSq, x, x.len.max(1), ss.view_mut())?;
        let mut out = cx.alloc(DType::F32, 1)?;
        cx.backend().scale(ss.view(), 0.5, out.view_mut())?;
        Ok(Output::new(out, &[]))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, grads: &mut Grads<'_, '_, B>) -> Result<()> {
        grads.add_scaled(0, cx.seed(), cx.value(0)?)
    }
}

/// Claims to be a loss but returns a vector: the tape refuses it.
struct NotAScalar;

impl<B: Backend> TapeOp<B> for NotAScalar {
    fn name(&self) -> &'static str {
        "not_a_scalar"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let out = cx.zeros(DType::F32, 3)?;
        Ok(Output::new(out, &[3]))
    }
    fn backward(&self, _: &Backward<'_, '_, B>, _: &mut Grads<'_, '_, B>) -> Result<()> {
        Ok(())
    }
}

#[test]
fn a_user_loss_op_trains_and_passes_the_gradient_check() {
    let check = GradCheck::new(&[("x", &[3, 5]), ("w", &[5, 4])], 3);
    let worst = check
        .run("half_squared_norm(x w)", |t, p| {
            let y = t.matmul(p[0], p[1])?;
            t.apply(HalfSquaredNorm, &[y])
        })
        .unwrap_or_else(|m| panic!("{m}"));
    assert!(worst <= 1.0);
    // the seed (a loss scale) multiplies the gradient
    let be = CpuBackend::new();
    let master = be.upload_f32(&[1.0, -2.0, 3.0], DType::F32).unwrap();
    let mut grads = be.zeros(DType::F32, 3).unwrap();
    let mut tape = mp_autograd::Tape::new(&be).with_params(&master);
    let x = tape.param_at(0, &[3]).unwrap();
    let l = tape.apply(HalfSquaredNorm, &[x]).unwrap();
    assert_eq!(tape.to_vec_f32(l).unwrap(), vec![7.0]);
    tape.backward(l, 4.0, &mut grads).unwrap();
    assert_eq!(
        be.download_f32(grads.view()).unwrap(),
        vec![4.0, -8.0, 12.0]
    );
}

#[test]
fn a_loss_that_is_not_a_scalar_is_refused() {
    let be = CpuBackend::new();
    let mut tape = mp_autograd::Tape::new(&be);
    let x = tape
        .input(be.upload_f32(&[1.0; 3], DType::F32).unwrap(), &[3])
        .unwrap();
    let e = tape.apply(NotAScalar, &[x]).unwrap_err();
    assert!(
        matches!(
            e,
            AutogradError::Shape {
                op: "not_a_scalar",
                ..
            }
        ),
        "{e}"
    );
}
