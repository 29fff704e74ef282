//! Element-wise ops: `add`, `sub`, `mul`, `neg`, `scale`, the unary functions (`gelu`, `relu`,
//! `silu`, `sigmoid`, `tanh`, `exp`) and `dropout`. Binary ops take inputs of one shape (no
//! broadcasting) and produce the widest input dtype.

use mp_dtype::DType;
use mp_kernels::{Backend, BinaryOp, BufferExt, UnaryOp};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::ops::same_shapes;
use crate::policy::CastPolicy;
use crate::{Result, Tape, Tensor};

/// `a op b` for [`BinaryOp`] (category [`CastPolicy::Promote`]).
pub struct Binary(pub BinaryOp);

impl<B: Backend> TapeOp<B> for Binary {
    fn name(&self) -> &'static str {
        match self.0 {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
        }
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn passes_dy_to(&self) -> Option<usize> {
        // d(a ± b)/da = 1: a's gradient is the output's, handed over without a copy
        matches!(self.0, BinaryOp::Add | BinaryOp::Sub).then_some(0)
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        same_shapes(cx)?;
        let (a, b) = (cx.value(0)?, cx.value(1)?);
        let mut out = cx.alloc(cx.out_dtype(), a.len)?;
        cx.backend().binary(self.0, a, b, out.view_mut())?;
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let dy = cx.dy()?;
        match self.0 {
            // input 0's gradient is dy itself: the tape hands it over (passes_dy_to), and
            // these calls for input 0 do nothing
            BinaryOp::Add => {
                g.add(0, dy)?;
                g.add(1, dy)
            }
            BinaryOp::Sub => {
                g.add(0, dy)?;
                g.add_scaled(1, -1.0, dy)
            }
            BinaryOp::Mul => {
                // d a = dy * b, d b = dy * a, each in FP32 before it is added
                for (x, other) in [(0, 1), (1, 0)] {
                    if g.needs(x) {
                        let mut t = cx.alloc(DType::F32, dy.len)?;
                        cx.backend()
                            .binary(BinaryOp::Mul, dy, cx.value(other)?, t.view_mut())?;
                        g.add(x, t.view())?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// `f(x)` for a [`UnaryOp`]; the backward is `dx += f'(x) dy`.
pub struct Unary {
    /// The function.
    pub op: UnaryOp,
    /// Its category: [`CastPolicy::Promote`] (run in the input's dtype), or
    /// [`CastPolicy::Fp32`] for `exp` (on PyTorch's FP32 list).
    pub policy: CastPolicy,
}

impl<B: Backend> TapeOp<B> for Unary {
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn cast_policy(&self) -> CastPolicy {
        self.policy
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let x = cx.value(0)?;
        let mut out = cx.alloc(cx.out_dtype(), x.len)?;
        cx.backend().unary(self.op, x, out.view_mut())?;
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        if let Some(dx) = g.get(0)? {
            cx.backend()
                .unary_backward(self.op, cx.value(0)?, cx.dy()?, dx)?;
        }
        Ok(())
    }
}

/// SwiGLU of packed rows `[.., 2f]` (a gate, then an up, as one projection writes them):
/// `silu(gate) * up`, `[.., f]`, in FP32 with one rounding to the input's dtype (category
/// [`CastPolicy::Promote`]; see [`mp_kernels::PointwiseOps::swiglu`]). Only the packed input
/// is kept for the backward.
pub struct SwiGlu;

impl SwiGlu {
    /// `f`, half the last dimension of `x`.
    fn half(x: &[usize]) -> Option<usize> {
        let &last = x.last()?;
        (last > 0 && last.is_multiple_of(2)).then_some(last / 2)
    }
}

impl<B: Backend> TapeOp<B> for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let shape = cx.shape(0);
        let f = Self::half(shape).ok_or_else(|| {
            cx.shape_err(format!(
                "x {shape:?}: the last dimension must be an even 2f > 0"
            ))
        })?;
        let x = cx.value(0)?;
        let mut out = cx.alloc(cx.out_dtype(), x.len / 2)?;
        cx.backend().swiglu(x, f, out.view_mut())?;
        let mut out_shape = shape.to_vec();
        *out_shape.last_mut().expect("checked above") = f;
        Ok(Output::new(out, &out_shape))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        if let Some(dx) = g.get(0)? {
            let f = Self::half(cx.shape(0)).expect("checked in the forward");
            cx.backend()
                .swiglu_backward(cx.value(0)?, cx.dy()?, f, dx)?;
        }
        Ok(())
    }
}

/// `alpha * x` (category [`CastPolicy::Promote`]).
pub struct Scale(pub f32);

impl<B: Backend> TapeOp<B> for Scale {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let x = cx.value(0)?;
        let mut out = cx.alloc(cx.out_dtype(), x.len)?;
        cx.backend().scale(x, self.0, out.view_mut())?;
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        g.add_scaled(0, self.0, cx.dy()?)
    }
}

/// Inverted dropout with probability `p` and the mask of `seed` (see
/// [`mp_kernels::PointwiseOps::dropout`]); the backward applies the same mask to `dy`.
pub struct Dropout {
    /// Drop probability in `[0, 1)`.
    pub p: f32,
    /// The mask's seed.
    pub seed: u64,
}

impl<B: Backend> TapeOp<B> for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let x = cx.value(0)?;
        let mut out = cx.alloc(cx.out_dtype(), x.len)?;
        cx.backend().dropout(x, self.p, self.seed, out.view_mut())?;
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        if g.needs(0) {
            let dy = cx.dy()?;
            let mut t = cx.alloc(dy.dtype(), dy.len)?;
            cx.backend().dropout(dy, self.p, self.seed, t.view_mut())?;
            g.add_owned(0, t)?;
        }
        Ok(())
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// `a + b` (same shapes; output in the widest input dtype).
    pub fn add(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.apply(Binary(BinaryOp::Add), &[a, b])
    }

    /// `a - b` (same shapes; output in the widest input dtype).
    pub fn sub(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.apply(Binary(BinaryOp::Sub), &[a, b])
    }

    /// `a * b` element-wise (same shapes; output in the widest input dtype).
    pub fn mul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.apply(Binary(BinaryOp::Mul), &[a, b])
    }

    /// `-x`, in the input's dtype.
    pub fn neg(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Neg, CastPolicy::Promote, x)
    }

