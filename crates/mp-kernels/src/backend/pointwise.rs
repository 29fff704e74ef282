//! The pointwise family: element-wise unary and binary ops, scaling, broadcasts, dropout.

use super::{MemoryOps, View, ViewMut};
use crate::Result;

/// Element-wise binary ops (inputs widened to FP32, output rounded to its dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a * b`
    Mul,
    /// `a - b`
    Sub,
}

/// `sqrt(2 / pi)`, GELU's scale.
const GELU_S: f32 = 0.797_884_6;
/// The cubic coefficient of GELU's tanh approximation.
const GELU_C: f32 = 0.044_715;

/// Element-wise unary functions, computed in FP32 (see [`UnaryOp::eval`] and
/// [`UnaryOp::grad`] for the reference formulas every backend follows).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// GELU, tanh approximation (`gelu_new` of HF GPT-2, PyTorch's `approximate="tanh"`).
    GeluTanh,
    /// `max(x, 0)`, NaN propagating (gradient 0 at 0, as PyTorch).
    Relu,
    /// `x * sigmoid(x)` (SiLU / swish).
    Silu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// `e^x`.
    Exp,
    /// `-x`.
    Neg,
    /// `1 / sqrt(x)`.
    Rsqrt,
}

impl UnaryOp {
    /// Every unary op, for tests and tables.
    pub const ALL: [UnaryOp; 8] = [
        UnaryOp::GeluTanh,
        UnaryOp::Relu,
        UnaryOp::Silu,
        UnaryOp::Sigmoid,
        UnaryOp::Tanh,
        UnaryOp::Exp,
        UnaryOp::Neg,
        UnaryOp::Rsqrt,
    ];

    /// The op's name in messages (`"gelu"`, `"relu"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            UnaryOp::GeluTanh => "gelu",
            UnaryOp::Relu => "relu",
            UnaryOp::Silu => "silu",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Exp => "exp",
            UnaryOp::Neg => "neg",
            UnaryOp::Rsqrt => "rsqrt",
        }
    }

    /// The name of its backward in messages (`"gelu_backward"`, ...).
    pub const fn backward_name(self) -> &'static str {
        match self {
            UnaryOp::GeluTanh => "gelu_backward",
            UnaryOp::Relu => "relu_backward",
            UnaryOp::Silu => "silu_backward",
            UnaryOp::Sigmoid => "sigmoid_backward",
            UnaryOp::Tanh => "tanh_backward",
            UnaryOp::Exp => "exp_backward",
            UnaryOp::Neg => "neg_backward",
            UnaryOp::Rsqrt => "rsqrt_backward",
        }
    }

    /// The code the CUDA and WGSL kernels use for it (their `UOP_*` constants).
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The reference value in FP32 with the standard library's `exp` (backends agree with it
    /// within a few ulps; see [`UnaryOp::eval_with`]).
    pub fn eval(self, x: f32) -> f32 {
        self.eval_with(x, f32::exp)
    }

    /// The reference derivative at `x` in FP32.
    pub fn grad(self, x: f32) -> f32 {
        self.grad_with(x, f32::exp)
    }

    /// `f(x)` with `exp` as the exponential: the one definition of every formula, which the
    /// CPU backend evaluates with its vectorisable `exp` (the WGSL and CUDA kernels are ports).
    #[inline(always)]
    pub fn eval_with(self, x: f32, exp: impl Fn(f32) -> f32) -> f32 {
        let sigmoid = |x: f32| 1.0 / (1.0 + exp(-x));
        match self {
            UnaryOp::GeluTanh => {
                let u = GELU_S * (x + GELU_C * x * x * x);
                x * sigmoid(2.0 * u)
            }
            UnaryOp::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Exp => exp(x),
            UnaryOp::Neg => -x,
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        }
    }

    /// `f'(x)` with `exp` as the exponential (see [`UnaryOp::eval_with`]).
    #[inline(always)]
    pub fn grad_with(self, x: f32, exp: impl Fn(f32) -> f32) -> f32 {
        let sigmoid = |x: f32| 1.0 / (1.0 + exp(-x));
        match self {
            UnaryOp::GeluTanh => {
                let x2 = x * x;
                let s = sigmoid(2.0 * GELU_S * (x + GELU_C * x2 * x));
                s + x * 2.0 * s * (1.0 - s) * GELU_S * (1.0 + 3.0 * GELU_C * x2)
            }
            UnaryOp::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            UnaryOp::Sigmoid => {
                let s = sigmoid(x);
                s * (1.0 - s)
            }
            UnaryOp::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
            UnaryOp::Exp => exp(x),
            UnaryOp::Neg => -1.0,
            UnaryOp::Rsqrt => -0.5 / (x * x.sqrt()),
        }
    }
}

/// Element-wise ops. Every input is widened to FP32 on load; outputs are rounded to nearest
/// even into their buffer's dtype.
pub trait PointwiseOps: MemoryOps {
    /// `out = a op b`, all of the same length.
    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `out = f(x)` (same length).
    fn unary(
        &self,
        op: UnaryOp,
        x: View<'_, Self::Buffer>,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `dx += f'(x) * dy` (same lengths).
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: View<'_, Self::Buffer>,
        dy: View<'_, Self::Buffer>,
        dx: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `out = alpha * x`.
    fn scale(
        &self,
        x: View<'_, Self::Buffer>,
        alpha: f32,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `dst += alpha * x` (gradient accumulation).
    fn axpy(
        &self,
        alpha: f32,
        x: View<'_, Self::Buffer>,
        dst: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `out[r, j] = x[r, j] + bias[j]` for `x` of `rows x bias.len`.
    fn bias_add(
        &self,
        x: View<'_, Self::Buffer>,
        bias: View<'_, Self::Buffer>,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `out[r, j] = x[r, j] * row_scale[r] * col_scale[j]` for `x` of `rows x cols`; an absent
    /// factor is 1 (both products in FP32, one rounding).
    fn mul_broadcast(
        &self,
        x: View<'_, Self::Buffer>,
        row_scale: Option<View<'_, Self::Buffer>>,
        col_scale: Option<View<'_, Self::Buffer>>,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// Inverted dropout: `out[i] = keep_i ? x[i] / (1 - p) : 0`, where element `i` (counted
    /// from the start of the view) is kept when `mp_dtype::sr_random(seed, i)` is at least
    /// the threshold of [`crate::contract::dropout_threshold`]`(p)`: reproducible from
    /// `(seed, i)` on every backend. The backward is the same op applied to `dy`.
    fn dropout(
        &self,
        x: View<'_, Self::Buffer>,
        p: f32,
        seed: u64,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// SwiGLU of packed rows: `gu` is `rows x 2f`, each row a gate `g` then an up `u` (one
    /// GEMM's output), and `out[r, j] = silu(g[r, j]) * u[r, j]` (`rows x f`), in FP32 with one
    /// rounding to `out`'s dtype (`silu(x) = x / (1 + exp(-x))`, as [`UnaryOp::Silu`]).
    fn swiglu(
        &self,
        gu: View<'_, Self::Buffer>,
        f: usize,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// The gradient of [`PointwiseOps::swiglu`] added into `dgu` (`rows x 2f`, the packed
    /// layout of `gu`): `dg += dy * u * silu'(g)`, `du += dy * silu(g)`, in FP32 with one
    /// rounding per element of `dgu`.
    fn swiglu_backward(
        &self,
        gu: View<'_, Self::Buffer>,
        dy: View<'_, Self::Buffer>,
        f: usize,
        dgu: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
}
