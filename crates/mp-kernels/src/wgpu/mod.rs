//! The wgpu backend: WGSL compute shaders for every op of [`Backend`](crate::Backend), on any adapter wgpu
//! reaches (Vulkan, Metal, DX12; Mesa's lavapipe CPU driver in CI).
//!
//! - [`WgpuBackend::new`] picks an adapter (`WGPU_BACKEND` / `WGPU_ADAPTER_NAME` choose, as
//!   everywhere in wgpu) and returns [`KernelError::NoDevice`] naming what is missing when
//!   there is none or it lacks a needed limit; it never falls back to the CPU.
//! - Buffers are storage buffers: F32 as `f32`, F16/BF16/FP8 packed in `u32` words and
//!   converted in the shaders with the integer code of mp-dtype (bit-identical rounding, no
//!   `SHADER_F16` needed); see the `codegen` module for how views at any element offset are handled.
//! - Every dot product and reduction accumulates in f32. Kernels are generated per dtype mix
//!   and cached; dispatches are linearised over two dimensions to stay under the 65535
//!   workgroups-per-dimension limit, and flat ops (casts, pointwise, the optimizer and the
//!   gradient check) are split into chunks whose bindings fit the device's largest storage
//!   binding (128 MiB on many adapters).
//! - Ops are queued and return at once; only the `download_*` methods,
//!   [`grad_stats`](crate::OptimOps::grad_stats), the precision-health counts
//!   ([`range_counts`](crate::OptimOps::range_counts),
//!   [`lost_update_counts`](crate::OptimOps::lost_update_counts): one read back of every
//!   workgroup's partial counts per call) and
//!   [`synchronize`](crate::MemoryOps::synchronize) wait for the device. Validation
//!   errors of queued work are reported by the next waiting call.
//! - Freed buffers go to a size-keyed pool and are reused by later allocations of the same
//!   size (the steady state of a training loop allocates nothing).

pub(crate) mod codegen;
mod ops;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ::wgpu as wg;
use ::wgpu::util::DeviceExt;
use mp_dtype::DType;

use crate::backend::DeviceBuffer;
use crate::{KernelError, Result};
use codegen::{Shader, Slot};

const BACKEND: &str = "wgpu";

/// Options of a [`WgpuBackend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Caps the bytes of one storage binding below the adapter's limit, at least 64 KiB (tests use a small cap
    /// to exercise the chunked paths); `None` uses the adapter's limit.
    pub max_binding_bytes: Option<u64>,
    /// Accept a software adapter (one that renders on the CPU: Mesa's llvmpipe/lavapipe,
    /// WARP), which is otherwise refused with an error naming it: it is far slower than the
    /// CPU backend, and a GPU run that lands on it by accident should say so.
    pub allow_software: bool,
}

/// The environment variable that lets [`WgpuOptions::default`] accept a software adapter
/// (`1`; CI sets it to test on lavapipe).
pub const ALLOW_SOFTWARE_ENV: &str = "MP_ALLOW_SOFTWARE_ADAPTER";

impl Default for WgpuOptions {
    /// The adapter's own limits; a software adapter only when `MP_ALLOW_SOFTWARE_ADAPTER=1`.
    fn default() -> Self {
        WgpuOptions {
            max_binding_bytes: None,
            allow_software: std::env::var(ALLOW_SOFTWARE_ENV).is_ok_and(|v| v == "1"),
        }
    }
}

/// Pooled device buffers by byte size.
#[derive(Default)]
struct Pool {
    free: HashMap<u64, Vec<wg::Buffer>>,
    bytes: u64,
}

/// Bytes of freed buffers the pool keeps at most.
const POOL_CAP: u64 = 1 << 30;

/// The state shared by a backend and its buffers.
struct Shared {
    pool: Mutex<Pool>,
}

/// A flat buffer of one dtype in device memory (a storage buffer; packed for narrow dtypes).
pub struct WgpuBuffer {
    buf: Option<wg::Buffer>,
    dtype: DType,
    len: usize,
    shared: Arc<Shared>,
}

impl WgpuBuffer {
    fn raw(&self) -> &wg::Buffer {
        // Only `Drop` takes the buffer out.
        self.buf
            .as_ref()
            .expect("a live WgpuBuffer holds its buffer")
    }
}

impl std::fmt::Debug for WgpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuBuffer({} x {})", self.len, self.dtype)
    }
}

