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
    /// A new rendezvous id for [`MemoryOps::device_comm`] (NCCL's unique id, 128 bytes), made by
    /// the first rank and sent to the others over the host engine (MPI); `None` on backends
    /// without collectives of their own (the default), whose arenas a host engine reduces.
    fn device_comm_id(&self) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    /// This process's place (`rank` of `size`) in the collectives over this backend's own
    /// buffers that every rank opens with the same `id` (from [`MemoryOps::device_comm_id`]);
    /// `None` where the backend has none (the default).
    fn device_comm(
        &self,
        id: &[u8],
        rank: usize,
        size: usize,
    ) -> Result<Option<Box<dyn DeviceComm<Self::Buffer>>>> {
        let _ = (id, rank, size);
        Ok(None)
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

/// Collectives over a backend's own buffers (NCCL on CUDA), for a data-parallel run whose
/// arenas are not host memory. Each call is enqueued after everything the backend has
/// enqueued so far and may run beside the backend's later work (on a stream of its own):
/// the caller must not touch a buffer it passed until [`DeviceComm::join`], which orders the
/// backend's later work after every collective so far. Every rank calls the same collectives
/// in the same order with buffers of the same lengths.
pub trait DeviceComm<Buf>: Send + Sync {
    /// The engine (`"nccl"`).
    fn engine(&self) -> &'static str;
    /// The sum over ranks of `buf` (FP32), in place.
    fn all_reduce_sum(&self, buf: ViewMut<'_, Buf>) -> Result<()>;
    /// `buf` (FP32, `size` equal blocks) summed over ranks, this rank's block of the sum
    /// written into its own block of `buf` (the other blocks are left undefined).
    fn reduce_scatter_sum(&self, buf: ViewMut<'_, Buf>) -> Result<()>;
    /// Every rank's own block of `buf` (`size` equal blocks, any dtype) gathered into every
    /// rank's `buf`.
    fn all_gather(&self, buf: ViewMut<'_, Buf>) -> Result<()>;
    /// The backend's work from now on runs after every collective enqueued so far (an event
    /// wait on the device; the host does not block).
    fn join(&self) -> Result<()>;
}
