//! The tape: tensors, the ops that record their backward, and the backward pass.
//!
//! A [`Tape`] lives for one step. It borrows the backend, the FP32 master parameter arena and,
//! optionally, the low-precision model copy; every op allocates its output, runs the backend's
//! fused kernel and, when gradients are enabled and an input needs one, records what its
//! backward needs. [`Tape::backward`] consumes the tape: it walks the ops in reverse, adds each
//! gradient into its inputs' gradients (parameter gradients land directly in the flat gradient
//! arena, at the parameter's offset) and frees every activation as soon as nothing needs it.
//!
//! Because the tape borrows the parameter arenas immutably for its whole life, a weight cast
//! cached on the tape can never be stale: the optimizer can only run once the tape is gone.

use std::collections::HashMap;

use mp_dtype::DType;
use mp_kernels::{
    Attention, Backend, BinaryOp, BufferExt, DeviceBuffer, Gemm, ReduceOp, Rounding, UnaryOp, View,
    ViewMut,
};

use crate::policy::{Autocast, OpKind, Precision, precision, widest};
use crate::{AutogradError, ParamEntry, Result};

/// A handle to a tensor recorded on a [`Tape`] (only meaningful for the tape that made it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tensor(usize);

/// How a linear layer's weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in, out]`, as HF's `Conv1D` (GPT-2): `y = x W`.
    InOut,
    /// `[out, in]`, as `torch.nn.Linear` and a tied embedding used as an output head: `y = x W^T`.
    OutIn,
}

/// Where a node's value lives.
enum Value<B: Backend> {
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
enum GradLoc {
    /// Nothing upstream needs it.
    None,
    /// A buffer of the node's dtype, allocated by the backward pass when first written.
    Own,
    /// This offset of the flat gradient arena (parameters and their casts).
    Arena(usize),
    /// The gradient of another (earlier) node: this one is a reshape of it.
    Alias(usize),
}

/// What an op saved for its backward.
enum Op<'a, B: Backend> {
    Cast {
        x: usize,
    },
    Embedding {
        table: usize,
        ids: &'a B::Index,
    },
    Add {
        a: usize,
        b: usize,
    },
    Mul {
        a: usize,
        b: usize,
    },
    Gelu {
        x: usize,
    },
    LayerNorm {
        x: usize,
        w: usize,
        b: usize,
        mean: B::Buffer,
        rstd: B::Buffer,
    },
    Linear {
        x: usize,
        w: usize,
        b: Option<usize>,
        layout: WeightLayout,
    },
    Attention {
        qkv: usize,
        probs: B::Buffer,
        shape: Attention,
    },
    CrossEntropy {
        logits: usize,
        targets: &'a B::Index,
        vocab: usize,
    },
    Sum {
        x: usize,
    },
}

struct Node<'a, B: Backend> {
    shape: Vec<usize>,
    dtype: DType,
    value: Value<B>,
    grad: GradLoc,
    op: Option<Op<'a, B>>,
    /// A scalar loss: its gradient is the host seed given to [`Tape::backward`].
    loss: bool,
}

