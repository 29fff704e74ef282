//! The tape: tensors, recording ops, and the backward pass.
//!
//! A [`Tape`] lives for one step. It borrows the backend, the FP32 master parameter arena and,
//! optionally, the low-precision model copy. Every op is a [`TapeOp`] value recorded by
//! [`Tape::apply`] (the built-in ops of [`crate::ops`] are `Tape` methods that apply theirs):
//! the tape applies the op's autocast category to its inputs, runs its forward, and keeps it
//! when gradients are enabled and an input needs one. [`Tape::backward`] consumes the tape: it
//! walks the ops in reverse, each op adds its inputs' gradients (parameter gradients land
//! directly in the flat gradient arena, at the parameter's offset), and every activation is
//! freed as soon as nothing needs it.
//!
//! Because the tape borrows the parameter arenas immutably for its whole life, a weight cast
//! cached on the tape can never be stale: the optimizer can only run once the tape is gone.
//!
//! A [`Tensor`] names its tape: a handle from another tape, or one that does not exist, is an
//! [`AutogradError::Handle`], never a panic or a silent read of another tensor.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, DeviceBuffer, Rounding, View, ViewMut};

use crate::op::{Backward, Forward, Grads, Inputs, Output, TapeOp};
use crate::policy::{Autocast, CastPolicy, widest};
use crate::{AutogradError, ParamEntry, Result};

/// A handle to a tensor recorded on a [`Tape`]: the tape's identity and the tensor's index.
/// Every tape method checks both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tensor {
    tape: u64,
    index: usize,
}

/// The error a [`GradHook`] returns.
pub type HookResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Told by [`Tape::backward_with`] when parts of the gradient arena are final: a data-parallel
/// trainer starts reducing a bucket of gradients while the rest of the backward pass runs (as
/// PyTorch DDP's autograd hooks do).
///
/// Over one pass the ranges handed to [`GradHook::ready`] are disjoint and cover the whole
/// arena; their order depends only on the recorded graph, so every process running the same
/// model sees the same order.
pub trait GradHook<B: Backend> {
    /// Nothing more of this pass adds into `range` (elements) of `grads`, the gradient arena
    /// given to [`Tape::backward_with`]. The hook may read and write that range.
    fn ready(&mut self, grads: &mut B::Buffer, range: Range<usize>) -> HookResult;

    /// Called after every node of the pass with the same arena, for work in flight to make
    /// progress (a non-blocking collective that advances only when its engine is entered).
    /// The hook may write only ranges already handed to it. Does nothing by default.
    fn progress(&mut self, _grads: &mut B::Buffer) -> HookResult {
        Ok(())
    }
}

/// Identities of tapes, unique within the process.
static NEXT_TAPE: AtomicU64 = AtomicU64::new(1);

/// Where a node's value lives.
pub(crate) enum Value<B: Backend> {
    /// An activation the tape allocated.
    Owned(B::Buffer),
    /// A parameter: this offset of the master arena.
    Master(usize),
    /// A parameter: this offset of the low-precision model copy.
    Model(usize),
    /// The value of another (earlier) node, seen with another shape.
    Alias(usize),
    /// An activation already freed by the backward pass.
    Freed,
}

/// Where a node's gradient goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GradLoc {
    /// Nothing upstream needs it.
    None,
    /// A buffer of the node's dtype, allocated by the backward pass when first written.
    Own,
    /// This offset of the flat gradient arena (parameters and their casts).
    Arena(usize),
    /// The gradient of another (earlier) node: this one is a reshape of it.
    Alias(usize),
}

/// An op kept for the backward pass, with the nodes it read.
struct Recorded<'a, B: Backend> {
    op: Box<dyn TapeOp<B> + 'a>,
    inputs: Vec<usize>,
}

pub(crate) struct Node<'a, B: Backend> {
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) value: Value<B>,
    pub(crate) grad: GradLoc,
    op: Option<Recorded<'a, B>>,
    /// A scalar loss: its gradient is the host seed given to [`Tape::backward`].
    loss: bool,
    /// What made the node: the op's name, or `input`, `param`, `param_cast`, `reshape`.
    made_by: &'static str,
    /// The scope it was made in (an index into [`Tape`]'s scopes; 0: none).
    scope: usize,
}

