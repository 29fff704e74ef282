//! The CPU backend: the reference ("oracle") implementation of every [`Backend`] op.
//!
//! Buffers are plain host memory ([`CpuBuffer`]); ops run on the global rayon pool, split
//! into fixed-size blocks whose results are combined in a fixed order, so every result is
//! bit-identical from run to run whatever the thread count. Inputs of any dtype are widened
//! to f32 block by block (F32 inputs are read in place), every dot product and reduction
//! accumulates in f32, and outputs are rounded to nearest even into their buffer's dtype.
//! GEMMs go through the `gemm` crate's f32 kernels (low-precision operands are widened first),
//! except BF16 x BF16 products on CPUs with AVX-512 BF16, which run on `vdpbf16ps`
//! (`gemm/bf16.rs`; `MP_CPU_BF16_GEMM=widen` forces the f32 route).

mod attention;
mod check;
mod convert;
mod embed;
mod gemm;
mod loss;
mod math;
mod norm;
pub(crate) mod optim;
mod pointwise;
mod reduce;

use crate::backend::contract::{self, Check};
use crate::backend::*;
use crate::{KernelError, Result};
use mp_dtype::DType;

use check::{DEVICE, bytes};

/// A flat host buffer of one dtype.
///
/// The elements live in `u64`-aligned storage, so a view of any element range can be read as
/// a typed slice (`f32`, `u16`) without copying.
#[derive(Clone)]
pub struct CpuBuffer {
    dtype: DType,
    len: usize,
    words: Vec<u64>,
}

impl CpuBuffer {
    /// A zero-filled buffer of `len` elements of `dtype`.
    pub fn zeros(dtype: DType, len: usize) -> Self {
        let nbytes = len * dtype.size_in_bytes();
        CpuBuffer {
            dtype,
            len,
            words: vec![0u64; nbytes.div_ceil(8)],
        }
    }

    /// A buffer whose raw little-endian element bytes are `bytes`.
    pub fn from_bytes(bytes: &[u8], dtype: DType) -> Result<Self> {
        let size = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return Err(KernelError::DType(mp_dtype::DTypeError::RaggedBytes {
                op: "upload_bytes",
                bytes: bytes.len(),
                dtype,
            }));
        }
        let mut buf = CpuBuffer::zeros(dtype, bytes.len() / size);
        buf.as_bytes_mut().copy_from_slice(bytes);
        Ok(buf)
    }

    /// A buffer of `dtype` holding `data` rounded to nearest even.
    pub fn from_f32(data: &[f32], dtype: DType) -> Self {
        let mut buf = CpuBuffer::zeros(dtype, data.len());
        convert::narrow(dtype, data, buf.as_bytes_mut());
        buf
    }

    /// The storage format of every element.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw little-endian bytes of every element.
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len * self.dtype.size_in_bytes()]
    }

    /// The raw little-endian bytes of every element, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        let n = self.len * self.dtype.size_in_bytes();
        &mut bytemuck::cast_slice_mut(&mut self.words)[..n]
    }

    /// The elements as `f32`s, when the buffer is F32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        (self.dtype == DType::F32).then(|| convert::as_f32(self.as_bytes()))
    }

    /// The elements as `f32`s, writable, when the buffer is F32.
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        if self.dtype == DType::F32 {
            Some(convert::as_f32_mut(self.as_bytes_mut()))
        } else {
            None
        }
    }

    /// The raw bit patterns, when the buffer is F16 or BF16.
    pub fn as_u16(&self) -> Option<&[u16]> {
        matches!(self.dtype, DType::F16 | DType::BF16)
            .then(|| bytemuck::cast_slice(self.as_bytes()))
    }

    /// Every element widened to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len];
        convert::widen(self.dtype, self.as_bytes(), &mut out);
        out
    }
}

impl std::fmt::Debug for CpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBuffer")
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl DeviceBuffer for CpuBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// The CPU device. Ops run on the global rayon thread pool (`RAYON_NUM_THREADS` sets its
/// size).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl CpuBackend {
    /// The CPU device.
    pub fn new() -> Self {
        CpuBackend
    }
}

