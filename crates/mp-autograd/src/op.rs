//! The open op interface: [`TapeOp`], and what an op's forward and backward see.
//!
//! Every op on the tape, built in or not, is a value implementing [`TapeOp`]: its name, its
//! autocast category, a forward that computes the output from its inputs through any
//! [`Backend`] op, and a backward that adds its inputs' gradients. [`Tape::apply`] records it:
//! it checks the handles, applies the autocast policy to the inputs (casting them where the
//! category says so), runs the forward, and keeps the op (with whatever it saved in itself)
//! when an input needs a gradient.
//!
//! ```text
//! struct Square;                                   // y = x * x
//! impl<B: Backend> TapeOp<B> for Square {
//!     fn name(&self) -> &'static str { "square" }
//!     fn cast_policy(&self) -> CastPolicy { CastPolicy::Promote }
//!     fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
//!         let x = cx.value(0)?;
//!         let mut y = cx.alloc(cx.out_dtype(), x.len)?;
//!         cx.backend().binary(BinaryOp::Mul, x, x, y.view_mut())?;
//!         Ok(Output::new(y, cx.shape(0)))
//!     }
//!     fn backward(&self, cx: &Backward<'_, '_, B>, grads: &mut Grads<'_, '_, B>) -> Result<()> {
//!         let mut t = cx.alloc(DType::F32, cx.value(0)?.len)?;            // 2 x dy
//!         cx.backend().binary(BinaryOp::Mul, cx.value(0)?, cx.dy()?, t.view_mut())?;
//!         grads.add_scaled(0, 2.0, t.view())
//!     }
//! }
//! let y = tape.apply(Square, &[x])?;
//! ```
//!
//! (`crates/mp-autograd/examples/custom_op.rs` is this op outside the crate, checked with
//! [`crate::gradcheck`].)

use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, DeviceBuffer, View, ViewMut};

use crate::policy::CastPolicy;
use crate::tape::{GradLoc, Tape};
use crate::{AutogradError, Result};

/// A differentiable op that a [`Tape`] can record (see the module docs).
///
/// The op value itself holds whatever its forward saves for the backward (statistics,
/// probabilities, a seed); the tape keeps it only while a gradient may still need it.
pub trait TapeOp<B: Backend> {
    /// The op's name in messages.
    fn name(&self) -> &'static str;

    /// Its autocast category: how the tape brings its inputs to a dtype and which dtype its
    /// output has (see [`CastPolicy`]).
    fn cast_policy(&self) -> CastPolicy;

    /// True when the output is a scalar loss: [`Tape::backward`] starts from it with a host
    /// seed (see [`Backward::seed`]), and no other op may take it as an input.
    fn is_loss(&self) -> bool {
        false
    }

    /// Computes the output from the inputs (already cast as the category says). The output's
    /// buffer should have [`Forward::out_dtype`].
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>>;

    /// Adds each input's gradient (only those that [`Grads::needs`] one) from the output's
    /// gradient [`Backward::dy`] (or the seed of a loss).
    fn backward(&self, cx: &Backward<'_, '_, B>, grads: &mut Grads<'_, '_, B>) -> Result<()>;

    /// The input whose gradient contribution is the output's gradient itself (factor 1, the
    /// output's shape), as for the first operand of `a + b`: the tape hands the output's
    /// gradient buffer over to that input after [`TapeOp::backward`] ran (moving it, no copy,
    /// when it is the input's first contribution in its dtype), and during `backward` the
    /// [`Grads`] calls for that input do nothing. `None` (the default): the op adds every
    /// input's gradient itself.
    fn passes_dy_to(&self) -> Option<usize> {
        None
    }

    /// Device bytes the op holds for its backward (counted by [`Tape::activation_bytes`]).
    fn saved_bytes(&self) -> usize {
        0
    }

    /// The activations of the output's shape the op keeps inside itself for its backward
    /// (as `linear_gelu` keeps the GELU's input), each with a name for it: listed by
    /// [`Tape::saved_activations`] beside the tape's own (statistics such as a norm's are not
    /// activations and are not listed).
    fn saved_activations(&self) -> Vec<(&'static str, View<'_, B::Buffer>)> {
        Vec::new()
    }
}

/// What a forward produces: the output's buffer and shape.
pub struct Output<B: Backend> {
    /// The output's elements.
    pub value: B::Buffer,
    /// Its row-major shape (`[]` for a scalar).
    pub shape: Vec<usize>,
}