    /// `alpha * x`, in the input's dtype.
    pub fn scale(&mut self, x: Tensor, alpha: f32) -> Result<Tensor> {
        self.apply(Scale(alpha), &[x])
    }

    /// GELU (tanh approximation, HF GPT-2's `gelu_new`), in the input's dtype.
    pub fn gelu(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::GeluTanh, CastPolicy::Promote, x)
    }

    /// `max(x, 0)`, in the input's dtype (NaN propagates).
    pub fn relu(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Relu, CastPolicy::Promote, x)
    }

    /// SiLU `x * sigmoid(x)` (Llama's MLP activation), in the input's dtype.
    pub fn silu(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Silu, CastPolicy::Promote, x)
    }

    /// SwiGLU of packed rows: `x [.., 2f]` holds a gate then an up (one projection of the
    /// packed `gate_proj | up_proj` weight), the result `silu(gate) * up` is `[.., f]` (see
    /// [`SwiGlu`]): the value of [`Tape::silu`] then [`Tape::mul`] on the halves, with one
    /// rounding instead of two and only the packed input saved.
    pub fn swiglu(&mut self, x: Tensor) -> Result<Tensor> {
        self.apply(SwiGlu, &[x])
    }

    /// `1 / (1 + e^-x)`, in the input's dtype.
    pub fn sigmoid(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid, CastPolicy::Promote, x)
    }

    /// `tanh(x)`, in the input's dtype.
    pub fn tanh(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh, CastPolicy::Promote, x)
    }

    /// `e^x` in FP32 (on PyTorch's FP32 autocast list).
    pub fn exp(&mut self, x: Tensor) -> Result<Tensor> {
        self.unary(UnaryOp::Exp, CastPolicy::Fp32, x)
    }

    fn unary(&mut self, op: UnaryOp, policy: CastPolicy, x: Tensor) -> Result<Tensor> {
        self.apply(Unary { op, policy }, &[x])
    }

    /// Inverted dropout: each element is zeroed with probability `p` and the rest scaled by
    /// `1 / (1 - p)`. The mask comes from the tape's seed ([`Tape::with_rng`]), the op's
    /// position among the tape's random ops and the element index, so it is reproducible. It
    /// is the identity under [`Tape::no_grad`] (evaluation) and when `p` is 0.
    pub fn dropout(&mut self, x: Tensor, p: f32) -> Result<Tensor> {
        self.node("dropout", x)?;
        if !(0.0..1.0).contains(&p) {
            let msg = format!("drop probability {p} is outside [0, 1)");
            return Err(self.shape_err("dropout", msg));
        }
        if !self.grad_enabled() || p == 0.0 {
            return Ok(x);
        }
        let seed = self.next_seed("dropout")?;
        self.apply(Dropout { p, seed }, &[x])
    }
}

