//! NCCL collectives over the CUDA backend's buffers (feature `nccl`): the [`DeviceComm`] of
//! a data-parallel run on GPUs, one rank per GPU.
//!
//! - **Rendezvous.** Rank 0 makes NCCL's unique id ([`MemoryOps::device_comm_id`]); the
//!   trainer sends it to the other ranks over MPI; every rank opens its communicator with it
//!   ([`MemoryOps::device_comm`], `ncclCommInitRank`).
//! - **Streams.** The collectives run on a stream of their own. Each one first makes that
//!   stream wait for an event recorded on the backend's stream (so it sees every gradient
//!   written so far), and [`DeviceComm::join`] makes the backend's stream wait for the
//!   communication stream: a bucket's all-reduce runs while the backward pass goes on
//!   computing other gradients. Neither wait blocks the host.
//! - **In place.** All-reduce, reduce-scatter and all-gather work inside the caller's buffer
//!   (NCCL's in-place forms), so nothing is staged.
//! - libnccl is loaded at run time (cudarc's dynamic loading looks for `libnccl.so`): without
//!   it, opening a communicator is a [`KernelError::NoDevice`] naming the library, never a
//!   panic.

use std::sync::Arc;

use cudarc::driver::CudaStream;
use cudarc::nccl::{result, sys};
use mp_dtype::DType;

use super::{BACKEND, CudaBackend, CudaBuffer};
use crate::backend::{DeviceBuffer, DeviceComm, ViewMut};
use crate::{KernelError, Result};

/// One rank's NCCL communicator, with the backend's stream and its own.
pub(super) struct Nccl {
    comm: sys::ncclComm_t,
    /// The backend's stream: the collectives wait for it, and it joins them.
    compute: Arc<CudaStream>,
    /// The stream the collectives run on.
    stream: Arc<CudaStream>,
    rank: usize,
    size: usize,
    device: String,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; every call
// here takes `&self` through a trait whose users (the trainer) call it from one thread, and
// the streams are cudarc's thread-safe handles.
unsafe impl Send for Nccl {}
// SAFETY: as above.
unsafe impl Sync for Nccl {}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: `comm` was initialised by ncclCommInitRank and is destroyed once, here;
        // the stream's pending collectives finish before NCCL frees the communicator.
        unsafe {
            let _ = self.stream.synchronize();
            let _ = result::comm_destroy(self.comm);
        }
    }
}

fn missing_nccl() -> KernelError {
    KernelError::NoDevice {
        backend: BACKEND,
        reason: "libnccl.so was not found: install NCCL (NVIDIA's libnccl-dev package, or the \
                 nvidia-nccl wheel with a libnccl.so link to its libnccl.so.2) and add its \
                 folder to LD_LIBRARY_PATH"
            .into(),
    }
}

fn nccl_present() -> bool {
    // SAFETY: only probes whether the dynamic library loads.
    unsafe { sys::is_culib_present() }
}

impl CudaBackend {
    fn nccl_err(&self, op: &'static str, e: result::NcclError) -> KernelError {
        self.dev_err(op, e)
    }

    pub(super) fn nccl_id(&self) -> Result<Vec<u8>> {
        if !nccl_present() {
            return Err(missing_nccl());
        }
        let id = result::get_uniqueid().map_err(|e| self.nccl_err("nccl unique id", e))?;
        Ok(id.internal.iter().map(|&c| c as u8).collect())
    }

    pub(super) fn nccl_comm(&self, id: &[u8], rank: usize, size: usize) -> Result<Nccl> {
        const OP: &str = "nccl init";
        if !nccl_present() {
            return Err(missing_nccl());
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        if id.len() != internal.len() || rank >= size {
            return Err(self.shape_err(
                OP,
                format!(
                    "rank {rank} of {size} with a {}-byte id (NCCL's is 128)",
                    id.len()
                ),
            ));
        }
        for (d, &s) in internal.iter_mut().zip(id) {
            *d = s as std::ffi::c_char;
        }
        let count = |n: usize| i32::try_from(n).map_err(|_| self.shape_err(OP, format!("{n}")));
        let (nranks, me) = (count(size)?, count(rank)?);
        self.ctx.bind_to_thread().map_err(|e| self.dev_err(OP, e))?;
        let stream = self.ctx.new_stream().map_err(|e| self.dev_err(OP, e))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL on success; the id is NCCL's own 128 bytes, made
        // by rank 0's ncclGetUniqueId.
        let comm = unsafe {
            result::comm_init_rank(
                comm.as_mut_ptr(),
                nranks,
                sys::ncclUniqueId { internal },
                me,
            )
            .map_err(|e| self.nccl_err(OP, e))?;
            comm.assume_init()
        };
        Ok(Nccl {
            comm,
            compute: Arc::clone(&self.stream),
            stream,
            rank,
            size,
            device: self.name.clone(),
        })
    }
}

/// NCCL's type of a dtype.
fn nccl_type(dt: DType) -> sys::ncclDataType_t {
    match dt {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::F16 => sys::ncclDataType_t::ncclFloat16,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F8E4M3 | DType::F8E5M2 => sys::ncclDataType_t::ncclUint8,
    }
}

impl Nccl {
    fn err(&self, op: &'static str, msg: impl std::fmt::Debug) -> KernelError {
        KernelError::Device {
            op,
            device: self.device.clone(),
            msg: format!("{msg:?}"),
        }
    }

