//! GEMM ops: `linear` (a weight of HF `Conv1D` or `nn.Linear` layout, optional bias), the
//! MLP's fusions of a linear and its GELU (`linear_gelu`, `gelu_linear`) and batched `matmul`
//! of two activations. All lower their inputs under autocast and accumulate in FP32; the
//! linear layers' epilogues (bias, GELU, the GELU's gradient, the bias gradient) are the
//! backend's fused GEMMs ([`mp_kernels::GemmOps`]).

use mp_dtype::DType;
use mp_kernels::{Backend, BiasGradOf, BufferExt, DeviceBuffer, Gemm, UnaryOp, View};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::policy::CastPolicy;
use crate::tape::numel;
use crate::{Result, Tape, Tensor};

/// How a linear layer's weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[in, out]`, as HF's `Conv1D` (GPT-2): `y = x W`.
    InOut,
    /// `[out, in]`, as `torch.nn.Linear` and a tied embedding used as an output head: `y = x W^T`.
    OutIn,
}

/// `x W + b` over the last axis of `x`.
pub struct Linear {
    /// The weight's layout.
    pub layout: WeightLayout,
}

impl Linear {
    /// `(rows, in, out)` of the product, checked against the shapes.
    fn dims<B: Backend>(&self, cx: &Forward<'_, '_, B>) -> Result<(usize, usize, usize)> {
        let (xs, ws) = (cx.shape(0), cx.shape(1));
        let (din, dout) = match (self.layout, ws) {
            (WeightLayout::InOut, &[i, o]) | (WeightLayout::OutIn, &[o, i]) => (i, o),
            _ => return Err(cx.shape_err(format!("weight of shape {ws:?}"))),
        };
        let bias_ok = cx.inputs() < 3 || cx.shape(2) == [dout];
        if xs.last() != Some(&din) || !bias_ok {
            let layout = self.layout;
            return Err(cx.shape_err(format!(
                "x {xs:?}, weight {ws:?} ({layout:?}), bias of {dout} expected"
            )));
        }
        Ok((numel(xs) / din.max(1), din, dout))
    }
}

/// `out = x W (+ b)` for the weight and bias inputs 1 and 2 of `cx` (FP32 accumulation, one
/// rounding after the bias: [`mp_kernels::GemmOps::gemm_bias`], the bias in the GEMM's
/// epilogue where the backend has one).
fn linear_forward<B: Backend>(
    cx: &Forward<'_, '_, B>,
    layout: WeightLayout,
    x: mp_kernels::View<'_, B::Buffer>,
    (rows, din, dout): (usize, usize, usize),
) -> Result<B::Buffer> {
    let be = cx.backend();
    let spec = Gemm {
        trans_b: layout == WeightLayout::OutIn,
        ..Gemm::new(rows, dout, din)
    };
    let mut out = cx.alloc(cx.out_dtype(), rows * dout)?;
    if cx.inputs() == 2 {
        be.gemm(x, cx.value(1)?, out.view_mut(), &spec)?;
    } else {
        be.gemm_bias(x, cx.value(1)?, cx.value(2)?, out.view_mut(), &spec)?;
    }
    Ok(out)
}

/// `(rows, din, dout)` of a linear op's product, from its input and weight shapes.
fn linear_sizes<B: Backend>(cx: &Backward<'_, '_, B>) -> (usize, usize, usize) {
    let din = *cx.shape(0).last().expect("checked in forward");
    let rows = numel(cx.shape(0)) / din.max(1);
    (rows, din, numel(cx.shape(1)) / din.max(1))
}

/// The product `dy W^T` of [`linear_forward`]'s input gradient (`beta`: 1 accumulates into
/// C, 0 overwrites).
fn linear_dx_spec<B: Backend>(cx: &Backward<'_, '_, B>, layout: WeightLayout, beta: f32) -> Gemm {
    let (rows, din, dout) = linear_sizes(cx);
    Gemm {
        trans_b: layout == WeightLayout::InOut,
        beta,
        ..Gemm::new(rows, din, dout)
    }
}