impl<B: Backend> Output<B> {
    /// An output of `shape` held in `value`.
    pub fn new(value: B::Buffer, shape: &[usize]) -> Self {
        Output {
            value,
            shape: shape.to_vec(),
        }
    }
}

/// An op's inputs, as both its forward and its backward read them (through
/// [`Forward`] and [`Backward`], which dereference to this).
pub struct Inputs<'t, 'a, B: Backend> {
    pub(crate) tape: &'t Tape<'a, B>,
    pub(crate) inputs: &'t [usize],
}

impl<'t, B: Backend> Inputs<'t, '_, B> {
    /// The backend.
    pub fn backend(&self) -> &'t B {
        self.tape.backend()
    }

    /// Number of inputs.
    pub fn inputs(&self) -> usize {
        self.inputs.len()
    }

    /// The shape of input `i`.
    pub fn shape(&self, i: usize) -> &'t [usize] {
        &self.tape.nodes[self.inputs[i]].shape
    }

    /// The storage dtype of input `i` (after autocast).
    pub fn dtype(&self, i: usize) -> DType {
        self.tape.nodes[self.inputs[i]].dtype
    }

    /// The elements of input `i`.
    pub fn value(&self, i: usize) -> Result<View<'t, B::Buffer>> {
        self.tape.val(self.inputs[i])
    }

    /// A buffer whose every element the op writes (contents unspecified).
    pub fn alloc(&self, dtype: DType, len: usize) -> Result<B::Buffer> {
        Ok(self.backend().uninit(dtype, len)?)
    }

    /// A zero-filled buffer.
    pub fn zeros(&self, dtype: DType, len: usize) -> Result<B::Buffer> {
        Ok(self.backend().zeros(dtype, len)?)
    }
}

/// What an op's forward sees: its inputs after autocast ([`Inputs`]) and the output dtype.
pub struct Forward<'t, 'a, B: Backend> {
    pub(crate) ins: Inputs<'t, 'a, B>,
    pub(crate) out_dtype: DType,
    pub(crate) name: &'static str,
}

impl<'t, 'a, B: Backend> std::ops::Deref for Forward<'t, 'a, B> {
    type Target = Inputs<'t, 'a, B>;
    fn deref(&self) -> &Self::Target {
        &self.ins
    }
}

impl<B: Backend> Forward<'_, '_, B> {
    /// The dtype the autocast policy chose for the output.
    pub fn out_dtype(&self) -> DType {
        self.out_dtype
    }

    /// True when the tape records gradients (training); false under [`Tape::no_grad`].
    pub fn grad_enabled(&self) -> bool {
        self.tape.grad_enabled()
    }

    /// True when the backward pass will want input `i`'s gradient (gradients are enabled and
    /// the input leads to a parameter).
    pub fn needs_grad(&self, i: usize) -> bool {
        self.tape.grad_enabled() && self.tape.nodes[self.inputs[i]].grad != GradLoc::None
    }

    /// The seed the backward pass is expected to get ([`Tape::with_loss_seed`]).
    pub fn loss_seed(&self) -> f32 {
        self.tape.loss_seed()
    }

    /// A shape error naming this op.
    pub fn shape_err(&self, msg: impl Into<String>) -> AutogradError {
        AutogradError::Shape {
            op: self.name,
            device: self.backend().name(),
            msg: msg.into(),
        }
    }
}

/// What an op's backward reads: its inputs ([`Inputs`]), its output and the output's gradient.
pub struct Backward<'t, 'a, B: Backend> {
    pub(crate) ins: Inputs<'t, 'a, B>,
    pub(crate) node: usize,
    pub(crate) dy: Option<&'t B::Buffer>,
    pub(crate) seed: f32,
    pub(crate) name: &'static str,
}

impl<'t, 'a, B: Backend> std::ops::Deref for Backward<'t, 'a, B> {
    type Target = Inputs<'t, 'a, B>;
    fn deref(&self) -> &Self::Target {
        &self.ins
    }
}

