//! A tape op defined outside mp-autograd: the SwiGLU gate `y = a * silu(b)` of Llama's MLP,
//! written against the public [`TapeOp`] trait, checked with the crate's finite-difference
//! gradient check, then used in a small bf16 autocast step beside built-in ops.
//!
//! ```sh
//! cargo run --release -p mp-autograd --example custom_op
//! ```
//!
//! It exits with status 1 if the gradient check fails.

use mp_autograd::gradcheck::GradCheck;
use mp_autograd::{
    Autocast, AutogradError, Backward, CastPolicy, Forward, Grads, Output, Result, Tape, TapeOp,
    WeightLayout,
};
use mp_dtype::DType;
use mp_kernels::prelude::*;
use mp_kernels::{BinaryOp, CpuBackend, UnaryOp};

/// `a * silu(b)`, element-wise. The forward saves `silu(b)` (FP32) for the backward.
struct SwiGlu<B: Backend> {
    silu_b: Option<B::Buffer>,
}

impl<B: Backend> TapeOp<B> for SwiGlu<B> {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    /// Element-wise: runs in the widest input dtype, like PyTorch's `mul`.
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }

    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        if cx.shape(0) != cx.shape(1) {
            let msg = format!("a {:?} and b {:?} differ", cx.shape(0), cx.shape(1));
            return Err(cx.shape_err(msg));
        }
        let (be, a, b) = (cx.backend(), cx.value(0)?, cx.value(1)?);
        let mut s = cx.alloc(DType::F32, b.len)?;
        be.unary(UnaryOp::Silu, b, s.view_mut())?;
        let mut y = cx.alloc(cx.out_dtype(), a.len)?;
        be.binary(BinaryOp::Mul, a, s.view(), y.view_mut())?;
        self.silu_b = Some(s);
        Ok(Output::new(y, cx.shape(0)))
    }

    fn backward(&self, cx: &Backward<'_, '_, B>, grads: &mut Grads<'_, '_, B>) -> Result<()> {
        let (be, dy) = (cx.backend(), cx.dy()?);
        let s = self
            .silu_b
            .as_ref()
            .ok_or_else(|| AutogradError::Backward {
                device: be.name(),
                msg: "swiglu: backward before forward".into(),
            })?;
        let s = s.view();
        let n = dy.len;
        if grads.needs(0) {
            // da = dy * silu(b)
            let mut t = cx.alloc(DType::F32, n)?;
            be.binary(BinaryOp::Mul, dy, s, t.view_mut())?;
            grads.add(0, t.view())?;
        }
        if let Some(db) = grads.get(1)? {
            // db += silu'(b) * (dy * a)
            let mut t = cx.alloc(DType::F32, n)?;
            be.binary(BinaryOp::Mul, dy, cx.value(0)?, t.view_mut())?;
            be.unary_backward(UnaryOp::Silu, cx.value(1)?, t.view(), db)?;
        }
        Ok(())
    }

    fn saved_bytes(&self) -> usize {
        self.silu_b.as_ref().map_or(0, |s| 4 * s.len())
    }
}

/// Records the op on a tape, as a built-in op's method would.
fn swiglu<'a, B: Backend>(
    tape: &mut Tape<'a, B>,
    a: mp_autograd::Tensor,
    b: mp_autograd::Tensor,
) -> Result<mp_autograd::Tensor> {
    tape.apply(SwiGlu { silu_b: None }, &[a, b])
}

fn main() {
    // 1. the gradient check: alone, and inside a Llama-style MLP with built-in ops
    let check = GradCheck::new(&[("a", &[4, 6]), ("b", &[4, 6])], 1);
    let mlp = GradCheck::new(
        &[
            ("x", &[3, 8]),
            ("gate", &[16, 8]),
            ("up", &[16, 8]),
            ("down", &[8, 16]),
        ],
        2,
    );
    let results = [
        ("swiglu", check.run("swiglu", |t, p| swiglu(t, p[0], p[1]))),
        (
            "mlp: down(swiglu(up x, gate x))",
            mlp.run("mlp", |t, p| {
                let g = t.linear(p[0], p[1], None, WeightLayout::OutIn)?;
                let u = t.linear(p[0], p[2], None, WeightLayout::OutIn)?;
                let h = swiglu(t, u, g)?;
                t.linear(h, p[3], None, WeightLayout::OutIn)
            }),
        ),
    ];
    let mut failed = false;
    for (what, r) in &results {
        match r {
            Ok(worst) => println!("gradcheck {what}: ok (worst error {worst:.3} of tolerance)"),
            Err(msg) => {
                println!("gradcheck {what}: FAILED: {msg}");
                failed = true;
            }
        }
    }

    // 2. a bf16 autocast step: the op promotes like `mul`, the GEMMs are lowered
    let be = CpuBackend::new();
    let step = || -> Result<(DType, f32, f32)> {
        let data: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let master = be.upload_f32(&data, DType::F32)?;
        let mut grads = be.zeros(DType::F32, data.len())?;
        let mut tape = Tape::new(&be)
            .with_params(&master)
            .with_autocast(Autocast::to(DType::BF16));
        let (w1, w2) = (tape.param_at(0, &[4, 3])?, tape.param_at(12, &[4, 3])?);
        let x = tape.input(be.upload_f32(&[0.5; 8], DType::F32)?, &[2, 4])?;
        let a = tape.linear(x, w1, None, WeightLayout::InOut)?;
        let b = tape.linear(x, w2, None, WeightLayout::InOut)?;
        let y = swiglu(&mut tape, a, b)?;
        let dt = tape.dtype(y)?;
        let loss = tape.mean(y)?;
        let l = tape.to_vec_f32(loss)?[0];
        tape.backward(loss, 1.0, &mut grads)?;
        let g = be.download_f32(grads.view())?;
        Ok((dt, l, g.iter().map(|v| v * v).sum::<f32>().sqrt()))
    };
    match step() {
        Ok((dt, loss, norm)) => {
            println!("bf16 autocast step: swiglu output {dt}, loss {loss:.5}, |grad| {norm:.5}")
        }
        Err(e) => {
            println!("bf16 autocast step failed: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