impl Drop for WgpuBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let size = b.size();
            let mut pool = self.shared.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.bytes + size <= POOL_CAP {
                pool.bytes += size;
                pool.free.entry(size).or_default().push(b);
            }
        }
    }
}

impl DeviceBuffer for WgpuBuffer {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// A buffer of `u32` indices on the device, with the host copy it was uploaded from (used to
/// validate ids and to group positions for the embedding backward without reading the
/// device).
pub struct WgpuIndex {
    buf: wg::Buffer,
    host: Vec<u32>,
}

impl WgpuIndex {
    /// Number of indices.
    pub fn len(&self) -> usize {
        self.host.len()
    }
    /// True when there is no index.
    pub fn is_empty(&self) -> bool {
        self.host.is_empty()
    }
}

impl std::fmt::Debug for WgpuIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuIndex({})", self.host.len())
    }
}

/// A compiled kernel and its bind group layout.
struct Pipeline {
    pipeline: wg::ComputePipeline,
    layout: wg::BindGroupLayout,
}

/// The wgpu device: every op of [`Backend`](crate::Backend) as WGSL compute shaders.
pub struct WgpuBackend {
    device: wg::Device,
    queue: wg::Queue,
    name: String,
    /// Largest bytes of one storage binding (adapter limit, or the option's cap).
    max_binding: u64,
    /// Alignment of storage binding offsets.
    align: u64,
    pipelines: Mutex<HashMap<String, Arc<Pipeline>>>,
    errors: Arc<Mutex<Vec<String>>>,
    shared: Arc<Shared>,
    /// The most loop iterations one invocation may run, where the driver stops loops early:
    /// Mesa's llvmpipe (lavapipe) ends a shader's divergent loops after 65535 iterations in all
    /// (`LP_MAX_TGSI_LOOP_ITERATIONS`) without an error, so kernels whose loops could run longer
    /// take another formulation there.
    loop_limit: Option<u64>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("name", &self.name)
            .field("max_binding", &self.max_binding)
            .finish_non_exhaustive()
    }
}

fn no_device(reason: impl Into<String>) -> KernelError {
    KernelError::NoDevice {
        backend: BACKEND,
        reason: reason.into(),
    }
}

/// Mesa llvmpipe's `LP_MAX_TGSI_LOOP_ITERATIONS`: the iterations, over all the loops of one
/// shader invocation, after which its loops end.
const LLVMPIPE_LOOP_LIMIT: u64 = 65535;

/// Whether the adapter is Mesa's llvmpipe (lavapipe on Vulkan, or GL/GLES on llvmpipe).
fn is_llvmpipe(info: &wg::AdapterInfo) -> bool {
    let has = |s: &str| s.to_ascii_lowercase().contains("llvmpipe");
    has(&info.name) || has(&info.driver) || has(&info.driver_info)
}

impl WgpuBackend {
    /// The first adapter wgpu offers (high-performance preference), with default options.
    pub fn new() -> Result<Self> {
        Self::with_options(WgpuOptions::default())
    }