/// `dx += dy W^T`: the input gradient of [`linear_forward`] from the output gradient `dy`,
/// into input 0 of `g` (written, not added, when it is the first contribution).
fn linear_dx<B: Backend>(
    cx: &Backward<'_, '_, B>,
    g: &mut Grads<'_, '_, B>,
    layout: WeightLayout,
    dy: View<'_, B::Buffer>,
) -> Result<()> {
    if let Some((dx, beta)) = g.get_with_beta(0)? {
        let spec = linear_dx_spec(cx, layout, beta);
        cx.backend().gemm(dy, cx.value(1)?, dx, &spec)?;
    }
    Ok(())
}

/// The weight's and bias's gradients of [`linear_forward`] with input `x` (`rows x din`)
/// and output gradient `dy`, into inputs 1 and 2 of `g`: one GEMM with the bias gradient
/// in its epilogue when both are wanted ([`mp_kernels::GemmOps::gemm_bias_grad`]).
fn linear_dw_db<B: Backend>(
    cx: &Backward<'_, '_, B>,
    g: &mut Grads<'_, '_, B>,
    layout: WeightLayout,
    x: View<'_, B::Buffer>,
    dy: View<'_, B::Buffer>,
) -> Result<()> {
    let be = cx.backend();
    let (rows, din, dout) = linear_sizes(cx);
    let has_bias = cx.inputs() == 3;
    // both gradients from one GEMM: the bias's sums into an FP32 scratch (the weight's
    // gradient holds `g` borrowed), added into its gradient after
    let mut db = match has_bias && g.needs(1) && g.needs(2) {
        true => Some(cx.alloc(DType::F32, dout)?),
        false => None,
    };
    if let Some(dw) = g.get(1)? {
        let spec = Gemm {
            trans_a: true,
            beta: 1.0,
            ..match layout {
                WeightLayout::InOut => Gemm::new(din, dout, rows), // dW[in, out] += x^T dy
                WeightLayout::OutIn => Gemm::new(dout, din, rows), // dW[out, in] += dy^T x
            }
        };
        let (a, b, of) = match layout {
            WeightLayout::InOut => (x, dy, BiasGradOf::B),
            WeightLayout::OutIn => (dy, x, BiasGradOf::A),
        };
        match db.as_mut() {
            Some(db) => be.gemm_bias_grad(a, b, dw, db.view_mut(), of, &spec)?,
            None => be.gemm(a, b, dw, &spec)?,
        }
    }
    match db {
        Some(db) => g.add(2, db.view())?,
        None => {
            if has_bias && let Some(db) = g.get(2)? {
                be.sum_cols_acc(dy, db)?;
            }
        }
    }
    Ok(())
}

/// The output shape: `x`'s with the last axis `dout`.
fn out_shape(x: &[usize], dout: usize) -> Vec<usize> {
    let mut shape = x.to_vec();
    *shape.last_mut().expect("checked in dims") = dout;
    shape
}

impl<B: Backend> TapeOp<B> for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Lower
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let dims = self.dims(cx)?;
        let out = linear_forward(cx, self.layout, cx.value(0)?, dims)?;
        Ok(Output::new(out, &out_shape(cx.shape(0), dims.2)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let dy = cx.dy()?;
        linear_dx(cx, g, self.layout, dy)?;
        linear_dw_db(cx, g, self.layout, cx.value(0)?, dy)
    }
}

/// `gelu(x W + b)` (GELU, tanh approximation) in one GEMM with the GELU in its epilogue
/// ([`mp_kernels::GemmOps::gemm_bias_gelu`]), saving the GELU's input for the backward: the
/// values and gradients of [`Tape::linear`] then [`Tape::gelu`] (bit for bit where the
/// backend composes the epilogue, as the CPU does), and one pass over the MLP's `4c`-wide
/// activation fewer where it fuses it (cuBLASLt's `GELU_AUX_BIAS`).
pub struct LinearGelu<B: Backend> {
    /// The weight's layout.
    pub layout: WeightLayout,
    /// The GELU's input `x W + b`, kept for the backward.
    pre: Option<B::Buffer>,
}