impl MemoryOps for CpuBackend {
    type Buffer = CpuBuffer;
    type Index = Vec<u32>;

    fn name(&self) -> String {
        DEVICE.to_string()
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<CpuBuffer> {
        Ok(CpuBuffer::zeros(dtype, len))
    }

    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<CpuBuffer> {
        let mut buf = CpuBuffer::zeros(dtype, data.len());
        let dst = buf.view_mut_all();
        contract::upload(self, data.len(), &dst)?;
        pointwise::narrow_par(data, dst)?;
        Ok(buf)
    }

    fn upload_bytes(&self, bytes: &[u8], dtype: DType) -> Result<CpuBuffer> {
        CpuBuffer::from_bytes(bytes, dtype)
    }

    fn download_f32(&self, src: View<'_, CpuBuffer>) -> Result<Vec<f32>> {
        Check::new(self, "download_f32").view("src", &src)?;
        pointwise::widen_par(src)
    }

    fn download_bytes(&self, src: View<'_, CpuBuffer>) -> Result<Vec<u8>> {
        Check::new(self, "download_bytes").view("src", &src)?;
        Ok(bytes("download_bytes", "src", src)?.to_vec())
    }

    fn upload_index(&self, data: &[u32]) -> Result<Vec<u32>> {
        Ok(data.to_vec())
    }

    fn index_values<'i>(&self, ids: &'i Vec<u32>) -> &'i [u32] {
        ids
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn cast(
        &self,
        src: View<'_, CpuBuffer>,
        dst: ViewMut<'_, CpuBuffer>,
        rounding: Rounding,
    ) -> Result<()> {
        contract::same_len(self, "cast", &[("src", &src)], ("dst", &dst))?;
        pointwise::cast(src, dst, rounding)
    }

    fn fill(&self, dst: ViewMut<'_, CpuBuffer>, value: f32) -> Result<()> {
        Check::new(self, "fill").view_mut("dst", &dst)?;
        pointwise::fill(dst, value)
    }
}

impl GemmOps for CpuBackend {
    fn gemm(
        &self,
        a: View<'_, CpuBuffer>,
        b: View<'_, CpuBuffer>,
        c: ViewMut<'_, CpuBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        if contract::gemm(self, &a, &b, &c, spec)? == 0 {
            return Ok(());
        }
        gemm::gemm(a, b, c, spec)
    }
}

impl PointwiseOps for CpuBackend {
    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_, CpuBuffer>,
        b: View<'_, CpuBuffer>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::same_len(self, "binary", &[("a", &a), ("b", &b)], ("out", &out))?;
        pointwise::binary(op, a, b, out)
    }

    fn unary(
        &self,
        op: UnaryOp,
        x: View<'_, CpuBuffer>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::same_len(self, op.name(), &[("x", &x)], ("out", &out))?;
        pointwise::unary(op, x, out)
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: View<'_, CpuBuffer>,
        dy: View<'_, CpuBuffer>,
        dx: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::same_len(
            self,
            op.backward_name(),
            &[("x", &x), ("dy", &dy)],
            ("dx", &dx),
        )?;
        pointwise::unary_backward(op, x, dy, dx)
    }

    fn scale(&self, x: View<'_, CpuBuffer>, alpha: f32, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
        contract::same_len(self, "scale", &[("x", &x)], ("out", &out))?;
        pointwise::scale(x, alpha, out)
    }

    fn axpy(&self, alpha: f32, x: View<'_, CpuBuffer>, dst: ViewMut<'_, CpuBuffer>) -> Result<()> {
        contract::same_len(self, "axpy", &[("x", &x)], ("dst", &dst))?;
        pointwise::axpy(alpha, x, dst)
    }

    fn bias_add(
        &self,
        x: View<'_, CpuBuffer>,
        bias: View<'_, CpuBuffer>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::bias_add(self, &x, &bias, &out)?;
        pointwise::bias_add(x, bias, out)
    }

    fn mul_broadcast(
        &self,
        x: View<'_, CpuBuffer>,
        row_scale: Option<View<'_, CpuBuffer>>,
        col_scale: Option<View<'_, CpuBuffer>>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        let (_, cols) =
            contract::mul_broadcast(self, &x, row_scale.as_ref(), col_scale.as_ref(), &out)?;
        pointwise::mul_broadcast(x, row_scale, col_scale, cols, out)
    }

    fn dropout(
        &self,
        x: View<'_, CpuBuffer>,
        p: f32,
        seed: u64,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        let (threshold, scale) = contract::dropout(self, &x, p, &out)?;
        pointwise::dropout(x, threshold, scale, seed, out)
    }
}