impl<B: Backend> Node<'_, B> {
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A recording of one forward pass (see the module docs).
pub struct Tape<'a, B: Backend> {
    id: u64,
    be: &'a B,
    master: Option<&'a B::Buffer>,
    model: Option<&'a B::Buffer>,
    pub(crate) nodes: Vec<Node<'a, B>>,
    grad_enabled: bool,
    autocast: Autocast,
    /// `(offset, len)` of a parameter -> its node.
    params: HashMap<(usize, usize), usize>,
    /// `(node, dtype, recording)` -> the node holding its cast.
    casts: HashMap<(usize, DType, bool), usize>,
    /// `(seed, step)` of the random ops (dropout), and how many have drawn from it.
    rng: Option<(u64, u64)>,
    draws: u64,
    /// The seed [`Tape::backward`] is expected to get (see [`Tape::with_loss_seed`]).
    loss_seed: f32,
    /// The names given to [`Tape::set_scope`] (`""` first), and the current one.
    scopes: Vec<String>,
    scope: usize,
}

/// An activation the backward pass will read (see [`Tape::saved_activations`]).
pub struct SavedActivation<'t, B: Backend> {
    /// `scope/op.k`: the scope it was made in, the op that made it, and `k` counting that
    /// op's saved outputs in the scope from 0 (`model.layers.1/linear.2`).
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its storage dtype.
    pub dtype: DType,
    /// Its elements.
    pub view: View<'t, B::Buffer>,
}