#[cfg(test)]
mod tests {
    use crate::Tape;
    use crate::gradcheck::Cpu;
    use crate::gradcheck::{GradCheck, assert_ok};
    use mp_dtype::DType;
    use mp_kernels::prelude::*;

    /// SwiGLU of packed rows equals SiLU of the gate half times the up half (FP32: one
    /// rounding against two, so within a few ulps).
    #[test]
    fn swiglu_is_silu_of_the_gate_times_the_up() {
        let be = Cpu::new();
        let data = mp_kernels::testing::random_vec(4 * 10, 3);
        let mut tape = crate::Tape::new(&be);
        let x = tape
            .input(be.upload_f32(&data, DType::F32).unwrap(), &[4, 10])
            .unwrap();
        let fused = tape.swiglu(x).unwrap();
        let parts = tape.split(x, 1, &[5, 5]).unwrap();
        let act = tape.silu(parts[0]).unwrap();
        let composed = tape.mul(act, parts[1]).unwrap();
        let (a, b) = (
            be.download_f32(tape.view(fused).unwrap()).unwrap(),
            be.download_f32(tape.view(composed).unwrap()).unwrap(),
        );
        assert_eq!(tape.shape(fused).unwrap(), &[4, 5]);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 4.0 * f32::EPSILON * y.abs().max(1e-30),
                "{x} vs {y}"
            );
        }
    }

    #[test]
    fn pointwise_ops() {
        let c = GradCheck::new(&[("a", &[4, 6]), ("b", &[4, 6])], 4);
        assert_ok(c.run("gelu", |t, p| t.gelu(p[0])));
        assert_ok(c.run("relu", |t, p| t.relu(p[0])));
        assert_ok(c.run("silu", |t, p| t.silu(p[0])));
        // rows of 3 gates then 3 ups
        assert_ok(c.run("swiglu", |t, p| t.swiglu(p[0])));
        assert_ok(c.run("sigmoid", |t, p| t.sigmoid(p[0])));
        assert_ok(c.run("tanh", |t, p| t.tanh(p[0])));
        assert_ok(c.run("exp", |t, p| t.exp(p[0])));
        assert_ok(c.run("neg", |t, p| t.neg(p[0])));
        assert_ok(c.run("scale", |t, p| t.scale(p[0], -2.5)));
        assert_ok(c.run("add", |t, p| t.add(p[0], p[1])));
        assert_ok(c.run("sub", |t, p| t.sub(p[0], p[1])));
        assert_ok(c.run("mul", |t, p| t.mul(p[0], p[1])));
        // A tensor used twice accumulates both contributions.
        assert_ok(c.run("add(a, a)", |t, p| t.add(p[0], p[0])));
        assert_ok(c.run("mul(a, a)", |t, p| t.mul(p[0], p[0])));
    }

    #[test]
    fn dropout_passes_the_kept_gradients_scaled() {
        let c = GradCheck::new(&[("x", &[16, 16])], 5);
        assert_ok(c.run("dropout", |t, p| t.dropout(p[0], 0.3)));
        // two dropouts on one tape draw different masks; a no_grad pass is the identity
        let be = Cpu::new();
        let x = be.upload_f32(&[1.0; 4096], DType::F32).unwrap();
        let mut tape = Tape::new(&be).with_rng(1, 2);
        let x = tape.input(x, &[4096]).unwrap();
        let (a, b) = (tape.dropout(x, 0.5).unwrap(), tape.dropout(x, 0.5).unwrap());
        assert_ne!(tape.to_vec_f32(a).unwrap(), tape.to_vec_f32(b).unwrap());
        let e = tape.no_grad(|t| t.dropout(x, 0.5)).unwrap();
        assert_eq!(e, x, "no dropout in evaluation");
        let mut unseeded = Tape::new(&be);
        let x = be.upload_f32(&[1.0; 4], DType::F32).unwrap();
        let x = unseeded.input(x, &[4]).unwrap();
        let err = unseeded.dropout(x, 0.1).unwrap_err();
        assert!(err.to_string().contains("with_rng"), "{err}");
    }
}
