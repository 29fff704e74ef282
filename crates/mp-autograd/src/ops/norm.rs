//! Normalisation over the last dimension with FP32 statistics: `layer_norm` (GPT-2) and
//! `rms_norm` (Llama). Both compute in FP32 and, under autocast, store their output in the
//! autocast dtype ([`CastPolicy::Fp32LowOut`]: their consumers are lowered GEMMs).

use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, DeviceBuffer};

use crate::op::{Backward, Forward, Grads, Output, TapeOp};
use crate::ops::rows_of;
use crate::policy::CastPolicy;
use crate::{Result, Tape, Tensor};

/// Checks that inputs `1..` are vectors of the last dimension of input 0; returns
/// `(rows, c)`.
fn norm_dims<B: Backend>(cx: &Forward<'_, '_, B>) -> Result<(usize, usize)> {
    let (rows, c) = rows_of(cx, 0)?;
    if (1..cx.inputs()).any(|i| cx.shape(i) != [c]) {
        let params: Vec<_> = (1..cx.inputs()).map(|i| cx.shape(i)).collect();
        return Err(cx.shape_err(format!("x {:?}, parameters {params:?}", cx.shape(0))));
    }
    Ok((rows, c))
}

/// `(x - mean) * rstd * w + b`, saving the FP32 `mean` and `rstd` of each row.
pub struct LayerNorm<B: Backend> {
    eps: f32,
    stats: Option<(B::Buffer, B::Buffer)>,
}

impl<B: Backend> TapeOp<B> for LayerNorm<B> {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32LowOut
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let (rows, c) = norm_dims(cx)?;
        let mut out = cx.alloc(cx.out_dtype(), rows * c)?;
        let mut mean = cx.alloc(DType::F32, rows)?;
        let mut rstd = cx.alloc(DType::F32, rows)?;
        cx.backend().layer_norm(
            cx.value(0)?,
            cx.value(1)?,
            cx.value(2)?,
            self.eps,
            out.view_mut(),
            mean.view_mut(),
            rstd.view_mut(),
        )?;
        self.stats = Some((mean, rstd));
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let (be, c) = (cx.backend(), cx.shape(1)[0]);
        let (mean, rstd) = self.stats.as_ref().ok_or_else(|| missing(cx))?;
        let (mut dw, mut db) = (cx.zeros(DType::F32, c)?, cx.zeros(DType::F32, c)?);
        let (dy, x, w) = (cx.dy()?, cx.value(0)?, cx.value(1)?);
        let (m, r) = (mean.view(), rstd.view());
        match g.get(0)? {
            Some(dx) => be.layer_norm_backward(dy, x, w, m, r, dx, dw.view_mut(), db.view_mut())?,
            None => {
                let mut dx = cx.zeros(cx.dtype(0), x.len)?;
                be.layer_norm_backward(dy, x, w, m, r, dx.view_mut(), dw.view_mut(), db.view_mut())?
            }
        }
        g.add(1, dw.view())?;
        g.add(2, db.view())
    }
    fn saved_bytes(&self) -> usize {
        self.stats
            .as_ref()
            .map_or(0, |(m, r)| 4 * (m.len() + r.len()))
    }
}

/// RMSNorm (HF `LlamaRMSNorm`): `x * rstd * w` with `rstd = 1 / sqrt(mean(x^2) + eps)` per
/// row, saving the FP32 `rstd`.
pub struct RmsNorm<B: Backend> {
    eps: f32,
    rstd: Option<B::Buffer>,
}

impl<B: Backend> TapeOp<B> for RmsNorm<B> {
    fn name(&self) -> &'static str {
        "rms_norm"
    }
    fn cast_policy(&self) -> CastPolicy {
        CastPolicy::Fp32LowOut
    }
    fn forward(&mut self, cx: &Forward<'_, '_, B>) -> Result<Output<B>> {
        let (rows, c) = norm_dims(cx)?;
        let mut out = cx.alloc(cx.out_dtype(), rows * c)?;
        let mut rstd = cx.alloc(DType::F32, rows)?;
        cx.backend().rms_norm(
            cx.value(0)?,
            cx.value(1)?,
            self.eps,
            out.view_mut(),
            rstd.view_mut(),
        )?;
        self.rstd = Some(rstd);
        Ok(Output::new(out, cx.shape(0)))
    }
    fn backward(&self, cx: &Backward<'_, '_, B>, g: &mut Grads<'_, '_, B>) -> Result<()> {
        let be = cx.backend();
        let rstd = self.rstd.as_ref().ok_or_else(|| missing(cx))?.view();
        let mut dw = cx.zeros(DType::F32, cx.shape(1)[0])?;
        let (dy, x, w) = (cx.dy()?, cx.value(0)?, cx.value(1)?);
        match g.get(0)? {
            Some(dx) => be.rms_norm_backward(dy, x, w, rstd, dx, dw.view_mut())?,
            None => {
                let mut dx = cx.zeros(cx.dtype(0), x.len)?;
                be.rms_norm_backward(dy, x, w, rstd, dx.view_mut(), dw.view_mut())?
            }
        }
        g.add(1, dw.view())
    }
    fn saved_bytes(&self) -> usize {
        self.rstd.as_ref().map_or(0, |r| 4 * r.len())
    }
}

fn missing<B: Backend>(cx: &Backward<'_, '_, B>) -> crate::AutogradError {
    crate::AutogradError::Backward {
        device: cx.backend().name(),
        msg: "a norm's backward ran without its forward's statistics".into(),
    }
}

impl<'a, B: Backend> Tape<'a, B> {
    /// Layer norm over the last axis with FP32 statistics (weight and bias of that length).
    pub fn layer_norm(&mut self, x: Tensor, w: Tensor, b: Tensor, eps: f32) -> Result<Tensor> {
        self.apply(LayerNorm { eps, stats: None }, &[x, w, b])
    }

    /// RMSNorm over the last axis with an FP32 `rstd` (weight of that length), as HF's
    /// `LlamaRMSNorm`.
    pub fn rms_norm(&mut self, x: Tensor, w: Tensor, eps: f32) -> Result<Tensor> {
        self.apply(RmsNorm { eps, rstd: None }, &[x, w])
    }
}

#[cfg(test)]
mod tests {
    use crate::gradcheck::{GradCheck, assert_ok};

    #[test]
    fn layer_norm_and_rms_norm() {
        let c = GradCheck::new(&[("x", &[5, 8]), ("w", &[8]), ("b", &[8])], 3);
        assert_ok(c.run("layer_norm", |t, p| t.layer_norm(p[0], p[1], p[2], 1e-5)));
        assert_ok(c.run("rms_norm", |t, p| t.rms_norm(p[0], p[1], 1e-6)));
    }
}
