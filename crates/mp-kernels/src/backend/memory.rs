//! The memory family: buffers, transfers between host and device, casts and fills.

use super::{DeviceBuffer, Rounding, View, ViewMut};
use crate::Result;
use mp_dtype::DType;

/// Memory and transfers: every other family builds on this one.
pub trait MemoryOps: Send + Sync + 'static {
    /// A flat buffer of one dtype on this device.
    type Buffer: DeviceBuffer;
    /// A flat buffer of `u32` indices (token ids, targets) on this device.
    type Index: Send + Sync;

    /// A short human-readable device name for messages (`"cpu"`, `"cuda:0 (NVIDIA H200)"`).
    fn name(&self) -> String;

    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, dtype: DType, len: usize) -> Result<Self::Buffer>;
    /// A buffer of `len` elements for scratch results that every element is written to before
    /// it is read: its contents are unspecified (devices skip the zero fill; the default
    /// returns [`MemoryOps::zeros`]).
    fn uninit(&self, dtype: DType, len: usize) -> Result<Self::Buffer> {
        self.zeros(dtype, len)
    }
    /// A buffer of `dtype` holding `data` rounded to nearest even.
    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<Self::Buffer>;
    /// A buffer whose raw little-endian element bytes are `bytes`.
    fn upload_bytes(&self, bytes: &[u8], dtype: DType) -> Result<Self::Buffer>;
    /// The elements of a view widened to f32 (waits for the device).
    fn download_f32(&self, src: View<'_, Self::Buffer>) -> Result<Vec<f32>>;
    /// The raw little-endian element bytes of a view (waits for the device).
    fn download_bytes(&self, src: View<'_, Self::Buffer>) -> Result<Vec<u8>>;
    /// An index buffer holding `data`.
    fn upload_index(&self, data: &[u32]) -> Result<Self::Index>;
    /// The host copy of an index buffer's values (every backend keeps one, so that the
    /// contracts can check ids against table sizes without reading the device).
    fn index_values<'i>(&self, ids: &'i Self::Index) -> &'i [u32];
    /// Waits until every queued op has finished.
    fn synchronize(&self) -> Result<()>;
    /// The raw little-endian bytes of a view in place, where this device's buffers are host
    /// memory (the CPU backend), for host engines such as MPI to read without a copy; `None`
    /// on devices whose memory the host cannot address (the default).
    fn host_bytes<'v>(&self, src: View<'v, Self::Buffer>) -> Option<&'v [u8]> {
        let _ = src;
        None
    }
    /// [`MemoryOps::host_bytes`], writable.
    fn host_bytes_mut<'v>(&self, dst: ViewMut<'v, Self::Buffer>) -> Option<&'v mut [u8]> {
        let _ = dst;
        None
    }
    /// Device bytes free for new buffers now, where the device can say (CUDA:
    /// `cuMemGetInfo`); `None` where it cannot (the CPU, whose memory is the host's, and
    /// wgpu, which has no such query).
    fn free_memory(&self) -> Option<u64> {
        None
    }

    /// `dst = src` converted to `dst`'s dtype with `rounding` (same length).
    fn cast(
        &self,
        src: View<'_, Self::Buffer>,
        dst: ViewMut<'_, Self::Buffer>,
        rounding: Rounding,
    ) -> Result<()>;
    /// Every element of `dst` set to `value` (rounded to nearest even).
    fn fill(&self, dst: ViewMut<'_, Self::Buffer>, value: f32) -> Result<()>;
}