impl<'t, B: Backend> Backward<'t, '_, B> {
    /// The op's own output (still alive while its backward runs).
    pub fn output(&self) -> Result<View<'t, B::Buffer>> {
        self.ins.tape.val(self.node)
    }

    /// The shape of the output.
    pub fn out_shape(&self) -> &'t [usize] {
        &self.ins.tape.nodes[self.node].shape
    }

    /// The gradient of the objective with respect to the output (the output's shape, the
    /// output's dtype). A loss op has none: it reads [`Backward::seed`].
    pub fn dy(&self) -> Result<View<'t, B::Buffer>> {
        self.dy
            .map(|d| d.view())
            .ok_or_else(|| AutogradError::Backward {
                device: self.backend().name(),
                msg: format!(
                    "{} has no output gradient (a loss reads the seed)",
                    self.name
                ),
            })
    }

    /// The seed given to [`Tape::backward`] (the loss scale): the gradient of a loss output.
    pub fn seed(&self) -> f32 {
        self.seed
    }
}

/// Where an op's backward adds its inputs' gradients.
///
/// A parameter's gradient (and a cast parameter's) is its slice of the flat gradient arena;
/// an activation's is a buffer of its dtype, allocated zeroed when first written. Every
/// method adds (`+=`): an input used twice receives both contributions.
pub struct Grads<'g, 'a, B: Backend> {
    pub(crate) tape: &'g Tape<'a, B>,
    pub(crate) inputs: &'g [usize],
    pub(crate) gs: &'g mut [Option<B::Buffer>],
    pub(crate) arena: &'g mut B::Buffer,
    /// The input the tape gives the output's gradient to after the backward
    /// ([`TapeOp::passes_dy_to`]): the op's calls for it do nothing.
    pub(crate) passed: Option<usize>,
}

impl<B: Backend> Grads<'_, '_, B> {
    /// True when input `i` needs a gradient (false for the input the tape passes the output's
    /// gradient to, see [`TapeOp::passes_dy_to`]).
    pub fn needs(&self, i: usize) -> bool {
        self.passed != Some(i) && self.tape.nodes[self.inputs[i]].grad != GradLoc::None
    }

    /// The gradient of input `i` (allocated zeroed in the input's dtype on first use), or
    /// `None` when nothing needs it. Kernels add into it.
    pub fn get(&mut self, i: usize) -> Result<Option<ViewMut<'_, B::Buffer>>> {
        if self.passed == Some(i) {
            return Ok(None);
        }
        self.tape.grad_of(self.inputs[i], self.gs, self.arena)
    }

    /// The gradient of input `i` for a kernel that can either overwrite it or add into it,
    /// with `beta`: 0.0 when this is the input's first contribution (an activation's gradient
    /// buffer allocated without a zero fill: the kernel must write every element), 1.0 when
    /// it holds earlier ones (or is a parameter's slice of the arena). `None` when nothing
    /// needs it.
    pub fn get_with_beta(&mut self, i: usize) -> Result<Option<(ViewMut<'_, B::Buffer>, f32)>> {
        if self.passed == Some(i) {
            return Ok(None);
        }
        let g = self
            .tape
            .grad_or_fresh(self.inputs[i], self.gs, self.arena, true)?;
        Ok(g.map(|(v, fresh)| (v, if fresh { 0.0 } else { 1.0 })))
    }

    /// `grad(i) += src` (same number of elements; any dtypes).
    pub fn add(&mut self, i: usize, src: View<'_, B::Buffer>) -> Result<()> {
        self.add_scaled(i, 1.0, src)
    }

    /// `grad(i) += alpha * src`.
    pub fn add_scaled(&mut self, i: usize, alpha: f32, src: View<'_, B::Buffer>) -> Result<()> {
        let be = self.tape.backend();
        if let Some(g) = self.get(i)? {
            be.axpy(alpha, src, g)?;
        }
        Ok(())
    }

    /// `grad(i) += buf`, moving `buf` in as the gradient when it is the first contribution
    /// to an activation of the same dtype (no copy), else adding it.
    pub fn add_owned(&mut self, i: usize, buf: B::Buffer) -> Result<()> {
        if self.passed == Some(i) {
            return Ok(());
        }
        let t = self.inputs[i];
        let n = &self.tape.nodes[t];
        if buf.len() != n.numel() {
            return Err(AutogradError::Backward {
                device: self.tape.backend().name(),
                msg: format!(
                    "a gradient of {} elements for an input of shape {:?}",
                    buf.len(),
                    n.shape
                ),
            });
        }
        if n.grad == GradLoc::Own && self.gs[t].is_none() && buf.dtype() == n.dtype {
            self.gs[t] = Some(buf);
            return Ok(());
        }
        self.add(i, buf.view())
    }
}