    /// The device address of a view and its element count, checked to split into `size`
    /// equal blocks when `blocks`.
    fn target(
        &self,
        op: &'static str,
        v: &ViewMut<'_, CudaBuffer>,
        f32_only: bool,
        blocks: bool,
    ) -> Result<(u64, usize)> {
        let dt = v.buf.dtype();
        if f32_only && dt != DType::F32 {
            return Err(KernelError::Shape {
                op,
                device: self.device.clone(),
                msg: format!("sums are taken in FP32, the buffer is {dt}"),
            });
        }
        if v.offset + v.len > v.buf.len() || (blocks && !v.len.is_multiple_of(self.size)) {
            return Err(KernelError::Shape {
                op,
                device: self.device.clone(),
                msg: format!(
                    "{}+{} of a {}-element buffer in {} blocks",
                    v.offset,
                    v.len,
                    v.buf.len(),
                    self.size
                ),
            });
        }
        let (base, _g) = cudarc::driver::DevicePtr::device_ptr(&v.buf.data, &self.stream);
        Ok((base + (v.offset * dt.size_in_bytes()) as u64, v.len))
    }

    /// Makes the communication stream wait for the backend's work so far.
    fn after_compute(&self, op: &'static str) -> Result<()> {
        self.stream.join(&self.compute).map_err(|e| self.err(op, e))
    }

    fn raw_stream(&self) -> sys::cudaStream_t {
        self.stream.cu_stream() as sys::cudaStream_t
    }
}

impl DeviceComm<CudaBuffer> for Nccl {
    fn engine(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&self, buf: ViewMut<'_, CudaBuffer>) -> Result<()> {
        const OP: &str = "nccl all_reduce";
        let (ptr, n) = self.target(OP, &buf, true, false)?;
        if n == 0 {
            return Ok(());
        }
        self.after_compute(OP)?;
        // SAFETY: `ptr` addresses `n` FP32 elements of a live buffer of this device (checked
        // above); in place (send == recv) is NCCL's in-place all-reduce; the caller keeps the
        // buffer untouched until `join`.
        unsafe {
            result::all_reduce(
                ptr as *const _,
                ptr as *mut _,
                n,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.raw_stream(),
            )
        }
        .map(|_| ())
        .map_err(|e| self.err(OP, e))
    }

    fn reduce_scatter_sum(&self, buf: ViewMut<'_, CudaBuffer>) -> Result<()> {
        const OP: &str = "nccl reduce_scatter";
        let (ptr, n) = self.target(OP, &buf, true, true)?;
        let block = n / self.size;
        if block == 0 {
            return Ok(());
        }
        self.after_compute(OP)?;
        let mine = ptr + (self.rank * block * 4) as u64;
        // SAFETY: as in `all_reduce_sum`; the receive block is this rank's block of the send
        // buffer, NCCL's in-place reduce-scatter.
        unsafe {
            result::reduce_scatter(
                ptr as *const _,
                mine as *mut _,
                block,
                sys::ncclDataType_t::ncclFloat32,
                sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.raw_stream(),
            )
        }
        .map(|_| ())
        .map_err(|e| self.err(OP, e))
    }

    fn all_gather(&self, buf: ViewMut<'_, CudaBuffer>) -> Result<()> {
        const OP: &str = "nccl all_gather";
        let dt = buf.buf.dtype();
        let (ptr, n) = self.target(OP, &buf, false, true)?;
        let block = n / self.size;
        if block == 0 {
            return Ok(());
        }
        self.after_compute(OP)?;
        let mine = ptr + (self.rank * block * dt.size_in_bytes()) as u64;
        // SAFETY: as in `all_reduce_sum`; the send block is this rank's block of the receive
        // buffer, NCCL's in-place all-gather.
        unsafe {
            result::all_gather(
                mine as *const _,
                ptr as *mut _,
                block,
                nccl_type(dt),
                self.comm,
                self.raw_stream(),
            )
        }
        .map(|_| ())
        .map_err(|e| self.err(OP, e))
    }

    fn join(&self) -> Result<()> {
        self.compute
            .join(&self.stream)
            .map_err(|e| self.err("nccl join", e))
    }
}