impl<B: Backend> LinearGelu<B> {
    /// `gelu(x W + b)` with a weight of `layout`.
    pub fn new(layout: WeightLayout) -> Self {
        LinearGelu { layout, pre: None }
    }
}

impl<B: Backend> TapeOp<B> for LinearGelu<B> {
    fn name(&self) -> &'static str {
        "linear_gelu"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Lower
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let (rows, din, dout) = (Linear {
            layout: self.layout,
        })
        .dims(cx)?;
        let be = cx.backend();
        let spec = Gemm {
            trans_b: self.layout == WeightLayout::OutIn,
            ..Gemm::new(rows, dout, din)
        };
        let (x, w) = (cx.value(0)?, cx.value(1)?);
        let mut pre = cx.alloc(cx.out_dtype(), rows * dout)?;
        let mut out = cx.alloc(cx.out_dtype(), rows * dout)?;
        if cx.inputs() == 3 {
            be.gemm_bias_gelu(x, w, cx.value(2)?, pre.view_mut(), out.view_mut(), &spec)?;
        } else {
            be.gemm(x, w, pre.view_mut(), &spec)?;
            be.unary(UnaryOp::GeluTanh, pre.view(), out.view_mut())?;
        }
        if cx.grad_enabled() {
            self.pre = Some(pre);
        }
        Ok(Output::new(out, &out_shape(cx.shape(0), dout)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let Some(pre) = &self.pre else {
            return Ok(());
        };
        let be = cx.backend();
        // the GELU's input gradient in its dtype, as the unfused graph's gelu backward makes it
        let mut dpre = cx.zeros(pre.dtype(), pre.len())?;
        be.unary_backward(UnaryOp::GeluTanh, pre.view(), cx.dy()?, dpre.view_mut())?;
        linear_dx(cx, g, self.layout, dpre.view())?;
        linear_dw_db(cx, g, self.layout, cx.value(0)?, dpre.view())
    }
    fn saved_bytes(&self) -> usize {
        self.pre
            .as_ref()
            .map_or(0, |p| p.len() * p.dtype().size_in_bytes())
    }
    fn saved_activations(&self) -> Vec<(&'static str, View<'_, B::Buffer>)> {
        self.pre.iter().map(|p| ("pre", p.view())).collect()
    }
}

/// `gelu(x) W + b` (GELU, tanh approximation) that keeps only `x` for the backward and
/// recomputes `gelu(x)` there: the MLP's `4c`-wide GELU output is never saved (the
/// `recompute_gelu` option). Gradients equal those of [`Tape::gelu`] then [`Tape::linear`]
/// bit for bit.
pub struct GeluLinear {
    /// The weight's layout.
    pub layout: WeightLayout,
    /// The dtype the GELU output was computed in (set by the forward).
    act: Option<DType>,
}

impl GeluLinear {
    /// `gelu(x) W + b` with a weight of `layout`.
    pub fn new(layout: WeightLayout) -> Self {
        GeluLinear { layout, act: None }
    }
}

impl<B: Backend> TapeOp<B> for GeluLinear {
    fn name(&self) -> &'static str {
        "gelu_linear"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Lower
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let dims = (Linear {
            layout: self.layout,
        })
        .dims(cx)?;
        let x = cx.value(0)?;
        // the GELU in the input's dtype, as Tape::gelu (promote) computes it
        let act = cx.dtype(0);
        let mut h = cx.alloc(act, x.len)?;
        cx.backend().unary(UnaryOp::GeluTanh, x, h.view_mut())?;
        let out = linear_forward(cx, self.layout, h.view(), dims)?;
        self.act = Some(act);
        Ok(Output::new(out, &out_shape(cx.shape(0), dims.2)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let be = cx.backend();
        let x = cx.value(0)?;
        let act = self.act.unwrap_or(cx.dtype(0));
        let mut h = cx.alloc(act, x.len)?;
        be.unary(UnaryOp::GeluTanh, x, h.view_mut())?;
        let dy = cx.dy()?;
        if let Some(dx) = g.get(0)? {
            // dx += gelu'(x) (dy W^T), the product rounded to x's dtype first (a fresh
            // gradient of the unfused graph's GELU output): the GELU's gradient in the GEMM's
            // epilogue where the backend has one (cuBLASLt's DGELU)
            let spec = linear_dx_spec(cx, self.layout, 0.0);
            be.gemm_dgelu(dy, cx.value(1)?, x, dx, &spec)?;
        }
        linear_dw_db(cx, g, self.layout, h.view(), dy)
    }
}

/// Batched matrix product `a @ b` of `a [.., m, k]` and `b [.., k, n]` (the same leading
/// dimensions) or `b [k, n]` (one matrix for every batch).
pub struct Matmul;

/// `(batch, m, k, n, b broadcast)` of a matmul of these shapes, or a message.
fn matmul_dims(
    a: &[usize],
    b: &[usize],
) -> std::result::Result<(usize, usize, usize, usize, bool), String> {
    let msg = || format!("a {a:?} and b {b:?} (want [.., m, k] @ [.., k, n] or [k, n])");
    if a.len() < 2 || b.len() < 2 {
        return Err(msg());
    }
    let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
    let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
    let broadcast = b.len() == 2 && a.len() > 2;
    if k != k2 || (!broadcast && a[..a.len() - 2] != b[..b.len() - 2]) {
        return Err(msg());
    }
    Ok((numel(&a[..a.len() - 2]), m, k, n, broadcast))
}

impl<B: Backend> TapeOp<B> for Matmul {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Lower
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let (batch, m, k, n, bcast) =
            matmul_dims(cx.shape(0), cx.shape(1)).map_err(|e| cx.shape_err(e))?;
        let spec = Gemm {
            batch,
            stride_b: if bcast { 0 } else { k * n },
            ..Gemm::new(m, n, k)
        };
        let mut out = cx.alloc(cx.out_dtype(), batch * m * n)?;
        cx.backend()
            .gemm(cx.value(0)?, cx.value(1)?, out.view_mut(), &spec)?;
        let a = cx.shape(0);
        let mut shape = a[..a.len() - 2].to_vec();
        shape.extend([m, n]);
        Ok(Output::new(out, &shape))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let (batch, m, k, n, bcast) = matmul_dims(cx.shape(0), cx.shape(1)).map_err(|msg| {
            crate::AutogradError::Backward {
                device: cx.backend().name(),
                msg,
            }
        })?;
        let (be, dy) = (cx.backend(), cx.dy()?);
        if let Some(da) = g.get(0)? {
            // da_i += dy_i b_i^T
            let spec = Gemm {
                batch,
                trans_b: true,
                beta: 1.0,
                stride_a: m * n,
                stride_b: if bcast { 0 } else { k * n },
                stride_c: m * k,
                ..Gemm::new(m, k, n)
            };
            be.gemm(dy, cx.value(1)?, da, &spec)?;
        }
        if let Some(db) = g.get(1)? {
            let spec = if bcast {
                // db += sum_i a_i^T dy_i: one product over the stacked rows
                Gemm {
                    trans_a: true,
                    beta: 1.0,
                    ..Gemm::new(k, n, batch * m)
                }
            } else {
                Gemm {
                    batch,
                    trans_a: true,
                    beta: 1.0,
                    stride_a: m * k,
                    stride_b: m * n,
                    stride_c: k * n,
                    ..Gemm::new(k, n, m)
                }
            };
            be.gemm(cx.value(0)?, dy, db, &spec)?;
        }
        Ok(())
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// `x W + b` over the last axis of `x`, with `W` stored as `layout` says.
    pub fn linear(
        &mut self,
        x: Tensor,
        w: Tensor,
        b: Option<Tensor>,
        layout: WeightLayout,
    ) -> Result<Tensor> {
        let mut ins = vec![x, w];
        ins.extend(b);
        self.apply(Linear { layout }, &ins)
    }