    /// [`WgpuBackend::new`] with options.
    pub fn with_options(opts: WgpuOptions) -> Result<Self> {
        let mut desc = wg::InstanceDescriptor::new_without_display_handle_from_env();
        if wg::Backends::from_env().is_none() {
            desc.backends = wg::Backends::all();
        }
        let instance = wg::Instance::new(desc);
        let adapter = pollster::block_on(instance.request_adapter(&wg::RequestAdapterOptions {
            power_preference: wg::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| {
            no_device(format!(
                "no adapter ({e}); on Linux install a Vulkan driver (e.g. `mesa-vulkan-drivers` \
                 for the lavapipe CPU adapter) and set WGPU_BACKEND=vulkan"
            ))
        })?;
        let info = adapter.get_info();
        if info.device_type == wg::DeviceType::Cpu && !opts.allow_software {
            return Err(no_device(format!(
                "the adapter wgpu offers is {} ({:?}, driver {:?}), a software renderer on the CPU, \
                 far slower than the cpu backend; to use it anyway set {ALLOW_SOFTWARE_ENV}=1 \
                 (mp-train: --allow-software-adapter)",
                info.name, info.backend, info.driver
            )));
        }
        let limits = adapter.limits();
        // What the kernels need: 12 storage bindings (layer-norm backward binds 8), 8 KiB of
        // workgroup memory (GEMM tiles), 256 invocations per workgroup.
        let needs: [(&str, u64, u64); 3] = [
            (
                "max_storage_buffers_per_shader_stage",
                u64::from(limits.max_storage_buffers_per_shader_stage),
                8,
            ),
            (
                "max_compute_workgroup_storage_size",
                u64::from(limits.max_compute_workgroup_storage_size),
                8192,
            ),
            (
                "max_compute_invocations_per_workgroup",
                u64::from(limits.max_compute_invocations_per_workgroup),
                256,
            ),
        ];
        for (what, have, need) in needs {
            if have < need {
                return Err(no_device(format!(
                    "adapter {} ({:?}) has {what} = {have}, the kernels need {need}",
                    info.name, info.backend
                )));
            }
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wg::DeviceDescriptor {
            label: Some("mp-kernels"),
            required_features: wg::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| no_device(format!("adapter {} refused a device: {e}", info.name)))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wg::Error| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string());
        }));
        let mut max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        if let Some(cap) = opts.max_binding_bytes {
            max_binding = max_binding.min(cap.max(64 << 10));
        }
        // Bindings are multiples of 4 bytes.
        max_binding &= !3;
        Ok(WgpuBackend {
            device,
            queue,
            name: format!("wgpu:{} ({:?})", info.name, info.backend),
            max_binding,
            align: u64::from(limits.min_storage_buffer_offset_alignment).max(4),
            pipelines: Mutex::default(),
            errors,
            shared: Arc::new(Shared {
                pool: Mutex::default(),
            }),
            loop_limit: is_llvmpipe(&info).then_some(LLVMPIPE_LOOP_LIMIT),
        })
    }

    /// Bytes of the largest storage binding an op may use.
    pub fn max_binding_bytes(&self) -> u64 {
        self.max_binding
    }

    /// Whether a kernel whose invocations run up to `iterations` loop iterations in all gets
    /// them all on this adapter (false only on drivers that end long loops early: llvmpipe).
    pub(crate) fn loops_fit(&self, iterations: u64) -> bool {
        self.loop_limit.is_none_or(|limit| iterations <= limit)
    }

    fn device_err(&self, op: &'static str, msg: impl Into<String>) -> KernelError {
        KernelError::Device {
            op,
            device: self.name.clone(),
            msg: msg.into(),
        }
    }

    /// Fails with the first validation error the device reported since the last check.
    fn take_errors(&self, op: &'static str) -> Result<()> {
        let mut errs = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if errs.is_empty() {
            return Ok(());
        }
        let msg = errs.join("; ");
        errs.clear();
        Err(self.device_err(op, msg))
    }

    /// A buffer of `bytes` (rounded up to 4), from the pool when one of that size is free;
    /// its contents are unspecified.
    fn raw_buffer(&self, bytes: u64) -> wg::Buffer {
        let size = bytes.div_ceil(4).max(1) * 4;
        {
            let mut pool = self.shared.pool.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = pool.free.get_mut(&size).and_then(Vec::pop) {
                pool.bytes -= size;
                return b;
            }
        }
        self.device.create_buffer(&wg::BufferDescriptor {
            label: None,
            size,
            usage: wg::BufferUsages::STORAGE
                | wg::BufferUsages::COPY_SRC
                | wg::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn wrap(&self, buf: wg::Buffer, dtype: DType, len: usize) -> WgpuBuffer {
        WgpuBuffer {
            buf: Some(buf),
            dtype,
            len,
            shared: self.shared.clone(),
        }
    }

    fn check_alloc(&self, op: &'static str, bytes: usize) -> Result<u64> {
        let bytes = bytes as u64;
        let max = self.device.limits().max_buffer_size;
        if bytes > max {
            return Err(KernelError::Shape {
                op,
                device: self.name.clone(),
                msg: format!("{bytes} bytes exceed the adapter's largest buffer ({max} bytes)"),
            });
        }
        Ok(bytes)
    }

    /// A compiled pipeline for `shader`'s `entry` with these slots and constants (cached).
    fn pipeline(
        &self,
        op: &'static str,
        shader: &Shader,
        entry: &str,
        slots: &[Slot],
        consts: &[(&str, u32)],
    ) -> Result<Arc<Pipeline>> {
        let key = format!("{}:{entry}:{slots:?}:{consts:?}", shader.name);
        if let Some(p) = self
            .pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(p.clone());
        }
        let src = codegen::source(shader, slots, consts);
        let scope = self.device.push_error_scope(wg::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wg::ShaderModuleDescriptor {
                label: Some(shader.name),
                source: wg::ShaderSource::Wgsl(src.into()),
            });
        let uniform = |binding| wg::BindGroupLayoutEntry {
            binding,
            visibility: wg::ShaderStages::COMPUTE,
            ty: wg::BindingType::Buffer {
                ty: wg::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let mut entries = vec![uniform(0), uniform(1)];
        for slot in slots.iter().filter(|s| **s != Slot::Absent) {
            let read_only = !matches!(slot, Slot::Data { rw: true, .. });
            entries.push(wg::BindGroupLayoutEntry {
                binding: entries.len() as u32,
                visibility: wg::ShaderStages::COMPUTE,
                ty: wg::BindingType::Buffer {
                    ty: wg::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = self
            .device
            .create_bind_group_layout(&wg::BindGroupLayoutDescriptor {
                label: Some(shader.name),
                entries: &entries,
            });
        let pl = self
            .device
            .create_pipeline_layout(&wg::PipelineLayoutDescriptor {
                label: Some(shader.name),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wg::ComputePipelineDescriptor {
                label: Some(shader.name),
                layout: Some(&pl),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(self.device_err(
                op,
                format!("compiling kernel {}::{entry}: {e}", shader.name),
            ));
        }
        let p = Arc::new(Pipeline { pipeline, layout });
        self.pipelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, p.clone());
        Ok(p)
    }

    /// A binding of `len` elements of `elem` bytes from element `offset` of `buf`: the
    /// aligned byte range that covers them and the offset of the first element within it.
    fn bind_range(
        &self,
        op: &'static str,
        name: &str,
        buf: &wg::Buffer,
        elem: u64,
        offset: u64,
        len: u64,
    ) -> Result<(u64, u64, u32)> {
        let first = offset * elem;
        let start = first / self.align * self.align;
        let end = ((offset + len) * elem).div_ceil(4) * 4;
        let end = end.max(start + 4).min(buf.size());
        if end - start > self.max_binding {
            return Err(KernelError::Shape {
                op,
                device: self.name.clone(),
                msg: format!(
                    "{name}: a view of {len} elements ({} bytes) exceeds the largest storage \
                     binding of this device ({} bytes)",
                    end - start,
                    self.max_binding
                ),
            });
        }
        let in_binding = (first - start) / elem;
        let in_binding = u32::try_from(in_binding).map_err(|_| {
            self.device_err(
                op,
                format!("{name}: element offset {in_binding} overflows u32"),
            )
        })?;
        Ok((start, end - start, in_binding))
    }

    /// Encodes and submits `passes` (each one dispatch) in one command buffer.
    fn submit(&self, op: &'static str, passes: &[Pass<'_>]) -> Result<()> {
        let mut enc = self
            .device
            .create_command_encoder(&wg::CommandEncoderDescriptor { label: Some(op) });
        let mut groups = Vec::with_capacity(passes.len());
        for pass in passes {
            if pass.grid.0 > 65535 || pass.grid.1 > 65535 || pass.grid.2 > 65535 {
                return Err(self.device_err(
                    op,
                    format!(
                        "grid {:?} exceeds 65535 workgroups per dimension",
                        pass.grid
                    ),
                ));
            }
            let mut meta = [0u32; 16];
            let mut params = [0u32; 16];
            params[..pass.params.len()].copy_from_slice(pass.params);
            let mut ranges = Vec::new();
            for (k, t) in pass.tensors.iter().enumerate() {
                let (start, size, first) =
                    self.bind_range(op, t.name, t.buf, t.elem_bytes, t.offset, t.len)?;
                meta[k] = first;
                ranges.push((start, size));
            }
            let mut bytes = vec![0u8; 512];
            bytes[..64].copy_from_slice(bytemuck::cast_slice(&meta));
            bytes[256..320].copy_from_slice(bytemuck::cast_slice(&params));
            let ubuf = self
                .device
                .create_buffer_init(&wg::util::BufferInitDescriptor {
                    label: Some("mp-kernels uniforms"),
                    contents: &bytes,
                    usage: wg::BufferUsages::UNIFORM,
                });
            let mut entries = vec![
                wg::BindGroupEntry {
                    binding: 0,
                    resource: wg::BindingResource::Buffer(wg::BufferBinding {
                        buffer: &ubuf,
                        offset: 0,
                        size: wg::BufferSize::new(64),
                    }),
                },
                wg::BindGroupEntry {
                    binding: 1,
                    resource: wg::BindingResource::Buffer(wg::BufferBinding {
                        buffer: &ubuf,
                        offset: 256,
                        size: wg::BufferSize::new(64),
                    }),
                },
            ];
            for (k, (t, (start, size))) in pass.tensors.iter().zip(&ranges).enumerate() {
                entries.push(wg::BindGroupEntry {
                    binding: k as u32 + 2,
                    resource: wg::BindingResource::Buffer(wg::BufferBinding {
                        buffer: t.buf,
                        offset: *start,
                        size: wg::BufferSize::new(*size),
                    }),
                });
            }
            let bg = self.device.create_bind_group(&wg::BindGroupDescriptor {
                label: Some(op),
                layout: &pass.pipeline.layout,
                entries: &entries,
            });
            groups.push(bg);
        }
        for (pass, bg) in passes.iter().zip(&groups) {
            let mut cp = enc.begin_compute_pass(&wg::ComputePassDescriptor {
                label: Some(op),
                timestamp_writes: None,
            });
            cp.set_pipeline(&pass.pipeline.pipeline);
            cp.set_bind_group(0, bg, &[]);
            let (x, y, z) = pass.grid;
            cp.dispatch_workgroups(x, y, z);
        }
        self.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Copies `bytes` bytes from byte `start` of `buf` (both multiples of 4) to the host and
    /// waits for them.
    fn read_back(
        &self,
        op: &'static str,
        buf: &wg::Buffer,
        start: u64,
        bytes: u64,
    ) -> Result<Vec<u8>> {
        if bytes == 0 {
            self.take_errors(op)?;
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wg::BufferDescriptor {
            label: Some("mp-kernels readback"),
            size: bytes,
            usage: wg::BufferUsages::MAP_READ | wg::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wg::CommandEncoderDescriptor { label: Some(op) });
        enc.copy_buffer_to_buffer(buf, start, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wg::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wg::PollType::wait_indefinitely())
            .map_err(|e| self.device_err(op, format!("waiting for the device: {e}")))?;
        let mapped = rx
            .recv()
            .map_err(|_| self.device_err(op, "the map callback never ran"))?;
        self.take_errors(op)?;
        mapped.map_err(|e| self.device_err(op, format!("mapping the read-back buffer: {e}")))?;
        let out = staging
            .get_mapped_range(..)
            .map_err(|e| self.device_err(op, format!("reading the mapped buffer: {e}")))?
            .to_vec();
        staging.unmap();
        Ok(out)
    }

    /// A temporary buffer holding `words`.
    fn temp_u32(&self, words: &[u32]) -> wg::Buffer {
        let data: &[u32] = if words.is_empty() { &[0] } else { words };
        self.device
            .create_buffer_init(&wg::util::BufferInitDescriptor {
                label: Some("mp-kernels temporary"),
                contents: bytemuck::cast_slice(data),
                usage: wg::BufferUsages::STORAGE | wg::BufferUsages::COPY_SRC,
            })
    }
}

/// One tensor of a dispatch: `len` elements of `elem_bytes` from element `offset` of `buf`.
struct Tensor<'a> {
    name: &'static str,
    buf: &'a wg::Buffer,
    elem_bytes: u64,
    offset: u64,
    len: u64,
}

/// One dispatch: a pipeline, its tensors in binding order, its parameters and grid.
struct Pass<'a> {
    pipeline: Arc<Pipeline>,
    tensors: Vec<Tensor<'a>>,
    params: &'a [u32],
    grid: (u32, u32, u32),
}

/// A grid of `groups` workgroups linearised over (x, y), each at most 65535.
fn grid(groups: u64) -> (u32, u32, u32) {
    let x = groups.clamp(1, 65535);
    let y = groups.div_ceil(x).max(1);
    (x as u32, y.min(u64::from(u32::MAX)) as u32, 1)
}

/// The f32 bits of `v`, for parameter blocks.
fn fb(v: f32) -> u32 {
    v.to_bits()
}