pub(crate) fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl<'a, B: Backend> Tape<'a, B> {
    /// An empty tape on `backend`, gradients enabled, no autocast, no parameters.
    pub fn new(backend: &'a B) -> Self {
        Tape {
            id: NEXT_TAPE.fetch_add(1, Ordering::Relaxed),
            be: backend,
            master: None,
            model: None,
            nodes: Vec::new(),
            grad_enabled: true,
            autocast: Autocast::OFF,
            params: HashMap::new(),
            casts: HashMap::new(),
            rng: None,
            draws: 0,
            loss_seed: 1.0,
            scopes: vec![String::new()],
            scope: 0,
        }
    }

    /// Reads parameters from `master` (the FP32 master arena; see [`crate::ParamLayout`]).
    pub fn with_params(mut self, master: &'a B::Buffer) -> Self {
        self.master = Some(master);
        self
    }

    /// Feeds lowered ops their weights from `model`, the low-precision copy of the master arena
    /// (same layout) that the optimizer writes, instead of casting the master weights. It is
    /// used when its dtype is the autocast dtype. Fails when its length differs from the
    /// master arena's.
    pub fn with_model_copy(mut self, model: &'a B::Buffer) -> Result<Self> {
        let master = self.master.ok_or_else(|| AutogradError::Param {
            device: self.be.name(),
            msg: "with_model_copy needs the master arena first (with_params)".into(),
        })?;
        if model.len() != master.len() {
            return Err(AutogradError::Param {
                device: self.be.name(),
                msg: format!(
                    "model copy has {} elements, master arena {}",
                    model.len(),
                    master.len()
                ),
            });
        }
        self.model = Some(model);
        Ok(self)
    }

    /// Sets the autocast dtype for the ops recorded from now on.
    pub fn with_autocast(mut self, autocast: Autocast) -> Self {
        self.autocast = autocast;
        self
    }

    /// Seeds the tape's random ops ([`Tape::dropout`]): the `k`-th random op of the tape draws
    /// its bits from `(seed, step, k, element index)`, so a run is reproducible and every step
    /// and every layer gets its own mask.
    pub fn with_rng(mut self, seed: u64, step: u64) -> Self {
        self.rng = Some((seed, step));
        self
    }

    /// Announces the seed the coming [`Tape::backward`] will get (the loss scale over the
    /// accumulation steps; 1 by default), so that a loss can compute its gradient during the
    /// forward pass, fused with the loss ([`Tape::cross_entropy`]). A backward with another seed
    /// stays correct: the early gradient is rescaled, at the cost of one more pass.
    pub fn with_loss_seed(mut self, seed: f32) -> Self {
        self.loss_seed = seed;
        self
    }

    /// The seed announced by [`Tape::with_loss_seed`].
    pub fn loss_seed(&self) -> f32 {
        self.loss_seed
    }

    /// The backend.
    pub fn backend(&self) -> &'a B {
        self.be
    }

    /// The current autocast setting.
    pub fn autocast_setting(&self) -> Autocast {
        self.autocast
    }

    /// Sets the autocast dtype for the ops recorded from now on.
    pub fn set_autocast(&mut self, autocast: Autocast) {
        self.autocast = autocast;
    }

    /// Runs `f` with `autocast` in force, then restores the previous setting.
    pub fn autocast<R>(&mut self, autocast: Autocast, f: impl FnOnce(&mut Self) -> R) -> R {
        let saved = std::mem::replace(&mut self.autocast, autocast);
        let r = f(self);
        self.autocast = saved;
        r
    }

    /// Runs `f` without recording anything for backward (outputs need no gradient; dropout
    /// is the identity), then restores the previous setting.
    pub fn no_grad<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let saved = std::mem::replace(&mut self.grad_enabled, false);
        let r = f(self);
        self.grad_enabled = saved;
        r
    }

    /// True when ops record their backward.
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    // ----- tensors ------------------------------------------------------------------------

    /// The node of `t`, or a [`AutogradError::Handle`] naming `op` when `t` is not a tensor
    /// of this tape.
    pub(crate) fn node(&self, op: &'static str, t: Tensor) -> Result<usize> {
        if t.tape != self.id {
            return Err(self.handle_err(op, "the tensor belongs to another tape".into()));
        }
        if t.index >= self.nodes.len() {
            let msg = format!("tensor {} does not exist on this tape", t.index);
            return Err(self.handle_err(op, msg));
        }
        Ok(t.index)
    }

    fn handle_err(&self, op: &'static str, msg: String) -> AutogradError {
        AutogradError::Handle {
            op,
            device: self.be.name(),
            msg,
        }
    }

    fn tensor(&self, index: usize) -> Tensor {
        Tensor {
            tape: self.id,
            index,
        }
    }

    /// The shape of `t`.
    pub fn shape(&self, t: Tensor) -> Result<&[usize]> {
        Ok(&self.nodes[self.node("shape", t)?].shape)
    }

    /// The storage dtype of `t`.
    pub fn dtype(&self, t: Tensor) -> Result<DType> {
        Ok(self.nodes[self.node("dtype", t)?].dtype)
    }

    /// The device view of `t`'s elements.
    pub fn view(&self, t: Tensor) -> Result<View<'_, B::Buffer>> {
        self.val(self.node("view", t)?)
    }

    /// `t`'s elements widened to f32 (waits for the device).
    pub fn to_vec_f32(&self, t: Tensor) -> Result<Vec<f32>> {
        Ok(self.be.download_f32(self.view(t)?)?)
    }

    /// Bytes of device memory the tape holds: activations plus what ops saved for backward
    /// (layer-norm statistics, attention probabilities); parameters are not counted.
    pub fn activation_bytes(&self) -> usize {
        let bytes = |b: &B::Buffer| b.len() * b.dtype().size_in_bytes();
        self.nodes
            .iter()
            .map(|n| {
                let value = match &n.value {
                    Value::Owned(b) => bytes(b),
                    _ => 0,
                };
                value + n.op.as_ref().map_or(0, |r| r.op.saved_bytes())
            })
            .sum()
    }

    /// Names the part of the model that the nodes recorded from now on belong to (a layer's
    /// HF prefix, `model.layers.3`; `""`: none), for [`Tape::saved_activations`].
    pub fn set_scope(&mut self, name: &str) {
        self.scope = match self.scopes.iter().position(|s| s == name) {
            Some(i) => i,
            None => {
                self.scopes.push(name.to_string());
                self.scopes.len() - 1
            }
        };
    }

    /// The activations the backward pass will read, in recording order: every buffer the
    /// tape allocated (op outputs and their autocast casts; not inputs, parameters or their
    /// casts) that a recorded op took as an input, and the activations ops keep inside
    /// themselves ([`crate::TapeOp::saved_activations`], named `scope/op.k/what`, before the
    /// op's output). The statistics ops keep (the norms' and attention's FP32 row statistics)
    /// are not listed. Named `scope/op.k` (see [`SavedActivation::name`]).
    pub fn saved_activations(&self) -> Vec<SavedActivation<'_, B>> {
        let mut read = vec![false; self.nodes.len()];
        for r in self.nodes.iter().filter_map(|n| n.op.as_ref()) {
            r.inputs.iter().for_each(|&i| read[i] = true);
        }
        let mut counts: HashMap<(usize, &'static str), usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let inner =
                n.op.as_ref()
                    .map_or_else(Vec::new, |r| r.op.saved_activations());
            let own = match &n.value {
                Value::Owned(buf) if read[i] && !matches!(n.made_by, "input" | "param_cast") => {
                    Some(buf.view())
                }
                _ => None,
            };
            if inner.is_empty() && own.is_none() {
                continue;
            }
            let k = counts.entry((n.scope, n.made_by)).or_default();
            let scope = &self.scopes[n.scope];
            let sep = if scope.is_empty() { "" } else { "/" };
            let name = format!("{scope}{sep}{}.{k}", n.made_by);
            for (what, view) in inner {
                out.push(SavedActivation {
                    name: format!("{name}/{what}"),
                    shape: n.shape.clone(),
                    dtype: view.dtype(),
                    view,
                });
            }
            if let Some(view) = own {
                out.push(SavedActivation {
                    name,
                    shape: n.shape.clone(),
                    dtype: n.dtype,
                    view,
                });
            }
            *k += 1;
        }
        out
    }

    /// Frees the value of `t` (and of its autocast copies) now, unless something recorded for
    /// the backward pass reads it or another tensor is a reshape of it: a hint that the
    /// caller will not read `t` again. Under [`Tape::no_grad`] (inference, evaluation) nothing
    /// is recorded, so activations go at their last use instead of living until the tape
    /// drops; while recording it frees only what the backward never needs. Reading a released
    /// tensor afterwards is an error naming it.
    pub fn release(&mut self, t: Tensor) -> Result<()> {
        let i = self.node("release", t)?;
        let casts: Vec<usize> = self
            .casts
            .iter()
            .filter(|((src, _, _), _)| *src == i)
            .map(|(_, &c)| c)
            .collect();
        for n in std::iter::once(i).chain(casts) {
            if !self.read_later(n) {
                self.nodes[n].value = Value::Freed;
            }
        }
        Ok(())
    }

    /// Whether node `n`'s value may still be read: it is not an owned activation, the
    /// backward pass reads it (an input of a recorded op, or a recorded op's own output), or
    /// another node is a reshape of it.
    fn read_later(&self, n: usize) -> bool {
        if !matches!(self.nodes[n].value, Value::Owned(_)) || self.nodes[n].op.is_some() {
            return true;
        }
        self.nodes.iter().any(|m| {
            matches!(m.value, Value::Alias(src) if src == n)
                || m.op.as_ref().is_some_and(|r| r.inputs.contains(&n))
        })
    }

    /// A leaf tensor holding `buffer` (data: no gradient).
    pub fn input(&mut self, buffer: B::Buffer, shape: &[usize]) -> Result<Tensor> {
        if buffer.len() != numel(shape) {
            return Err(self.shape_err(
                "input",
                format!("buffer of {} elements for shape {shape:?}", buffer.len()),
            ));
        }
        Ok(self.leaf(
            shape,
            buffer.dtype(),
            Value::Owned(buffer),
            GradLoc::None,
            "input",
        ))
    }

    /// The parameter `entry` of the master arena. Its gradient goes to the same offset of the
    /// gradient arena given to [`Tape::backward`] (when gradients are enabled).
    pub fn param(&mut self, entry: &ParamEntry) -> Result<Tensor> {
        self.param_at(entry.offset, &entry.shape)
    }

    /// The parameter of shape `shape` at element `offset` of the master arena.
    pub fn param_at(&mut self, offset: usize, shape: &[usize]) -> Result<Tensor> {
        let len = numel(shape);
        let master = self.master.ok_or_else(|| AutogradError::Param {
            device: self.be.name(),
            msg: "the tape has no parameter arena (use Tape::with_params)".into(),
        })?;
        if offset.checked_add(len).is_none_or(|end| end > master.len()) {
            return Err(AutogradError::Param {
                device: self.be.name(),
                msg: format!(
                    "parameter {offset}+{len} outside the {}-element arena",
                    master.len()
                ),
            });
        }
        if let Some(&id) = self.params.get(&(offset, len))
            && self.nodes[id].shape == shape
        {
            return Ok(self.tensor(id));
        }
        let grad = if self.grad_enabled {
            GradLoc::Arena(offset)
        } else {
            GradLoc::None
        };
        let t = self.leaf(shape, master.dtype(), Value::Master(offset), grad, "param");
        self.params.insert((offset, len), t.index);
        Ok(t)
    }

    /// `x` converted to `dtype` (round to nearest even); differentiable. Parameters are cast
    /// once per tape, or taken from the model copy when its dtype is `dtype`.
    pub fn cast(&mut self, x: Tensor, dtype: DType) -> Result<Tensor> {
        let x = self.node("cast", x)?;
        self.cast_node(x, dtype).map(|i| self.tensor(i))
    }

    /// `x` seen with another shape of the same number of elements (no copy; gradients flow
    /// to `x`).
    pub fn reshape(&mut self, x: Tensor, shape: &[usize]) -> Result<Tensor> {
        let xi = self.node("reshape", x)?;
        let n = &self.nodes[xi];
        if numel(shape) != n.numel() || n.loss {
            let msg = format!("{:?} to {shape:?}", n.shape);
            return Err(self.shape_err("reshape", msg));
        }
        let grad = match n.grad {
            _ if !self.grad_enabled => GradLoc::None,
            GradLoc::Own => GradLoc::Alias(xi),
            g => g,
        };
        let (dtype, src) = (
            n.dtype,
            match n.value {
                Value::Alias(src) => src,
                _ => xi,
            },
        );
        Ok(self.leaf(shape, dtype, Value::Alias(src), grad, "reshape"))
    }

    // ----- recording ops ------------------------------------------------------------------

    /// Records `op` applied to `inputs`: checks the handles, refuses a loss as an input,
    /// applies the op's autocast category, runs its forward and keeps the op for the backward
    /// pass when gradients are enabled and an input needs one. Returns the output.
    pub fn apply<O: TapeOp<B> + 'a>(&mut self, mut op: O, inputs: &[Tensor]) -> Result<Tensor> {
        let name = op.name();
        let raw = inputs
            .iter()
            .map(|&t| self.node(name, t))
            .collect::<Result<Vec<_>>>()?;
        if raw.iter().any(|&i| self.nodes[i].loss) {
            let msg = format!("{name}: a loss can only be passed to backward, not to an op");
            return Err(self.backward_err(&msg));
        }
        let (ins, out_dtype) = self.autocast_inputs(op.cast_policy(), &raw)?;
        let out = {
            let cx = Forward {
                ins: Inputs {
                    tape: self,
                    inputs: &ins,
                },
                out_dtype,
                name,
            };
            op.forward(&cx)?
        };
        let Output { value, shape } = out;
        if value.len() != numel(&shape) {
            let msg = format!(
                "the forward returned {} elements for shape {shape:?}",
                value.len()
            );
            return Err(self.shape_err(name, msg));
        }
        if op.is_loss() && !shape.is_empty() {
            let msg = format!("a loss must be a scalar, got shape {shape:?}");
            return Err(self.shape_err(name, msg));
        }
        let dtype = value.dtype();
        let t = self.leaf(&shape, dtype, Value::Owned(value), GradLoc::None, name);
        let node = &mut self.nodes[t.index];
        node.loss = op.is_loss();
        let needs = self.grad_enabled && ins.iter().any(|&i| self.nodes[i].grad != GradLoc::None);
        if needs {
            let node = &mut self.nodes[t.index];
            node.grad = GradLoc::Own;
            node.op = Some(Recorded {
                op: Box::new(op),
                inputs: ins,
            });
        }
        Ok(t)
    }

    /// A fresh 64-bit seed for the next random op (see [`Tape::with_rng`]), or an error naming
    /// `op` when the tape was given none.
    pub fn next_seed(&mut self, op: &'static str) -> Result<u64> {
        let (seed, step) = self.rng.ok_or_else(|| {
            self.shape_err(
                op,
                "the tape has no random seed (use Tape::with_rng(seed, step))".into(),
            )
        })?;
        let k = self.draws;
        self.draws += 1;
        Ok(splitmix(seed ^ splitmix(step ^ splitmix(k))))
    }

    // ----- backward -----------------------------------------------------------------------

    /// Back-propagates from `loss` (a loss op's output: [`Tape::cross_entropy`],
    /// [`Tape::mse_loss`], [`Tape::sum`], [`Tape::mean`], or a user op whose
    /// [`TapeOp::is_loss`]) with seed gradient `seed` (the loss scale; 1 for plain training),
    /// adding every parameter's gradient into `grads` at its offset. `grads` has the master
    /// arena's length and any float dtype; it is not zeroed here, so gradients accumulate
    /// across micro-batches. Consumes the tape, freeing activations as soon as the pass no
    /// longer needs them.
    pub fn backward(self, loss: Tensor, seed: f32, grads: &mut B::Buffer) -> Result<()> {
        self.backward_with(loss, seed, grads, None)
    }

    /// [`Tape::backward`] that tells `hook` when each range of the gradient arena is final
    /// (see [`GradHook`]): a range is handed over as soon as every op that adds into it has
    /// run, and before the pass returns every element of the arena has been handed over
    /// exactly once (ranges no op writes, first). When the pass fails part-way, the ranges not
    /// yet handed over are not.
    pub fn backward_with(
        mut self,
        loss: Tensor,
        seed: f32,
        grads: &mut B::Buffer,
        mut hook: Option<&mut dyn GradHook<B>>,
    ) -> Result<()> {
        let root = self.node("backward", loss)?;
        if !self.nodes[root].loss {
            return Err(self.backward_err("the root is not a loss (cross_entropy, sum, ...)"));
        }
        if let Some(master) = self.master
            && master.len() != grads.len()
        {
            let msg = format!(
                "gradient arena has {} elements, parameter arena {}",
                grads.len(),
                master.len()
            );
            return Err(self.backward_err(&msg));
        }
        let mut gs: Vec<Option<B::Buffer>> = (0..self.nodes.len()).map(|_| None).collect();
        // (node after which the range is final, range), latest node first
        let finals = match hook {
            Some(_) => self.final_ranges(root, grads.len()),
            None => Vec::new(),
        };
        let mut next_final = 0;
        let device = self.be.name();
        let hook_err = |e| AutogradError::Hook {
            device: device.clone(),
            source: e,
        };
        if let Some(h) = hook.as_deref_mut() {
            while let Some((None, r)) = finals.get(next_final) {
                h.ready(grads, r.clone()).map_err(hook_err)?;
                next_final += 1;
            }
        }
        for i in (0..=root).rev() {
            let dy = gs[i].take();
            let reached = i == root || dy.is_some();
            if reached
                && !(self.nodes[i].loss && i != root)
                && let Some(rec) = self.nodes[i].op.take()
            {
                let name = rec.op.name();
                let passed = rec.op.passes_dy_to().filter(|_| dy.is_some());
                let mut g = Grads {
                    tape: &self,
                    inputs: &rec.inputs,
                    gs: &mut gs,
                    arena: grads,
                    passed,
                };
                {
                    let cx = Backward {
                        ins: Inputs {
                            tape: &self,
                            inputs: &rec.inputs,
                        },
                        node: i,
                        dy: dy.as_ref(),
                        seed,
                        name,
                    };
                    rec.op.backward(&cx, &mut g)?;
                }
                // the output's gradient itself goes to the pass-through input: moved in when
                // it is that input's first contribution in its dtype, else added
                if let (Some(k), Some(dy)) = (passed, dy) {
                    g.passed = None;
                    if g.needs(k) {
                        g.add_owned(k, dy)?;
                    }
                }
            }
            // Every consumer of node i has already run: its value can go.
            if let Value::Owned(_) = self.nodes[i].value {
                self.nodes[i].value = Value::Freed;
            }
            if let Some(h) = hook.as_deref_mut() {
                while let Some((Some(at), r)) = finals.get(next_final)
                    && *at == i
                {
                    h.ready(grads, r.clone()).map_err(hook_err)?;
                    next_final += 1;
                }
                h.progress(grads).map_err(hook_err)?;
            }
        }
        Ok(())
    }

    /// The ranges of an `len`-element gradient arena in the order the backward pass from
    /// `root` finishes them: disjoint, covering `0..len`, each with the node after whose
    /// backward nothing adds into it (`None`: no op does). A range is the union of the
    /// parameter ranges that overlap, final after the earliest op reading any of them.
    fn final_ranges(&self, root: usize, len: usize) -> Vec<(Option<usize>, Range<usize>)> {
        let mut written: Vec<(Range<usize>, usize)> = Vec::new();
        for (j, node) in self.nodes.iter().enumerate().take(root + 1) {
            let Some(rec) = &node.op else { continue };
            for &k in &rec.inputs {
                if let Some(o) = self.arena_offset(k)
                    && self.nodes[k].numel() > 0
                {
                    written.push((o..o + self.nodes[k].numel(), j));
                }
            }
        }
        written.sort_by_key(|(r, _)| (r.start, r.end));
        let mut merged: Vec<(Option<usize>, Range<usize>)> = Vec::new();
        let mut at = 0;
        for (r, j) in written {
            match merged.last_mut() {
                Some((Some(last), m)) if r.start < m.end => {
                    m.end = m.end.max(r.end);
                    *last = (*last).min(j);
                }
                _ => {
                    if r.start > at {
                        merged.push((None, at..r.start));
                    }
                    merged.push((Some(j), r.clone()));
                }
            }
            at = at.max(r.end);
        }
        if at < len {
            merged.push((None, at..len));
        }
        // untouched ranges first, then by the node that finishes them, latest first
        merged.sort_by_key(|(j, r)| (j.map(std::cmp::Reverse), r.start));
        merged
    }

    /// The gradient-arena offset node `t`'s gradient goes to, following reshapes.
    fn arena_offset(&self, t: usize) -> Option<usize> {
        match self.nodes[t].grad {
            GradLoc::Arena(o) => Some(o),
            GradLoc::Alias(src) => self.arena_offset(src),
            GradLoc::None | GradLoc::Own => None,
        }
    }

    /// The gradient buffer of node `t`, allocated (zeroed, in the node's dtype) on first use;
    /// `None` when nothing needs it.
    pub(crate) fn grad_of<'g>(
        &self,
        t: usize,
        gs: &'g mut [Option<B::Buffer>],
        arena: &'g mut B::Buffer,
    ) -> Result<Option<ViewMut<'g, B::Buffer>>> {
        Ok(self.grad_or_fresh(t, gs, arena, false)?.map(|(g, _)| g))
    }

    /// [`Tape::grad_of`], and whether the gradient is fresh: with `may_skip_zeros`, an
    /// activation's first gradient buffer is allocated without its zero fill, returned with
    /// `true`, and the caller overwrites every element of it.
    pub(crate) fn grad_or_fresh<'g>(
        &self,
        t: usize,
        gs: &'g mut [Option<B::Buffer>],
        arena: &'g mut B::Buffer,
        may_skip_zeros: bool,
    ) -> Result<Option<(ViewMut<'g, B::Buffer>, bool)>> {
        let n = &self.nodes[t];
        match n.grad {
            GradLoc::None => Ok(None),
            GradLoc::Arena(o) => Ok(Some((arena.slice_mut(o, n.numel()), false))),
            GradLoc::Alias(src) => self.grad_or_fresh(src, gs, arena, may_skip_zeros),
            GradLoc::Own => {
                let fresh = gs[t].is_none();
                if fresh {
                    gs[t] = Some(match may_skip_zeros {
                        true => self.be.uninit(n.dtype, n.numel())?,
                        false => self.be.zeros(n.dtype, n.numel())?,
                    });
                }
                Ok(gs[t]
                    .as_mut()
                    .map(|g| (g.view_mut(), fresh && may_skip_zeros)))
            }
        }
    }

    // ----- helpers ------------------------------------------------------------------------

    pub(crate) fn val(&self, t: usize) -> Result<View<'_, B::Buffer>> {
        let n = &self.nodes[t];
        let param = |arena: Option<&'a B::Buffer>, o: usize| {
            arena
                .map(|a| a.slice(o, n.numel()))
                .ok_or_else(|| self.backward_err("a parameter without its arena"))
        };
        match &n.value {
            Value::Owned(b) => Ok(b.view()),
            &Value::Master(o) => param(self.master, o),
            &Value::Model(o) => param(self.model, o),
            &Value::Alias(src) => self.val(src),
            Value::Freed => Err(self.backward_err(&format!(
                "tensor {t} was read after it was freed (by the backward pass or Tape::release)"
            ))),
        }
    }

    fn leaf(
        &mut self,
        shape: &[usize],
        dtype: DType,
        value: Value<B>,
        grad: GradLoc,
        made_by: &'static str,
    ) -> Tensor {
        self.nodes.push(Node {
            shape: shape.to_vec(),
            dtype,
            value,
            grad,
            op: None,
            loss: false,
            made_by,
            scope: self.scope,
        });
        self.tensor(self.nodes.len() - 1)
    }

    /// Applies the autocast category `policy`: the (possibly cast) inputs and the output dtype.
    fn autocast_inputs(
        &mut self,
        policy: CastPolicy,
        inputs: &[usize],
    ) -> Result<(Vec<usize>, DType)> {
        let wide = inputs
            .iter()
            .map(|&i| self.nodes[i].dtype)
            .reduce(widest)
            .unwrap_or(DType::F32);
        let low = self.autocast.dtype;
        Ok(match policy {
            CastPolicy::Lower => {
                let target = low.unwrap_or(wide);
                let ins = inputs
                    .iter()
                    .map(|&i| self.cast_node(i, target))
                    .collect::<Result<_>>()?;
                (ins, target)
            }
            CastPolicy::Fp32 => (inputs.to_vec(), DType::F32),
            CastPolicy::Fp32LowOut => (inputs.to_vec(), low.unwrap_or(DType::F32)),
            CastPolicy::Promote => (inputs.to_vec(), wide),
        })
    }

    /// Node `t` in `dtype`: itself, a cached cast, or the model-copy view of a parameter.
    fn cast_node(&mut self, t: usize, dtype: DType) -> Result<usize> {
        if self.nodes[t].dtype == dtype {
            return Ok(t);
        }
        if self.nodes[t].loss {
            return Err(self.backward_err("cast: a loss can only be passed to backward"));
        }
        let key = (t, dtype, self.grad_enabled);
        if let Some(&c) = self.casts.get(&key) {
            return Ok(c);
        }
        let src_grad = if self.grad_enabled {
            self.nodes[t].grad
        } else {
            GradLoc::None
        };
        let shape = self.nodes[t].shape.clone();
        let c = match (&self.nodes[t].value, self.model) {
            (&Value::Master(o), Some(m)) if m.dtype() == dtype => {
                self.leaf(&shape, dtype, Value::Model(o), src_grad, "param")
                    .index
            }
            _ => match src_grad {
                // A cast parameter's gradient is the parameter's gradient: the kernels
                // accumulate straight into the arena (FP32 accumulation, no low copy).
                GradLoc::Arena(_) | GradLoc::None => {
                    let mut out = self.be.uninit(dtype, numel(&shape))?;
                    self.be
                        .cast(self.val(t)?, out.view_mut(), Rounding::NearestEven)?;
                    self.leaf(&shape, dtype, Value::Owned(out), src_grad, "param_cast")
                        .index
                }
                // an activation's cast is an op of its own (src_grad is only Own or Alias
                // while gradients are enabled, so it is recorded)
                GradLoc::Own | GradLoc::Alias(_) => {
                    self.apply(Cast { dtype }, &[self.tensor(t)])?.index
                }
            },
        };
        self.casts.insert(key, c);
        Ok(c)
    }

    pub(crate) fn shape_err(&self, op: &'static str, msg: String) -> AutogradError {
        AutogradError::Shape {
            op,
            device: self.be.name(),
            msg,
        }
    }

    pub(crate) fn backward_err(&self, msg: &str) -> AutogradError {
        AutogradError::Backward {
            device: self.be.name(),
            msg: msg.to_string(),
        }
    }
}

/// A dtype conversion of an activation: the gradient flows back unchanged (widened or
/// rounded to the input's dtype).
struct Cast {
    dtype: DType,
}

impl<B: Backend> TapeOp<B> for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Promote
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let x = cx.value(0)?;
        let mut out = cx.alloc(self.dtype, x.len)?;
        cx.backend()
            .cast(x, out.view_mut(), Rounding::NearestEven)?;
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, grads: &mut Grads<'_, '_, B>) -> Result<()> {
        grads.add(0, cx.dy()?)
    }
}

/// SplitMix64's finaliser.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