    /// `linear(gelu(x), w, b)` that keeps only `x` for the backward pass and recomputes the
    /// GELU there (see [`GeluLinear`]): the same values and gradients as [`Tape::gelu`]
    /// followed by [`Tape::linear`], without saving the GELU output.
    pub fn gelu_linear(
        &mut self,
        x: Tensor,
        w: Tensor,
        b: Option<Tensor>,
        layout: WeightLayout,
    ) -> Result<Tensor> {
        let mut ins = vec![x, w];
        ins.extend(b);
        self.apply(GeluLinear::new(layout), &ins)
    }

    /// `gelu(linear(x, w, b))` in one op (see [`LinearGelu`]): the GELU in the GEMM's epilogue
    /// where the backend has one, its input saved for the backward.
    pub fn linear_gelu(
        &mut self,
        x: Tensor,
        w: Tensor,
        b: Option<Tensor>,
        layout: WeightLayout,
    ) -> Result<Tensor> {
        let mut ins = vec![x, w];
        ins.extend(b);
        self.apply(LinearGelu::new(layout), &ins)
    }

    /// The batched matrix product `a @ b`: `a [.., m, k]` with `b [.., k, n]` (same leading
    /// dimensions) or `b [k, n]`; returns `[.., m, n]`.
    pub fn matmul(&mut self, a: Tensor, b: Tensor) -> Result<Tensor> {
        self.apply(Matmul, &[a, b])
    }
}

#[cfg(test)]
mod tests {
    use crate::WeightLayout;
    use crate::gradcheck::{GradCheck, assert_ok};

