//! The CUDA backend: cuBLASLt GEMMs and NVRTC-compiled kernels for every op of [`Backend`].
//!
//! - Libraries are loaded at run time (cudarc's dynamic loading, CUDA 13): the crate builds on
//!   machines without CUDA, and [`CudaBackend::new`] returns [`KernelError::NoDevice`] (never a
//!   panic, never a CPU fallback) when libcuda, libnvrtc, libcublasLt or a device is missing.
//! - Kernels are the `.cu` files of `crates/mp-kernels/kernels/`, compiled by NVRTC at first use
//!   for the device's architecture and cached per process ([`kernels`]).
//! - Every op is enqueued on one stream and returns without waiting; only the `download_*`
//!   methods, [`OptimOps::grad_stats`] (one 8-byte read), the precision-health counts
//!   ([`OptimOps::range_counts`], [`OptimOps::lost_update_counts`]: one launch and one read of
//!   the counters per call) and [`MemoryOps::synchronize`] wait.
//! - Memory comes from the device's stream-ordered pool (`cuMemAllocAsync`) with its release
//!   threshold raised so freed blocks stay cached: a caching allocator without a second copy of
//!   one. [`CudaBackend::memory`] reports live and peak bytes by category.

mod gemm;
pub mod kernels;
#[cfg(feature = "nccl")]
mod nccl;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
    PushKernelArg,
};
use mp_dtype::DType;

use crate::backend::*;
use crate::{KernelError, Result};
use kernels::KernelModule;

const BACKEND: &str = "cuda";

/// Options of a [`CudaBackend`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Device ordinal.
    pub device: usize,
    /// Let FP32 GEMMs use TF32 tensor cores (PyTorch's `allow_tf32`; off by default).
    pub allow_tf32: bool,
}

/// Bytes held on the device, by category (see [`CudaBackend::memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    /// Bytes of live [`CudaBuffer`]s.
    pub buffers: usize,
    /// The largest `buffers` seen.
    pub buffers_peak: usize,
    /// Bytes of the backend's persistent scratch (reduction partials) and index buffers.
    pub scratch: usize,
    /// Bytes of temporaries live inside ops (attention backward, mixed-dtype GEMMs), peak.
    pub temporaries_peak: usize,
    /// Bytes of the cuBLASLt workspace.
    pub gemm_workspace: usize,
}

#[derive(Default)]
struct MemStats {
    buffers: AtomicUsize,
    buffers_peak: AtomicUsize,
    scratch: AtomicUsize,
    temps: AtomicUsize,
    temps_peak: AtomicUsize,
}

impl MemStats {
    fn add(live: &AtomicUsize, peak: &AtomicUsize, bytes: usize) {
        let now = live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        peak.fetch_max(now, Ordering::Relaxed);
    }
}

/// A flat buffer of one dtype in device memory.
pub struct CudaBuffer {
    data: CudaSlice<u8>,
    dtype: DType,
    len: usize,
    stats: Arc<MemStats>,
}

impl std::fmt::Debug for CudaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBuffer({} x {})", self.len, self.dtype)
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        self.stats
            .buffers
            .fetch_sub(self.len * self.dtype.size_in_bytes(), Ordering::Relaxed);
    }
}

impl DeviceBuffer for CudaBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// A buffer of `u32` indices on the device, with the host copy it was uploaded from (used to
/// validate ids against table sizes without reading the device).
pub struct CudaIndex {
    data: CudaSlice<u32>,
    host: Vec<u32>,
}

impl CudaIndex {
    /// Number of indices.
    pub fn len(&self) -> usize {
        self.host.len()
    }
    /// True when there is no index.
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }
}

