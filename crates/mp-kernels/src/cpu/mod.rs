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
mod dot_bf16;
mod embed;
mod flash;
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

/// The widest SIMD path this CPU runs for GEMMs and conversions.
fn simd_path() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
            return "AVX-512 with BF16 dot products";
        }
        if is_x86_feature_detected!("avx512f") {
            return "AVX-512 (BF16 dot products emulated)";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "AVX2 + FMA (BF16 dot products emulated)";
        }
    }
    "portable scalar code"
}

impl MemoryOps for CpuBackend {
    type Buffer = CpuBuffer;
    type Index = Vec<u32>;

    /// `cpu (<model name>; <the SIMD path this machine runs>)`: runs on machines with different
    /// paths (AVX-512 BF16 dot products against their AVX2 emulation) differ in the last bits.
    fn name(&self) -> String {
        static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        NAME.get_or_init(|| {
            let model = std::fs::read_to_string("/proc/cpuinfo")
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find(|l| l.starts_with("model name"))
                        .and_then(|l| l.split_once(':'))
                        .map(|(_, m)| m.trim().to_string())
                })
                .unwrap_or_else(|| std::env::consts::ARCH.to_string());
            format!("{DEVICE} ({model}; {})", simd_path())
        })
        .clone()
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

    fn host_bytes<'v>(&self, src: View<'v, CpuBuffer>) -> Option<&'v [u8]> {
        check::bytes("host_bytes", "src", src).ok()
    }

    fn host_bytes_mut<'v>(&self, dst: ViewMut<'v, CpuBuffer>) -> Option<&'v mut [u8]> {
        check::bytes_mut("host_bytes_mut", "dst", dst).ok()
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