    #[test]
    fn linear_conv1d_layout_with_bias() {
        let c = GradCheck::new(&[("x", &[6, 5]), ("w", &[5, 3]), ("b", &[3])], 1);
        assert_ok(c.run("linear InOut", |t, p| {
            t.linear(p[0], p[1], Some(p[2]), WeightLayout::InOut)
        }));
    }

    #[test]
    fn linear_torch_layout_without_bias() {
        let c = GradCheck::new(&[("x", &[2, 3, 4]), ("w", &[7, 4])], 2);
        assert_ok(c.run("linear OutIn", |t, p| {
            t.linear(p[0], p[1], None, WeightLayout::OutIn)
        }));
    }

    #[test]
    fn gelu_linear_both_layouts() {
        let c = GradCheck::new(
            &[("x", &[6, 5]), ("w", &[5, 3]), ("b", &[3]), ("v", &[3, 5])],
            4,
        );
        assert_ok(c.run("gelu_linear InOut", |t, p| {
            t.gelu_linear(p[0], p[1], Some(p[2]), WeightLayout::InOut)
        }));
        assert_ok(c.run("gelu_linear OutIn", |t, p| {
            t.gelu_linear(p[0], p[3], None, WeightLayout::OutIn)
        }));
    }

    type Cpu = mp_kernels::CpuBackend;
    /// A graph of the MLP's linear and GELU over `(x, w, b)`.
    type MlpGraph = fn(
        &mut crate::Tape<'_, Cpu>,
        crate::Tensor,
        crate::Tensor,
        crate::Tensor,
    ) -> crate::Result<crate::Tensor>;