/// A temporary device allocation (freed in stream order on drop).
struct Temp {
    data: CudaSlice<u8>,
    bytes: usize,
    stats: Arc<MemStats>,
}
impl Drop for Temp {
    fn drop(&mut self) {
        self.stats.temps.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Reusable FP32/u32 scratch for reduction partials (grows, never shrinks).
struct Scratch {
    f32s: Option<CudaSlice<f32>>,
    flags: Option<CudaSlice<u32>>,
    out: Option<CudaSlice<f64>>,
}

/// Element-wise op codes of `mp_pointwise` (see kernels/elementwise.cu): the `OP_*` constants,
/// and `OP_UNARY + u` / `OP_UNARY_BWD + u` for [`UnaryOp`] code `u`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pw(i32);

impl Pw {
    const CAST: Pw = Pw(0);
    const FILL: Pw = Pw(1);
    const ADD: Pw = Pw(2);
    const MUL: Pw = Pw(3);
    const SCALE: Pw = Pw(4);
    const AXPY: Pw = Pw(5);
    const SUB: Pw = Pw(6);

    /// `c = f(a)`.
    fn unary(op: UnaryOp) -> Pw {
        Pw(16 + op.code() as i32)
    }

    /// `c += f'(a) b`.
    fn unary_backward(op: UnaryOp) -> Pw {
        Pw(32 + op.code() as i32)
    }
}

/// The dtype code the kernels use (common.cuh).
fn dt_code(dt: DType) -> i32 {
    match dt {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
        DType::F8E4M3 => 3,
        DType::F8E5M2 => 4,
    }
}

/// A device address plus what the kernels need to know about an operand.
#[derive(Clone, Copy)]
struct Arg {
    ptr: u64,
    dt: i32,
}

/// The CUDA backend of one device (see the module docs).
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    arch: &'static str,
    sm_count: u32,
    opts: CudaOptions,
    modules: Mutex<HashMap<KernelModule, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    lt: gemm::Lt,
    scratch: Mutex<Scratch>,
    stats: Arc<MemStats>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({}, {})", self.name, self.arch)
    }
}

fn no_device(reason: impl Into<String>) -> KernelError {
    KernelError::NoDevice {
        backend: BACKEND,
        reason: reason.into(),
    }
}

impl CudaBackend {
    /// The backend of device 0 with default options.
    pub fn new() -> Result<Self> {
        Self::with_options(CudaOptions::default())
    }