impl RowOps for CpuBackend {
    fn reduce_rows(
        &self,
        op: ReduceOp,
        x: View<'_, CpuBuffer>,
        cols: usize,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::reduce_rows(self, &x, cols, &out)?;
        reduce::reduce_rows(op, x, cols, out)
    }

    fn sum_cols_acc(&self, x: View<'_, CpuBuffer>, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
        contract::sum_cols(self, &x, &out)?;
        reduce::sum_cols_acc(x, out)
    }

    fn softmax(
        &self,
        x: View<'_, CpuBuffer>,
        cols: usize,
        causal: bool,
        log: bool,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::softmax(self, &x, cols, &out)?;
        norm::softmax(x, cols, causal, log, out)
    }

    fn softmax_backward(
        &self,
        y: View<'_, CpuBuffer>,
        dy: View<'_, CpuBuffer>,
        cols: usize,
        log: bool,
        dx: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::softmax_backward(self, &y, &dy, cols, &dx)?;
        norm::softmax_backward(y, dy, cols, log, dx)
    }
}

impl NormOps for CpuBackend {
    fn layer_norm(
        &self,
        x: View<'_, CpuBuffer>,
        weight: View<'_, CpuBuffer>,
        bias: View<'_, CpuBuffer>,
        eps: f32,
        out: ViewMut<'_, CpuBuffer>,
        mean: ViewMut<'_, CpuBuffer>,
        rstd: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::layer_norm(self, &x, &weight, &bias, &out, &mean, &rstd)?;
        norm::layer_norm(x, weight, bias, eps, out, mean, rstd)
    }

    fn layer_norm_backward(
        &self,
        dy: View<'_, CpuBuffer>,
        x: View<'_, CpuBuffer>,
        weight: View<'_, CpuBuffer>,
        mean: View<'_, CpuBuffer>,
        rstd: View<'_, CpuBuffer>,
        dx: ViewMut<'_, CpuBuffer>,
        dweight: ViewMut<'_, CpuBuffer>,
        dbias: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::layer_norm_backward(self, &dy, &x, &weight, &mean, &rstd, &dx, &dweight, &dbias)?;
        norm::layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias)
    }

    fn rms_norm(
        &self,
        x: View<'_, CpuBuffer>,
        weight: View<'_, CpuBuffer>,
        eps: f32,
        out: ViewMut<'_, CpuBuffer>,
        rstd: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::rms_norm(self, &x, &weight, eps, &out, &rstd)?;
        norm::rms_norm(x, weight, eps, out, rstd)
    }

    fn rms_norm_backward(
        &self,
        dy: View<'_, CpuBuffer>,
        x: View<'_, CpuBuffer>,
        weight: View<'_, CpuBuffer>,
        rstd: View<'_, CpuBuffer>,
        dx: ViewMut<'_, CpuBuffer>,
        dweight: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::rms_norm_backward(self, &dy, &x, &weight, &rstd, &dx, &dweight)?;
        norm::rms_norm_backward(dy, x, weight, rstd, dx, dweight)
    }
}

impl LossOps for CpuBackend {
    fn cross_entropy(
        &self,
        logits: View<'_, CpuBuffer>,
        targets: &Vec<u32>,
        vocab: usize,
        losses: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::cross_entropy(self, &logits, targets, vocab, &losses)?;
        loss::cross_entropy(logits, targets, vocab, losses)
    }

    fn cross_entropy_backward(
        &self,
        logits: View<'_, CpuBuffer>,
        targets: &Vec<u32>,
        vocab: usize,
        dloss: f32,
        dlogits: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::cross_entropy_backward(self, &logits, targets, vocab, &dlogits)?;
        loss::cross_entropy_backward(logits, targets, vocab, dloss, dlogits)
    }
}