impl<B: Backend> Node<'_, B> {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A recording of one forward pass (see the module docs).
pub struct Tape<'a, B: Backend> {
    be: &'a B,
    master: Option<&'a B::Buffer>,
    model: Option<&'a B::Buffer>,
    nodes: Vec<Node<'a, B>>,
    grad_enabled: bool,
    autocast: Autocast,
    /// `(offset, len)` of a parameter -> its node.
    params: HashMap<(usize, usize), usize>,
    /// `(node, dtype, recording)` -> the node holding its cast.
    casts: HashMap<(usize, DType, bool), usize>,
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl<'a, B: Backend> Tape<'a, B> {
    /// An empty tape on `backend`, gradients enabled, no autocast, no parameters.
    pub fn new(backend: &'a B) -> Self {
        Tape {
            be: backend,
            master: None,
            model: None,
            nodes: Vec::new(),
            grad_enabled: true,
            autocast: Autocast::OFF,
            params: HashMap::new(),
            casts: HashMap::new(),
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

    /// Runs `f` without recording anything for backward (outputs need no gradient), then
    /// restores the previous setting.
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

    /// The shape of `t`.
    pub fn shape(&self, t: Tensor) -> &[usize] {
        &self.nodes[t.0].shape
    }

    /// The storage dtype of `t`.
    pub fn dtype(&self, t: Tensor) -> DType {
        self.nodes[t.0].dtype
    }

    /// The device view of `t`'s elements.
    pub fn view(&self, t: Tensor) -> View<'_, B::Buffer> {
        self.val(t.0)
    }

    /// `t`'s elements widened to f32 (waits for the device).
    pub fn to_vec_f32(&self, t: Tensor) -> Result<Vec<f32>> {
        Ok(self.be.download_f32(self.val(t.0))?)
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
                let saved = match &n.op {
                    Some(Op::LayerNorm { mean, rstd, .. }) => bytes(mean) + bytes(rstd),
                    Some(Op::Attention { probs, .. }) => bytes(probs),
                    _ => 0,
                };
                value + saved
            })
            .sum()
    }

    /// A leaf tensor holding `buffer` (data: no gradient).
    pub fn input(&mut self, buffer: B::Buffer, shape: &[usize]) -> Result<Tensor> {
        if buffer.len() != numel(shape) {
            return Err(self.shape_err(
                "input",
                format!("buffer of {} elements for shape {shape:?}", buffer.len()),
            ));
        }
        Ok(self.leaf(shape, buffer.dtype(), Value::Owned(buffer), GradLoc::None))
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
        if offset + len > master.len() {
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
            return Ok(Tensor(id));
        }
        let grad = if self.grad_enabled {
            GradLoc::Arena(offset)
        } else {
            GradLoc::None
        };
        let t = self.leaf(shape, master.dtype(), Value::Master(offset), grad);
        self.params.insert((offset, len), t.0);
        Ok(t)
    }

    /// `x` converted to `dtype` (round to nearest even); differentiable. Parameters are cast
    /// once per tape, or taken from the model copy when its dtype is `dtype`.
    pub fn cast(&mut self, x: Tensor, dtype: DType) -> Result<Tensor> {
        self.cast_node(x.0, dtype).map(Tensor)
    }

    /// `x` seen with another shape of the same number of elements (no copy; gradients flow
    /// to `x`).
    pub fn reshape(&mut self, x: Tensor, shape: &[usize]) -> Result<Tensor> {
        let n = &self.nodes[x.0];
        if numel(shape) != n.numel() || n.loss {
            let msg = format!("{:?} to {shape:?}", n.shape);
            return Err(self.shape_err("reshape", msg));
        }
        let grad = match n.grad {
            _ if !self.grad_enabled => GradLoc::None,
            GradLoc::Own => GradLoc::Alias(x.0),
            g => g,
        };
        let (dtype, src) = (
            n.dtype,
            match n.value {
                Value::Alias(src) => src,
                _ => x.0,
            },
        );
        Ok(self.leaf(shape, dtype, Value::Alias(src), grad))
    }

    // ----- ops ----------------------------------------------------------------------------

    /// `table[ids[i], :]` for `n` ids: `[n, c]` from a `[rows, c]` table (FP32 output).
    pub fn embedding(&mut self, table: Tensor, ids: &'a B::Index, n: usize) -> Result<Tensor> {
        let (ins, dt) = self.autocast_inputs(OpKind::Embedding, &[table.0])?;
        let tshape = self.nodes[ins[0]].shape.clone();
        let [_, c] = tshape[..] else {
            return Err(self.shape_err("embedding", format!("table of shape {tshape:?}")));
        };
        let mut out = self.be.zeros(dt, n * c)?;
        self.be
            .embedding(self.val(ins[0]), ids, c, out.view_mut())?;
        self.record(&[n, c], out, &ins, Op::Embedding { table: ins[0], ids })
    }

    /// `a + b` (same shapes; output in the widest input dtype).
    pub fn add(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(OpKind::Add, a, b)
    }

    /// `a * b` element-wise (same shapes; output in the widest input dtype).
    pub fn mul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.binary(OpKind::Mul, a, b)
    }

    fn binary(&mut self, kind: OpKind, a: Tensor, b: Tensor) -> Result<Tensor> {
        let (ins, dt) = self.autocast_inputs(kind, &[a.0, b.0])?;
        let shape = self.nodes[ins[0]].shape.clone();
        if self.nodes[ins[1]].shape != shape {
            let msg = format!("{shape:?} and {:?}", self.nodes[ins[1]].shape);
            return Err(self.shape_err(kind.name(), msg));
        }
        let mut out = self.be.zeros(dt, numel(&shape))?;
        let (op, saved) = match kind {
            OpKind::Add => (
                BinaryOp::Add,
                Op::Add {
                    a: ins[0],
                    b: ins[1],
                },
            ),
            _ => (
                BinaryOp::Mul,
                Op::Mul {
                    a: ins[0],
                    b: ins[1],
                },
            ),
        };
        self.be
            .binary(op, self.val(ins[0]), self.val(ins[1]), out.view_mut())?;
        self.record(&shape, out, &ins, saved)
    }

    /// GELU (tanh approximation), in the input's dtype.
    pub fn gelu(&mut self, x: Tensor) -> Result<Tensor> {
        let (ins, dt) = self.autocast_inputs(OpKind::Gelu, &[x.0])?;
        let shape = self.nodes[ins[0]].shape.clone();
        let mut out = self.be.zeros(dt, numel(&shape))?;
        self.be
            .unary(UnaryOp::GeluTanh, self.val(ins[0]), out.view_mut())?;
        self.record(&shape, out, &ins, Op::Gelu { x: ins[0] })
    }

    /// Layer norm over the last axis with FP32 statistics.
    pub fn layer_norm(&mut self, x: Tensor, w: Tensor, b: Tensor, eps: f32) -> Result<Tensor> {
        let (ins, dt) = self.autocast_inputs(OpKind::LayerNorm, &[x.0, w.0, b.0])?;
        let shape = self.nodes[ins[0]].shape.clone();
        let c = *shape.last().unwrap_or(&0);
        if c == 0 || self.nodes[ins[1]].shape != [c] || self.nodes[ins[2]].shape != [c] {
            let msg = format!(
                "x {shape:?}, weight {:?}, bias {:?}",
                self.nodes[ins[1]].shape, self.nodes[ins[2]].shape
            );
            return Err(self.shape_err("layer_norm", msg));
        }
        let rows = numel(&shape) / c;
        let mut out = self.be.zeros(dt, rows * c)?;
        let mut mean = self.be.zeros(DType::F32, rows)?;
        let mut rstd = self.be.zeros(DType::F32, rows)?;
        self.be.layer_norm(
            self.val(ins[0]),
            self.val(ins[1]),
            self.val(ins[2]),
            eps,
            out.view_mut(),
            mean.view_mut(),
            rstd.view_mut(),
        )?;
        let op = Op::LayerNorm {
            x: ins[0],
            w: ins[1],
            b: ins[2],
            mean,
            rstd,
        };
        self.record(&shape, out, &ins, op)
    }

    /// `x W + b` over the last axis of `x`, with `W` stored as `layout` says.
    pub fn linear(
        &mut self,
        x: Tensor,
        w: Tensor,
        b: Option<Tensor>,
        layout: WeightLayout,
    ) -> Result<Tensor> {
        let mut raw = vec![x.0, w.0];
        raw.extend(b.map(|b| b.0));
        let (ins, dt) = self.autocast_inputs(OpKind::Linear, &raw)?;
        let xs = self.nodes[ins[0]].shape.clone();
        let ws = self.nodes[ins[1]].shape.clone();
        let (din, dout) = match (layout, &ws[..]) {
            (WeightLayout::InOut, &[i, o]) | (WeightLayout::OutIn, &[o, i]) => (i, o),
            _ => return Err(self.shape_err("linear", format!("weight of shape {ws:?}"))),
        };
        let bias_ok = ins.get(2).is_none_or(|&b| self.nodes[b].shape == [dout]);
        if xs.last() != Some(&din) || !bias_ok {
            let msg = format!("x {xs:?}, weight {ws:?} ({layout:?}), bias of {dout} expected");
            return Err(self.shape_err("linear", msg));
        }
        let rows = numel(&xs) / din;
        let spec = Gemm {
            trans_b: layout == WeightLayout::OutIn,
            ..Gemm::new(rows, dout, din)
        };
        let mut out = self.be.zeros(dt, rows * dout)?;
        match ins.get(2) {
            None => self
                .be
                .gemm(self.val(ins[0]), self.val(ins[1]), out.view_mut(), &spec)?,
            Some(&bias) => {
                // FP32 product, then one rounding after the bias.
                let mut acc = self.be.zeros(DType::F32, rows * dout)?;
                self.be
                    .gemm(self.val(ins[0]), self.val(ins[1]), acc.view_mut(), &spec)?;
                self.be
                    .bias_add(acc.view(), self.val(bias), out.view_mut())?;
            }
        }
        let mut shape = xs;
        *shape.last_mut().expect("checked above") = dout;
        let op = Op::Linear {
            x: ins[0],
            w: ins[1],
            b: ins.get(2).copied(),
            layout,
        };
        self.record(&shape, out, &ins, op)
    }

    /// Causal self-attention of `heads` heads over `qkv` of shape `[b, t, 3c]` (HF GPT-2's
    /// `c_attn` output); returns `[b, t, c]`.
    pub fn attention(&mut self, qkv: Tensor, heads: usize) -> Result<Tensor> {
        let (ins, dt) = self.autocast_inputs(OpKind::Attention, &[qkv.0])?;
        let s = self.nodes[ins[0]].shape.clone();
        let [b, t, c3] = s[..] else {
            return Err(self.shape_err("attention", format!("qkv of shape {s:?}")));
        };
        if c3 % 3 != 0 || heads == 0 || (c3 / 3) % heads != 0 {
            let msg = format!("qkv of shape {s:?} with {heads} heads");
            return Err(self.shape_err("attention", msg));
        }
        let shape = Attention {
            b,
            t,
            c: c3 / 3,
            heads,
        };
        let mut out = self.be.zeros(dt, b * t * shape.c)?;
        let mut probs = self.be.zeros(dt, b * heads * t * t)?;
        self.be
            .attention(self.val(ins[0]), &shape, out.view_mut(), probs.view_mut())?;
        let op = Op::Attention {
            qkv: ins[0],
            probs,
            shape,
        };
        self.record(&[b, t, shape.c], out, &ins, op)
    }

    /// Mean cross-entropy of `logits` (`[.., vocab]`) against `targets` (one per row): a
    /// scalar FP32 loss, to be passed to [`Tape::backward`].
    pub fn cross_entropy(&mut self, logits: Tensor, targets: &'a B::Index) -> Result<Tensor> {
        let (ins, _) = self.autocast_inputs(OpKind::CrossEntropy, &[logits.0])?;
        let shape = &self.nodes[ins[0]].shape;
        let vocab = *shape.last().unwrap_or(&0);
        if vocab == 0 {
            let msg = format!("logits of shape {shape:?}");
            return Err(self.shape_err("cross_entropy", msg));
        }
        let rows = numel(shape) / vocab;
        let mut losses = self.be.zeros(DType::F32, rows)?;
        self.be
            .cross_entropy(self.val(ins[0]), targets, vocab, losses.view_mut())?;
        let mut loss = self.be.zeros(DType::F32, 1)?;
        self.be
            .reduce_rows(ReduceOp::Mean, losses.view(), rows, loss.view_mut())?;
        let op = Op::CrossEntropy {
            logits: ins[0],
            targets,
            vocab,
        };
        let t = self.record(&[], loss, &ins, op)?;
        self.nodes[t.0].loss = true;
        Ok(t)
    }

    /// The sum of all elements of `x`: a scalar FP32 loss, to be passed to [`Tape::backward`].
    pub fn sum(&mut self, x: Tensor) -> Result<Tensor> {
        let (ins, _) = self.autocast_inputs(OpKind::Sum, &[x.0])?;
        let len = self.nodes[ins[0]].numel();
        let mut out = self.be.zeros(DType::F32, 1)?;
        self.be
            .reduce_rows(ReduceOp::Sum, self.val(ins[0]), len.max(1), out.view_mut())?;
        let t = self.record(&[], out, &ins, Op::Sum { x: ins[0] })?;
        self.nodes[t.0].loss = true;
        Ok(t)
    }

    // ----- backward -----------------------------------------------------------------------

    /// Back-propagates from `loss` (made by [`Tape::cross_entropy`] or [`Tape::sum`]) with
    /// seed gradient `seed` (the loss scale; 1 for plain training), adding every parameter's
    /// gradient into `grads` at its offset. `grads` has the master arena's length and any
    /// float dtype; it is not zeroed here, so gradients accumulate across micro-batches.
    /// Consumes the tape, freeing activations as soon as the pass no longer needs them.
    pub fn backward(mut self, loss: Tensor, seed: f32, grads: &mut B::Buffer) -> Result<()> {
        let root = loss.0;
        if !self.nodes[root].loss {
            return Err(self.backward_err("the root is not a loss (cross_entropy or sum)"));
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
        for i in (0..=root).rev() {
            let dy = gs[i].take();
            let reached = if i == root { true } else { dy.is_some() };
            if reached
                && !(self.nodes[i].loss && i != root)
                && let Some(op) = self.nodes[i].op.take()
            {
                self.backward_op(&op, dy.as_ref(), seed, &mut gs, grads)?;
            }
            // Every op's backward reads only its inputs and saved state, never its output,
            // and every consumer of node i has already run: its value can go.
            if let Value::Owned(_) = self.nodes[i].value {
                self.nodes[i].value = Value::Freed;
            }
        }
        Ok(())
    }

    fn backward_op(
        &self,
        op: &Op<'a, B>,
        dy: Option<&B::Buffer>,
        seed: f32,
        gs: &mut [Option<B::Buffer>],
        arena: &mut B::Buffer,
    ) -> Result<()> {
        let be = self.be;
        // Loss ops get the host seed; every other reached op has a device gradient.
        let dyv = || {
            dy.map(|d| d.view())
                .ok_or_else(|| self.backward_err("an op without a gradient buffer"))
        };
        match *op {
            Op::Cast { x } => {
                if let Some(dx) = self.grad_of(x, gs, arena)? {
                    be.axpy(1.0, dyv()?, dx)?;
                }
            }
            Op::Embedding { table, ids } => {
                let c = self.nodes[table].shape[1];
                if let Some(dt) = self.grad_of(table, gs, arena)? {
                    be.embedding_backward(dyv()?, ids, c, dt)?;
                }
            }
            Op::Add { a, b } => {
                for x in [a, b] {
                    if let Some(dx) = self.grad_of(x, gs, arena)? {
                        be.axpy(1.0, dyv()?, dx)?;
                    }
                }
            }
            Op::Mul { a, b } => {
                for (x, other) in [(a, b), (b, a)] {
                    if self.nodes[x].grad != GradLoc::None {
                        let mut tmp = be.zeros(DType::F32, self.nodes[x].numel())?;
                        be.binary(BinaryOp::Mul, dyv()?, self.val(other), tmp.view_mut())?;
                        if let Some(dx) = self.grad_of(x, gs, arena)? {
                            be.axpy(1.0, tmp.view(), dx)?;
                        }
                    }
                }
            }
            Op::Gelu { x } => {
                if let Some(dx) = self.grad_of(x, gs, arena)? {
                    be.unary_backward(UnaryOp::GeluTanh, self.val(x), dyv()?, dx)?;
                }
            }
            Op::LayerNorm {
                x,
                w,
                b,
                ref mean,
                ref rstd,
            } => {
                let c = self.nodes[w].numel();
                let mut dw = be.zeros(DType::F32, c)?;
                let mut db = be.zeros(DType::F32, c)?;
                let (xv, wv, m, r) = (self.val(x), self.val(w), mean.view(), rstd.view());
                match self.grad_of(x, gs, arena)? {
                    Some(dx) => be.layer_norm_backward(
                        dyv()?,
                        xv,
                        wv,
                        m,
                        r,
                        dx,
                        dw.view_mut(),
                        db.view_mut(),
                    )?,
                    None => {
                        let mut dx = be.zeros(self.nodes[x].dtype, self.nodes[x].numel())?;
                        be.layer_norm_backward(
                            dyv()?,
                            xv,
                            wv,
                            m,
                            r,
                            dx.view_mut(),
                            dw.view_mut(),
                            db.view_mut(),
                        )?
                    }
                }
                for (p, g) in [(w, &dw), (b, &db)] {
                    if let Some(dp) = self.grad_of(p, gs, arena)? {
                        be.axpy(1.0, g.view(), dp)?;
                    }
                }
            }
            Op::Linear { x, w, b, layout } => {
                let xs = &self.nodes[x].shape;
                let din = *xs.last().expect("checked in forward");
                let rows = numel(xs) / din;
                let dout = self.nodes[w].numel() / din;
                if let Some(dx) = self.grad_of(x, gs, arena)? {
                    // dx += dy W^T
                    let spec = Gemm {
                        trans_b: layout == WeightLayout::InOut,
                        beta: 1.0,
                        ..Gemm::new(rows, din, dout)
                    };
                    be.gemm(dyv()?, self.val(w), dx, &spec)?;
                }
                if let Some(dw) = self.grad_of(w, gs, arena)? {
                    match layout {
                        // dW[in, out] += x^T dy
                        WeightLayout::InOut => {
                            let spec = Gemm {
                                trans_a: true,
                                beta: 1.0,
                                ..Gemm::new(din, dout, rows)
                            };
                            be.gemm(self.val(x), dyv()?, dw, &spec)?;
                        }
                        // dW[out, in] += dy^T x
                        WeightLayout::OutIn => {
                            let spec = Gemm {
                                trans_a: true,
                                beta: 1.0,
                                ..Gemm::new(dout, din, rows)
                            };
                            be.gemm(dyv()?, self.val(x), dw, &spec)?;
                        }
                    }
                }
                if let Some(b) = b
                    && let Some(db) = self.grad_of(b, gs, arena)?
                {
                    be.sum_cols_acc(dyv()?, db)?;
                }
            }
            Op::Attention {
                qkv,
                ref probs,
                shape,
            } => {
                if let Some(dqkv) = self.grad_of(qkv, gs, arena)? {
                    be.attention_backward(dyv()?, self.val(qkv), probs.view(), &shape, dqkv)?;
                }
            }
            Op::CrossEntropy {
                logits,
                targets,
                vocab,
            } => {
                let rows = self.nodes[logits].numel() / vocab;
                let dloss = seed / rows as f32;
                if self.nodes[logits].grad == GradLoc::Own && gs[logits].is_none() {
                    // The usual case: write the gradient in place.
                    let mut d = be.zeros(self.nodes[logits].dtype, rows * vocab)?;
                    be.cross_entropy_backward(
                        self.val(logits),
                        targets,
                        vocab,
                        dloss,
                        d.view_mut(),
                    )?;
                    gs[logits] = Some(d);
                } else if self.nodes[logits].grad != GradLoc::None {
                    let mut d = be.zeros(DType::F32, rows * vocab)?;
                    be.cross_entropy_backward(
                        self.val(logits),
                        targets,
                        vocab,
                        dloss,
                        d.view_mut(),
                    )?;
                    if let Some(dl) = self.grad_of(logits, gs, arena)? {
                        be.axpy(1.0, d.view(), dl)?;
                    }
                }
            }
            Op::Sum { x } => {
                if self.nodes[x].grad != GradLoc::None {
                    let mut d = be.zeros(DType::F32, self.nodes[x].numel())?;
                    be.fill(d.view_mut(), seed)?;
                    if let Some(dx) = self.grad_of(x, gs, arena)? {
                        be.axpy(1.0, d.view(), dx)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The gradient buffer of node `t`, allocated (zeroed, in the node's dtype) on first use;
    /// `None` when nothing needs it.
    fn grad_of<'g>(
        &self,
        t: usize,
        gs: &'g mut [Option<B::Buffer>],
        arena: &'g mut B::Buffer,
    ) -> Result<Option<ViewMut<'g, B::Buffer>>> {
        let n = &self.nodes[t];
        match n.grad {
            GradLoc::None => Ok(None),
            GradLoc::Arena(o) => Ok(Some(arena.slice_mut(o, n.numel()))),
            GradLoc::Alias(src) => self.grad_of(src, gs, arena),
            GradLoc::Own => {
                if gs[t].is_none() {
                    gs[t] = Some(self.be.zeros(n.dtype, n.numel())?);
                }
                Ok(gs[t].as_mut().map(|g| g.view_mut()))
            }
        }
    }

    // ----- helpers ------------------------------------------------------------------------

    fn val(&self, t: usize) -> View<'_, B::Buffer> {
        let n = &self.nodes[t];
        match &n.value {
            Value::Owned(b) => b.view(),
            Value::Master(o) => self.master.expect("params exist").slice(*o, n.numel()),
            Value::Model(o) => self.model.expect("model copy exists").slice(*o, n.numel()),
            &Value::Alias(src) => self.val(src),
            Value::Freed => panic!("tensor {t} read after the backward pass freed it"),
        }
    }

    fn leaf(&mut self, shape: &[usize], dtype: DType, value: Value<B>, grad: GradLoc) -> Tensor {
        self.nodes.push(Node {
            shape: shape.to_vec(),
            dtype,
            value,
            grad,
            op: None,
            loss: false,
        });
        Tensor(self.nodes.len() - 1)
    }

    /// Appends an op's output; records `op` when gradients are on and an input needs one.
    fn record(
        &mut self,
        shape: &[usize],
        out: B::Buffer,
        inputs: &[usize],
        op: Op<'a, B>,
    ) -> Result<Tensor> {
        if inputs.iter().any(|&i| self.nodes[i].loss) && self.grad_enabled {
            return Err(self.backward_err("a loss can only be passed to backward, not to an op"));
        }
        let needs =
            self.grad_enabled && inputs.iter().any(|&i| self.nodes[i].grad != GradLoc::None);
        let dtype = out.dtype();
        let t = self.leaf(shape, dtype, Value::Owned(out), GradLoc::None);
        if needs {
            self.nodes[t.0].grad = GradLoc::Own;
            self.nodes[t.0].op = Some(op);
        }
        Ok(t)
    }

    /// Applies the autocast policy of `kind`: the (possibly cast) inputs and the output dtype.
    fn autocast_inputs(&mut self, kind: OpKind, inputs: &[usize]) -> Result<(Vec<usize>, DType)> {
        let wide = inputs
            .iter()
            .map(|&i| self.nodes[i].dtype)
            .reduce(widest)
            .unwrap_or(DType::F32);
        let low = self.autocast.dtype;
        Ok(match precision(kind) {
            Precision::Lower => {
                let target = low.unwrap_or(wide);
                let ins = inputs
                    .iter()
                    .map(|&i| self.cast_node(i, target))
                    .collect::<Result<_>>()?;
                (ins, target)
            }
            Precision::Fp32 => (inputs.to_vec(), DType::F32),
            Precision::Fp32LowOut => (inputs.to_vec(), low.unwrap_or(DType::F32)),
            Precision::Promote => (inputs.to_vec(), wide),
        })
    }

    /// Node `t` in `dtype`: itself, a cached cast, or the model-copy view of a parameter.
    fn cast_node(&mut self, t: usize, dtype: DType) -> Result<usize> {
        if self.nodes[t].dtype == dtype {
            return Ok(t);
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
                self.leaf(&shape, dtype, Value::Model(o), src_grad).0
            }
            _ => {
                let mut out = self.be.zeros(dtype, numel(&shape))?;
                self.be
                    .cast(self.val(t), out.view_mut(), Rounding::NearestEven)?;
                match src_grad {
                    // A cast parameter's gradient is the parameter's gradient: the kernels
                    // accumulate straight into the arena (FP32 accumulation, no low copy).
                    GradLoc::Arena(_) | GradLoc::None => {
                        self.leaf(&shape, dtype, Value::Owned(out), src_grad).0
                    }
                    GradLoc::Own | GradLoc::Alias(_) => {
                        self.record(&shape, out, &[t], Op::Cast { x: t })?.0
                    }
                }
            }
        };
        self.casts.insert(key, c);
        Ok(c)
    }

    fn shape_err(&self, op: &'static str, msg: String) -> AutogradError {
        AutogradError::Shape {
            op,
            device: self.be.name(),
            msg,
        }
    }

    fn backward_err(&self, msg: &str) -> AutogradError {
        AutogradError::Backward {
            device: self.be.name(),
            msg: msg.to_string(),
        }
    }
}