    /// The backend of `opts.device`. Returns [`KernelError::NoDevice`] when the CUDA driver,
    /// NVRTC, cuBLASLt, the CUDA headers or the device is missing.
    pub fn with_options(opts: CudaOptions) -> Result<Self> {
        // SAFETY: these only probe whether the dynamic libraries load.
        unsafe {
            if !cudarc::driver::sys::is_culib_present() {
                return Err(no_device(
                    "libcuda.so (the NVIDIA driver) was not found: no NVIDIA GPU driver on this machine",
                ));
            }
            if !cudarc::nvrtc::sys::is_culib_present() {
                return Err(no_device(
                    "libnvrtc.so.13 was not found: add the CUDA 13 lib64 folder to LD_LIBRARY_PATH",
                ));
            }
            if !cudarc::cublaslt::sys::is_culib_present() {
                return Err(no_device(
                    "libcublasLt.so.13 was not found: add the CUDA 13 lib64 folder to LD_LIBRARY_PATH",
                ));
            }
        }
        if kernels::cuda_include_dir().is_none() {
            return Err(no_device(
                "no CUDA include folder with cuda_bf16.h for NVRTC: set CUDA_HOME or MP_CUDA_INCLUDE",
            ));
        }
        let count = CudaContext::device_count()
            .map_err(|e| no_device(format!("cuInit/cuDeviceGetCount failed: {e:?}")))?;
        if count <= 0 || opts.device >= count as usize {
            return Err(no_device(format!(
                "device {} requested, {count} CUDA device(s) present",
                opts.device
            )));
        }
        let ctx = CudaContext::new(opts.device)
            .map_err(|e| no_device(format!("cannot create a context: {e:?}")))?;
        // One stream: stream order is the only synchronisation needed.
        // SAFETY: every buffer of this backend lives on `stream` alone.
        unsafe { ctx.disable_event_tracking() };
        let dev_err = |e: cudarc::driver::DriverError| no_device(format!("{e:?}"));
        let stream = ctx.new_stream().map_err(dev_err)?;
        let (major, minor) = ctx.compute_capability().map_err(dev_err)?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(dev_err)? as u32;
        let dev_name = ctx.name().unwrap_or_else(|_| "unknown".into());
        if ctx.has_async_alloc() {
            // keep freed memory in the pool (a caching allocator)
            // SAFETY: plain driver calls on the context's device.
            unsafe {
                let mut pool = std::mem::MaybeUninit::uninit();
                let r = cudarc::driver::sys::cuDeviceGetDefaultMemPool(
                    pool.as_mut_ptr(),
                    ctx.cu_device(),
                );
                if r == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                    let mut threshold = u64::MAX;
                    let _ = cudarc::driver::sys::cuMemPoolSetAttribute(
                        pool.assume_init(),
                        cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                        (&mut threshold) as *mut u64 as *mut std::ffi::c_void,
                    );
                }
            }
        }
        let lt = gemm::Lt::new(&stream).map_err(no_device)?;
        Ok(CudaBackend {
            name: format!("cuda:{} ({dev_name})", opts.device),
            arch: kernels::arch_name(major, minor),
            sm_count: sm_count.max(1),
            opts,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            lt,
            scratch: Mutex::new(Scratch {
                f32s: None,
                flags: None,
                out: None,
            }),
            stats: Arc::new(MemStats::default()),
            ctx,
            stream,
        })
    }

    /// The options this backend was created with.
    pub fn options(&self) -> CudaOptions {
        self.opts
    }

    /// Enables or disables TF32 tensor cores for FP32 GEMMs from now on.
    pub fn set_allow_tf32(&mut self, allow: bool) {
        self.opts.allow_tf32 = allow;
    }

    /// The NVRTC target architecture (`"sm_90"` on an H100/H200).
    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// The stream every op is enqueued on (for timing with events).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The driver context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Device bytes held by this backend, by category.
    pub fn memory(&self) -> MemoryReport {
        let s = &self.stats;
        MemoryReport {
            buffers: s.buffers.load(Ordering::Relaxed),
            buffers_peak: s.buffers_peak.load(Ordering::Relaxed),
            scratch: s.scratch.load(Ordering::Relaxed),
            temporaries_peak: s.temps_peak.load(Ordering::Relaxed),
            gemm_workspace: gemm::WORKSPACE_BYTES,
        }
    }

    /// Compiles (if needed, once per process) and loads every kernel module now, so that the
    /// first op does not pay for NVRTC.
    pub fn warm_up(&self) -> Result<()> {
        kernels::compile_all(self.arch).map_err(|e| self.dev_err("nvrtc", e.to_string()))?;
        for m in KernelModule::ALL {
            self.module(m)?;
        }
        Ok(())
    }

    // ----- plumbing -----------------------------------------------------------------------

    fn dev_err(&self, op: &'static str, e: impl std::fmt::Debug) -> KernelError {
        KernelError::Device {
            op,
            device: self.name.clone(),
            msg: format!("{e:?}"),
        }
    }

    fn shape_err(&self, op: &'static str, msg: impl Into<String>) -> KernelError {
        KernelError::Shape {
            op,
            device: self.name.clone(),
            msg: msg.into(),
        }
    }

    fn module(&self, m: KernelModule) -> Result<Arc<CudaModule>> {
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(module) = mods.get(&m) {
            return Ok(module.clone());
        }
        let image =
            kernels::cubin(m, self.arch).map_err(|e| self.dev_err("nvrtc", e.to_string()))?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(image.to_vec()))
            .map_err(|e| self.dev_err("load_module", e))?;
        mods.insert(m, module.clone());
        Ok(module)
    }

    fn func(&self, m: KernelModule, name: &'static str) -> Result<CudaFunction> {
        if let Some(f) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(f.clone());
        }
        let f = self
            .module(m)?
            .load_function(name)
            .map_err(|e| self.dev_err("load_function", e))?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, f.clone());
        Ok(f)
    }

    fn alloc_bytes(&self, op: &'static str, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: callers initialise the memory before reading it (or zero it).
        unsafe { self.stream.alloc::<u8>(bytes.max(1)) }.map_err(|e| self.dev_err(op, e))
    }

    fn new_buffer(&self, op: &'static str, dtype: DType, len: usize) -> Result<CudaBuffer> {
        let bytes = len
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| self.shape_err(op, format!("{len} elements overflow")))?;
        let data = self.alloc_bytes(op, bytes)?;
        MemStats::add(&self.stats.buffers, &self.stats.buffers_peak, bytes);
        Ok(CudaBuffer {
            data,
            dtype,
            len,
            stats: self.stats.clone(),
        })
    }

    fn temp(&self, op: &'static str, bytes: usize) -> Result<Temp> {
        let data = self.alloc_bytes(op, bytes)?;
        MemStats::add(&self.stats.temps, &self.stats.temps_peak, bytes);
        Ok(Temp {
            data,
            bytes,
            stats: self.stats.clone(),
        })
    }

    fn temp_ptr(&self, t: &Temp) -> u64 {
        let (p, _g) = t.data.device_ptr(&self.stream);
        p
    }

    /// The device address of element `offset` of `buf`.
    fn addr(&self, buf: &CudaBuffer, offset: usize) -> u64 {
        let (p, _g) = buf.data.device_ptr(&self.stream);
        p + (offset * buf.dtype.size_in_bytes()) as u64
    }

    fn arg(&self, v: View<'_, CudaBuffer>) -> Arg {
        Arg {
            ptr: self.addr(v.buf, v.offset),
            dt: dt_code(v.buf.dtype),
        }
    }

    fn arg_mut(&self, v: &ViewMut<'_, CudaBuffer>) -> Arg {
        Arg {
            ptr: self.addr(v.buf, v.offset),
            dt: dt_code(v.buf.dtype),
        }
    }

    fn index_ptr(&self, idx: &CudaIndex) -> u64 {
        let (p, _g) = idx.data.device_ptr(&self.stream);
        p
    }

    /// Grid for a grid-stride loop over `n` elements at 8 per thread.
    fn grid_8(&self, n: usize, block: u32) -> LaunchConfig {
        let chunks = n.div_ceil(8) as u64;
        let blocks = chunks
            .div_ceil(block as u64)
            .clamp(1, self.sm_count as u64 * 16);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Grid for a grid-stride loop over `n` elements at 1 per thread.
    fn grid_1(&self, n: usize, block: u32) -> LaunchConfig {
        let blocks = (n as u64)
            .div_ceil(block as u64)
            .clamp(1, self.sm_count as u64 * 32);
        LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// One block per row (grid-stride over rows beyond the grid limit).
    fn grid_rows(rows: usize, block: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows.clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// True when every (address, dtype) allows 8-element vector accesses.
    fn vec_ok(args: &[Arg]) -> bool {
        args.iter().all(|a| {
            // 8 elements: 32 bytes of f32 (two 16-byte accesses), 16 of f16/bf16, 8 of FP8
            let bytes = if a.dt <= 2 { 16 } else { 8 };
            a.ptr % bytes == 0
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn pointwise(
        &self,
        op_name: &'static str,
        op: Pw,
        a: Option<Arg>,
        b: Option<Arg>,
        c: Arg,
        n: usize,
        alpha: f32,
        rounding: Rounding,
        c_base: usize,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let f = self.func(KernelModule::Elementwise, "mp_pointwise")?;
        let mut all = vec![c];
        all.extend(a);
        all.extend(b);
        let vec = Self::vec_ok(&all) as i32;
        let a = a.unwrap_or(c);
        let b = b.unwrap_or(c);
        let (sr, seed) = match rounding {
            Rounding::NearestEven => (0i32, 0u64),
            Rounding::Stochastic { seed } => (1, seed),
        };
        let (opc, n64, base, sat) = (op.0, n as u64, c_base as u64, 0i32);
        let mut l = self.stream.launch_builder(&f);
        l.arg(&opc)
            .arg(&a.ptr)
            .arg(&a.dt)
            .arg(&b.ptr)
            .arg(&b.dt)
            .arg(&c.ptr)
            .arg(&c.dt)
            .arg(&n64)
            .arg(&vec)
            .arg(&alpha)
            .arg(&sr)
            .arg(&seed)
            .arg(&base)
            .arg(&sat);
        // SAFETY: the argument list matches mp_pointwise's signature; every address covers n
        // elements of its dtype (lengths checked by the callers).
        unsafe { l.launch(self.grid_8(n, 256)) }
            .map(|_| ())
            .map_err(|e| self.dev_err(op_name, e))
    }

    /// Scratch of at least `n_f32` floats and `n_flags` u32 (grows; reused in stream order):
    /// the guard and the addresses of the floats, the flags and one f64. Callers hold the
    /// guard until every launch that uses the scratch is enqueued, so that ops called from
    /// several threads cannot interleave their uses of it.
    fn scratch(
        &self,
        op: &'static str,
        n_f32: usize,
        n_flags: usize,
    ) -> Result<(std::sync::MutexGuard<'_, Scratch>, u64, u64, u64)> {
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let grow_f = s.f32s.as_ref().is_none_or(|b| b.len() < n_f32);
        if grow_f {
            let len = n_f32.max(1 << 16);
            // SAFETY: partials are written before they are read.
            let b = unsafe { self.stream.alloc::<f32>(len) }.map_err(|e| self.dev_err(op, e))?;
            let old = s.f32s.replace(b).map_or(0, |o| o.len() * 4);
            self.stats.scratch.fetch_add(len * 4, Ordering::Relaxed);
            self.stats.scratch.fetch_sub(old, Ordering::Relaxed);
        }
        if s.flags.as_ref().is_none_or(|b| b.len() < n_flags) {
            let len = n_flags.max(4096);
            // SAFETY: as above.
            let b = unsafe { self.stream.alloc::<u32>(len) }.map_err(|e| self.dev_err(op, e))?;
            let old = s.flags.replace(b).map_or(0, |o| o.len() * 4);
            self.stats.scratch.fetch_add(len * 4, Ordering::Relaxed);
            self.stats.scratch.fetch_sub(old, Ordering::Relaxed);
        }
        if s.out.is_none() {
            // SAFETY: as above.
            let b = unsafe { self.stream.alloc::<f64>(1) }.map_err(|e| self.dev_err(op, e))?;
            s.out = Some(b);
            self.stats.scratch.fetch_add(8, Ordering::Relaxed);
        }
        let ptrs = (
            self.slice_ptr(s.f32s.as_ref()),
            self.slice_ptr(s.flags.as_ref()),
            self.slice_ptr(s.out.as_ref()),
        );
        Ok((s, ptrs.0, ptrs.1, ptrs.2))
    }

    fn slice_ptr<T>(&self, b: Option<&CudaSlice<T>>) -> u64 {
        b.map_or(0, |b| {
            let (p, _g) = b.device_ptr(&self.stream);
            p
        })
    }

    /// Chunking of a column reduction over `rows`: (rows per chunk, chunks).
    fn col_chunks(rows: usize) -> (usize, usize) {
        let chunks = rows.div_ceil(64).clamp(1, 256);
        let per = rows.div_ceil(chunks).max(1);
        (per, rows.div_ceil(per).max(1))
    }

    fn launch_err(
        &self,
        op: &'static str,
    ) -> impl Fn(cudarc::driver::DriverError) -> KernelError + '_ {
        move |e| self.dev_err(op, e)
    }
}

mod ops;