    /// `fused` gives `unfused`'s values and gradients (of x, W and b) bit for bit on the CPU
    /// (whose epilogues are the compositions), in FP32 and under BF16 autocast, `x` the
    /// lowered output of another op as in the MLP.
    fn assert_same_as_unfused(fused: MlpGraph, unfused: MlpGraph) {
        use crate::{Autocast, Tape};
        use mp_kernels::DType;
        use mp_kernels::prelude::*;
        let be = Cpu::new();
        let (rows, din, dout) = (7, 12, 16);
        let n = rows * din + din * dout + dout;
        let master = be
            .upload_f32(&crate::gradcheck::randn(9, n), DType::F32)
            .unwrap();
        for autocast in [Autocast::OFF, Autocast::to(DType::BF16)] {
            let run = |graph: MlpGraph| {
                let mut grads = be.zeros(DType::F32, n).unwrap();
                let mut t = Tape::new(&be).with_params(&master).with_autocast(autocast);
                let x = t.param_at(0, &[rows, din]).unwrap();
                let w = t.param_at(rows * din, &[din, dout]).unwrap();
                let b = t.param_at(rows * din + din * dout, &[dout]).unwrap();
                let x = t.scale(x, 1.0).unwrap();
                let x = t.cast(x, autocast.dtype.unwrap_or(DType::F32)).unwrap();
                let y = graph(&mut t, x, w, b).unwrap();
                let out = t.to_vec_f32(y).unwrap();
                let loss = t.sum(y).unwrap();
                t.backward(loss, 1.0, &mut grads).unwrap();
                (out, be.download_f32(grads.view()).unwrap())
            };
            assert_eq!(run(fused), run(unfused), "{autocast:?}");
        }
    }

    /// The recomputing op gives the unfused graph's values and gradients bit for bit.
    #[test]
    fn gelu_linear_equals_gelu_then_linear() {
        assert_same_as_unfused(
            |t, x, w, b| t.gelu_linear(x, w, Some(b), WeightLayout::InOut),
            |t, x, w, b| {
                let h = t.gelu(x)?;
                t.linear(h, w, Some(b), WeightLayout::InOut)
            },
        );
    }

    /// The GELU-epilogue op gives the unfused graph's values and gradients bit for bit.
    #[test]
    fn linear_gelu_equals_linear_then_gelu() {
        assert_same_as_unfused(
            |t, x, w, b| t.linear_gelu(x, w, Some(b), WeightLayout::InOut),
            |t, x, w, b| {
                let f = t.linear(x, w, Some(b), WeightLayout::InOut)?;
                t.gelu(f)
            },
        );
    }

    #[test]
    fn linear_gelu_both_layouts() {
        let c = GradCheck::new(
            &[("x", &[6, 5]), ("w", &[5, 3]), ("b", &[3]), ("v", &[3, 5])],
            5,
        );
        assert_ok(c.run("linear_gelu InOut", |t, p| {
            t.linear_gelu(p[0], p[1], Some(p[2]), WeightLayout::InOut)
        }));
        assert_ok(c.run("linear_gelu OutIn", |t, p| {
            t.linear_gelu(p[0], p[3], Some(p[2]), WeightLayout::OutIn)
        }));
        assert_ok(c.run("linear_gelu OutIn without bias", |t, p| {
            t.linear_gelu(p[0], p[3], None, WeightLayout::OutIn)
        }));
    }

    /// A bias gradient with the weight's from one GEMM, for both layouts (the `[out, in]`
    /// layout sums the product's A, the `[in, out]` one its B).
    #[test]
    fn linear_torch_layout_with_bias() {
        let c = GradCheck::new(&[("x", &[2, 3, 4]), ("w", &[7, 4]), ("b", &[7])], 3);
        assert_ok(c.run("linear OutIn", |t, p| {
            t.linear(p[0], p[1], Some(p[2]), WeightLayout::OutIn)
        }));
    }

    #[test]
    fn matmul_batched_and_broadcast() {
        let c = GradCheck::new(&[("a", &[2, 3, 4]), ("b", &[2, 4, 5]), ("w", &[4, 5])], 8);
        assert_ok(c.run("matmul batched", |t, p| t.matmul(p[0], p[1])));
        assert_ok(c.run("matmul broadcast", |t, p| t.matmul(p[0], p[2])));
    }
}
