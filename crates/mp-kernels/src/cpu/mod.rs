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

use crate::backend::{
    AdamW, Attention, Backend, BinaryOp, DeviceBuffer, Gemm, GradStats, Heads, ReduceOp, Rounding,
    Sgd, View, ViewMut,
};
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

impl Backend for CpuBackend {
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
        pointwise::narrow_par(data, buf.view_mut_all())?;
        Ok(buf)
    }

    fn upload_bytes(&self, bytes: &[u8], dtype: DType) -> Result<CpuBuffer> {
        CpuBuffer::from_bytes(bytes, dtype)
    }

    fn download_f32(&self, src: View<'_, CpuBuffer>) -> Result<Vec<f32>> {
        pointwise::widen_par(src)
    }

    fn download_bytes(&self, src: View<'_, CpuBuffer>) -> Result<Vec<u8>> {
        Ok(bytes("download_bytes", "src", src)?.to_vec())
    }

    fn upload_index(&self, data: &[u32]) -> Result<Vec<u32>> {
        Ok(data.to_vec())
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
        pointwise::cast(src, dst, rounding)
    }

    fn fill(&self, dst: ViewMut<'_, CpuBuffer>, value: f32) -> Result<()> {
        pointwise::fill(dst, value)
    }

    fn gemm(
        &self,
        a: View<'_, CpuBuffer>,
        b: View<'_, CpuBuffer>,
        c: ViewMut<'_, CpuBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        gemm::gemm(a, b, c, spec)
    }

    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_, CpuBuffer>,
        b: View<'_, CpuBuffer>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        pointwise::binary(op, a, b, out)
    }

    fn scale(&self, x: View<'_, CpuBuffer>, alpha: f32, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
        pointwise::scale(x, alpha, out)
    }

    fn axpy(&self, alpha: f32, x: View<'_, CpuBuffer>, dst: ViewMut<'_, CpuBuffer>) -> Result<()> {
        pointwise::axpy(alpha, x, dst)
    }

    fn bias_add(
        &self,
        x: View<'_, CpuBuffer>,
        bias: View<'_, CpuBuffer>,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        pointwise::bias_add(x, bias, out)
    }

    fn gelu(&self, x: View<'_, CpuBuffer>, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
        pointwise::gelu(x, out)
    }

    fn gelu_backward(
        &self,
        x: View<'_, CpuBuffer>,
        dy: View<'_, CpuBuffer>,
        dx: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        pointwise::gelu_backward(x, dy, dx)
    }

    fn reduce_rows(
        &self,
        op: ReduceOp,
        x: View<'_, CpuBuffer>,
        cols: usize,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        reduce::reduce_rows(op, x, cols, out)
    }

    fn sum_cols_acc(&self, x: View<'_, CpuBuffer>, out: ViewMut<'_, CpuBuffer>) -> Result<()> {
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
        norm::softmax_backward(y, dy, cols, log, dx)
    }

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
        norm::layer_norm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias)
    }

    fn cross_entropy(
        &self,
        logits: View<'_, CpuBuffer>,
        targets: &Vec<u32>,
        vocab: usize,
        losses: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
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
        loss::cross_entropy_backward(logits, targets, vocab, dloss, dlogits)
    }

    fn embedding(
        &self,
        table: View<'_, CpuBuffer>,
        ids: &Vec<u32>,
        c: usize,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        embed::embedding(table, ids, c, out)
    }

    fn embedding_backward(
        &self,
        dout: View<'_, CpuBuffer>,
        ids: &Vec<u32>,
        c: usize,
        dtable: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        embed::embedding_backward(dout, ids, c, dtable)
    }

    fn attention(
        &self,
        qkv: View<'_, CpuBuffer>,
        shape: &Attention,
        out: ViewMut<'_, CpuBuffer>,
        probs: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
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
        attention::attention_backward(dout, qkv, probs, shape, dqkv)
    }

    fn split_heads(
        &self,
        src: View<'_, CpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        attention::split_heads(src, layout, dst)
    }

    fn merge_heads(
        &self,
        src: View<'_, CpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CpuBuffer>,
        accumulate: bool,
    ) -> Result<()> {
        attention::merge_heads(src, layout, dst, accumulate)
    }

    fn grad_stats(&self, grads: View<'_, CpuBuffer>, grad_mult: f32) -> Result<GradStats> {
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
        optim::adamw(params, grads, m, v, model, hp)
    }

    fn sgd(
        &self,
        params: ViewMut<'_, CpuBuffer>,
        grads: View<'_, CpuBuffer>,
        momentum_buf: ViewMut<'_, CpuBuffer>,
        model: Option<ViewMut<'_, CpuBuffer>>,
        hp: &Sgd,
    ) -> Result<()> {
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