impl EmbeddingOps for CpuBackend {
    fn embedding(
        &self,
        table: View<'_, CpuBuffer>,
        ids: &Vec<u32>,
        c: usize,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        let ck = Check::new(self, "embedding");
        ck.view("table", &table)?;
        ck.view_mut("out", &out)?;
        contract::embedding(self, "embedding", table.len, ids, c, out.len)?;
        embed::embedding(table, ids, c, out)
    }

    fn embedding_backward(
        &self,
        dout: View<'_, CpuBuffer>,
        ids: &Vec<u32>,
        c: usize,
        dtable: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        let ck = Check::new(self, "embedding_backward");
        ck.view("dout", &dout)?;
        ck.view_mut("dtable", &dtable)?;
        contract::embedding(self, "embedding_backward", dtable.len, ids, c, dout.len)?;
        embed::embedding_backward(dout, ids, c, dtable)
    }
}

impl LayoutOps for CpuBackend {
    fn split_heads(
        &self,
        src: View<'_, CpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::heads(
            self,
            "split_heads",
            layout,
            ("src", src.offset, src.len, src.buf.len()),
            ("dst", dst.offset, dst.len, dst.buf.len()),
        )?;
        attention::split_heads(src, layout, dst)
    }

    fn merge_heads(
        &self,
        src: View<'_, CpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CpuBuffer>,
        accumulate: bool,
    ) -> Result<()> {
        contract::heads(
            self,
            "merge_heads",
            layout,
            ("dst", dst.offset, dst.len, dst.buf.len()),
            ("src", src.offset, src.len, src.buf.len()),
        )?;
        attention::merge_heads(src, layout, dst, accumulate)
    }
}

impl AttentionOps for CpuBackend {
    fn attention(
        &self,
        qkv: View<'_, CpuBuffer>,
        shape: &Attention,
        out: ViewMut<'_, CpuBuffer>,
        probs: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::attention_forward(self, &qkv, shape, &out, &probs)?;
        attention::attention(qkv, shape, out, probs)
    }

    fn attention_backward(
        &self,
        dout: View<'_, CpuBuffer>,
        qkv: View<'_, CpuBuffer>,
        probs: View<'_, CpuBuffer>,
        shape: &Attention,
        dqkv: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::attention_backward(self, &dout, &qkv, &probs, shape, &dqkv)?;
        attention::attention_backward(dout, qkv, probs, shape, dqkv)
    }
}

impl OptimOps for CpuBackend {
    fn grad_stats(&self, grads: View<'_, CpuBuffer>, grad_mult: f32) -> Result<GradStats> {
        Check::new(self, "grad_stats").view("grads", &grads)?;
        optim::grad_stats(grads, grad_mult)
    }

    fn adamw(
        &self,
        params: ViewMut<'_, CpuBuffer>,
        grads: View<'_, CpuBuffer>,
        m: ViewMut<'_, CpuBuffer>,
        v: ViewMut<'_, CpuBuffer>,
        model: Option<ViewMut<'_, CpuBuffer>>,
        hp: &AdamW,
    ) -> Result<()> {
        let (_, coef) = contract::adamw(self, &params, &grads, &m, &v, model.as_ref(), hp)?;
        optim::adamw(params, grads, m, v, model, hp, &coef)
    }

    fn sgd(
        &self,
        params: ViewMut<'_, CpuBuffer>,
        grads: View<'_, CpuBuffer>,
        momentum_buf: ViewMut<'_, CpuBuffer>,
        model: Option<ViewMut<'_, CpuBuffer>>,
        hp: &Sgd,
    ) -> Result<()> {
        contract::sgd(self, &params, &grads, &momentum_buf, model.as_ref(), hp)?;
        optim::sgd(params, grads, momentum_buf, model, hp)
    }
}

impl CpuBuffer {
    fn view_mut_all(&mut self) -> ViewMut<'_, CpuBuffer> {
        let len = self.len;
        ViewMut {
            buf: self,
            offset: 0,
            len,
        }
    }
}
