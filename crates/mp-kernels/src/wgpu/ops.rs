//! The op families for [`WgpuBackend`]: each op's contract ([`contract`]), then its
//! dispatches.

use mp_dtype::DType;

use super::codegen::{Shader, Slot, shaders};
use super::{Pass, Tensor, WgpuBackend, WgpuBuffer, WgpuIndex, fb, grid};
use crate::backend::contract::{self, Check};
use crate::backend::*;
use crate::{KernelError, Result};

/// Elements one invocation of the flat kernels handles, times the workgroup size.
const WG: u64 = 256;
/// Elements one workgroup of the gradient check reads.
const STATS_BLOCK: u64 = 4096;

/// A tensor argument before binding: a view's buffer, element offset and length.
#[derive(Clone, Copy)]
struct Arg<'a> {
    name: &'static str,
    buf: &'a ::wgpu::Buffer,
    slot: Slot,
    offset: u64,
    len: u64,
    /// Split with the flat chunks (else bound whole in every chunk).
    chunked: bool,
}

impl<'a> Arg<'a> {
    fn tensor(&self, start: u64, len: u64) -> Tensor<'a> {
        let elem_bytes = match self.slot {
            Slot::Data { dtype, .. } => dtype.size_in_bytes() as u64,
            _ => 4,
        };
        if self.chunked {
            Tensor {
                name: self.name,
                buf: self.buf,
                elem_bytes,
                offset: self.offset + start,
                len,
            }
        } else {
            Tensor {
                name: self.name,
                buf: self.buf,
                elem_bytes,
                offset: self.offset,
                len: self.len,
            }
        }
    }
    fn elem_bytes(&self) -> u64 {
        match self.slot {
            Slot::Data { dtype, .. } => dtype.size_in_bytes() as u64,
            _ => 4,
        }
    }
}

impl WgpuBackend {
    fn shape_err(&self, op: &'static str, msg: impl Into<String>) -> KernelError {
        KernelError::Shape {
            op,
            device: self.name.clone(),
            msg: msg.into(),
        }
    }

    fn mul(&self, op: &'static str, a: usize, b: usize) -> Result<usize> {
        a.checked_mul(b)
            .ok_or_else(|| self.shape_err(op, format!("{a} x {b} elements overflow")))
    }

    fn in_bounds(
        &self,
        op: &'static str,
        name: &str,
        off: usize,
        len: usize,
        of: usize,
    ) -> Result<()> {
        match off.checked_add(len) {
            Some(end) if end <= of => Ok(()),
            _ => Err(self.shape_err(
                op,
                format!("{name}: view {off}+{len} is outside its buffer of {of} elements"),
            )),
        }
    }

    /// A read-only tensor argument from a view (bounds-checked).
    fn arg<'a>(
        &self,
        op: &'static str,
        name: &'static str,
        v: View<'a, WgpuBuffer>,
    ) -> Result<Arg<'a>> {
        self.in_bounds(op, name, v.offset, v.len, v.buf.len)?;
        Ok(Arg {
            name,
            buf: v.buf.raw(),
            slot: Slot::Data {
                dtype: v.buf.dtype,
                rw: false,
            },
            offset: v.offset as u64,
            len: v.len as u64,
            chunked: true,
        })
    }

    /// A writable tensor argument from a view (bounds-checked).
    fn arg_mut<'a>(
        &self,
        op: &'static str,
        name: &'static str,
        v: &'a ViewMut<'_, WgpuBuffer>,
    ) -> Result<Arg<'a>> {
        self.in_bounds(op, name, v.offset, v.len, v.buf.len)?;
        Ok(Arg {
            name,
            buf: v.buf.raw(),
            slot: Slot::Data {
                dtype: v.buf.dtype,
                rw: true,
            },
            offset: v.offset as u64,
            len: v.len as u64,
            chunked: true,
        })
    }

    /// An index-buffer argument.
    fn arg_index<'a>(name: &'static str, buf: &'a ::wgpu::Buffer, len: usize) -> Arg<'a> {
        Arg {
            name,
            buf,
            slot: Slot::Index,
            offset: 0,
            len: len as u64,
            chunked: false,
        }
    }

    /// The slots of `shader` for `args` (absent where no argument names a tensor) and the
    /// arguments in binding order.
    fn order<'a>(shader: &Shader, args: &[Arg<'a>]) -> (Vec<Slot>, Vec<Arg<'a>>) {
        let mut slots = vec![Slot::Absent; shader.tensors.len()];
        let mut ordered = Vec::with_capacity(args.len());
        for (k, name) in shader.tensors.iter().enumerate() {
            if let Some(a) = args.iter().find(|a| a.name == *name) {
                slots[k] = a.slot;
                ordered.push(*a);
            }
        }
        debug_assert_eq!(
            ordered.len(),
            args.len(),
            "{}: unknown tensor name",
            shader.name
        );
        (slots, ordered)
    }

    /// Runs a flat kernel over `n` elements in chunks whose bindings fit the device:
    /// `params(start, len)` gives each chunk's parameter block, `per_group` elements per
    /// workgroup.
    #[allow(clippy::too_many_arguments)]
    fn flat(
        &self,
        op: &'static str,
        shader: &Shader,
        entry: &str,
        consts: &[(&str, u32)],
        args: &[Arg<'_>],
        n: u64,
        per_group: u64,
        params: impl Fn(u64, u64) -> Vec<u32>,
    ) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (slots, args) = Self::order(shader, args);
        let pipeline = self.pipeline(op, shader, entry, &slots, consts)?;
        let budget = self.max_binding.saturating_sub(self.align + 4);
        let mut chunk = args
            .iter()
            .filter(|a| a.chunked)
            .map(|a| budget / a.elem_bytes())
            .min()
            .unwrap_or(n);
        chunk = (chunk / STATS_BLOCK * STATS_BLOCK).clamp(STATS_BLOCK, u64::from(u32::MAX) / 2);
        let mut blocks = Vec::new();
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            blocks.push((start, len, params(start, len)));
            start += len;
        }
        let passes: Vec<Pass<'_>> = blocks
            .iter()
            .map(|(start, len, p)| Pass {
                pipeline: pipeline.clone(),
                tensors: args.iter().map(|a| a.tensor(*start, *len)).collect(),
                params: p,
                grid: grid(len.div_ceil(per_group)),
            })
            .collect();
        self.submit(op, &passes)
    }

    /// One dispatch of `entry` of `shader` over `groups` workgroups (linearised), with every
    /// argument bound whole.
    #[allow(clippy::too_many_arguments)]
    fn whole(
        &self,
        op: &'static str,
        shader: &Shader,
        entries: &[(&str, u64)],
        consts: &[(&str, u32)],
        args: &[Arg<'_>],
        params: &[u32],
    ) -> Result<()> {
        let (slots, args) = Self::order(shader, args);
        let mut passes = Vec::new();
        for &(entry, groups) in entries {
            if groups == 0 {
                continue;
            }
            passes.push(Pass {
                pipeline: self.pipeline(op, shader, entry, &slots, consts)?,
                tensors: args.iter().map(|a| a.tensor(0, a.len)).collect(),
                params,
                grid: grid(groups),
            });
        }
        if passes.is_empty() {
            return Ok(());
        }
        self.submit(op, &passes)
    }

    /// A u32 parameter, or a shape error when it does not fit.
    fn u32p(&self, op: &'static str, what: &str, v: usize) -> Result<u32> {
        u32::try_from(v).map_err(|_| self.shape_err(op, format!("{what} = {v} exceeds u32")))
    }

    /// An F32 scratch buffer of `len` elements (contents unspecified).
    fn scratch_f32(&self, len: usize) -> WgpuBuffer {
        let b = self.raw_buffer((len.max(1) * 4) as u64);
        self.wrap(b, DType::F32, len)
    }

    /// The pointwise kernel `C_OP = code` over `n` elements.
    #[allow(clippy::too_many_arguments)]
    fn pointwise(
        &self,
        op: &'static str,
        code: u32,
        a: Option<View<'_, WgpuBuffer>>,
        b: Option<(View<'_, WgpuBuffer>, bool)>,
        out: &ViewMut<'_, WgpuBuffer>,
        alpha: f32,
        cols: u32,
    ) -> Result<()> {
        let mut args = Vec::new();
        if let Some(a) = a {
            args.push(self.arg(op, "a", a)?);
        }
        if let Some((b, chunked)) = b {
            let mut bb = self.arg(op, "b", b)?;
            bb.chunked = chunked;
            args.push(bb);
        }
        args.push(self.arg_mut(op, "out", out)?);
        self.flat(
            op,
            &shaders::POINTWISE,
            "main",
            &[("C_OP", code)],
            &args,
            out.len as u64,
            WG,
            |start, len| vec![len as u32, cols, start as u32, fb(alpha)],
        )
    }

    /// Rounding parameters: (C_SR, seed key).
    fn rounding(r: Rounding) -> (u32, u32) {
        match r {
            Rounding::NearestEven => (0, 0),
            Rounding::Stochastic { seed } => (1, seed_key(seed)),
        }
    }
}

/// mp-dtype's per-seed key of the stochastic-rounding generator.
fn seed_key(seed: u64) -> u32 {
    mp_dtype::mix32((seed as u32) ^ mp_dtype::mix32(((seed >> 32) as u32) ^ 0x9e37_79b9))
}

/// `(lo, hi)` words of an absolute element index.
fn split64(v: u64) -> (u32, u32) {
    (v as u32, (v >> 32) as u32)
}

impl MemoryOps for WgpuBackend {
    type Buffer = WgpuBuffer;
    type Index = WgpuIndex;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<WgpuBuffer> {
        const OP: &str = "zeros";
        let bytes = self.check_alloc(OP, self.mul(OP, len, dtype.size_in_bytes())?)?;
        let buf = self.raw_buffer(bytes);
        let mut enc = self
            .device
            .create_command_encoder(&::wgpu::CommandEncoderDescriptor { label: Some(OP) });
        enc.clear_buffer(&buf, 0, None);
        self.queue.submit([enc.finish()]);
        Ok(self.wrap(buf, dtype, len))
    }

    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<WgpuBuffer> {
        let mut bytes = vec![0u8; data.len() * dtype.size_in_bytes()];
        if dtype == DType::F32 {
            bytes.copy_from_slice(bytemuck::cast_slice(data));
        } else {
            mp_dtype::encode(data, &mut bytes, dtype, &mp_dtype::EncodeOptions::default())?;
        }
        self.upload_bytes(&bytes, dtype)
    }

    fn upload_bytes(&self, bytes: &[u8], dtype: DType) -> Result<WgpuBuffer> {
        const OP: &str = "upload_bytes";
        let size = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return Err(KernelError::DType(mp_dtype::DTypeError::RaggedBytes {
                op: OP,
                bytes: bytes.len(),
                dtype,
            }));
        }
        self.check_alloc(OP, bytes.len())?;
        let buf = self.raw_buffer(bytes.len() as u64);
        let whole = bytes.len() / 4 * 4;
        if whole > 0 {
            self.queue.write_buffer(&buf, 0, &bytes[..whole]);
        }
        if whole < bytes.len() {
            let mut tail = [0u8; 4];
            tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
            self.queue.write_buffer(&buf, whole as u64, &tail);
        }
        Ok(self.wrap(buf, dtype, bytes.len() / size))
    }

    fn download_f32(&self, src: View<'_, WgpuBuffer>) -> Result<Vec<f32>> {
        let dtype = src.buf.dtype;
        let bytes = self.download_bytes(src)?;
        let mut out = vec![0.0f32; src.len];
        if dtype == DType::F32 {
            out.copy_from_slice(bytemuck::cast_slice(&bytes));
        } else {
            mp_dtype::decode(&bytes, dtype, &mut out)?;
        }
        Ok(out)
    }

    fn download_bytes(&self, src: View<'_, WgpuBuffer>) -> Result<Vec<u8>> {
        const OP: &str = "download_bytes";
        self.in_bounds(OP, "src", src.offset, src.len, src.buf.len)?;
        let s = src.buf.dtype.size_in_bytes() as u64;
        let first = src.offset as u64 * s;
        let end = first + src.len as u64 * s;
        let start = first / 4 * 4;
        let stop = end.div_ceil(4) * 4;
        let raw = self.read_back(OP, src.buf.raw(), start, stop - start)?;
        let lo = (first - start) as usize;
        Ok(raw[lo..lo + (end - first) as usize].to_vec())
    }

    fn upload_index(&self, data: &[u32]) -> Result<WgpuIndex> {
        Ok(WgpuIndex {
            buf: self.temp_u32(data),
            host: data.to_vec(),
        })
    }

    fn index_values<'i>(&self, ids: &'i WgpuIndex) -> &'i [u32] {
        &ids.host
    }

    fn synchronize(&self) -> Result<()> {
        const OP: &str = "synchronize";
        self.device
            .poll(::wgpu::PollType::wait_indefinitely())
            .map_err(|e| self.device_err(OP, format!("waiting for the device: {e}")))?;
        self.take_errors(OP)
    }

    fn cast(
        &self,
        src: View<'_, WgpuBuffer>,
        dst: ViewMut<'_, WgpuBuffer>,
        rounding: Rounding,
    ) -> Result<()> {
        const OP: &str = "cast";
        contract::same_len(self, OP, &[("src", &src)], ("dst", &dst))?;
        let (ds, dd) = (src.buf.dtype, dst.buf.dtype);
        let (mode, key) = if ds == dd {
            (0, 0)
        } else {
            match rounding {
                Rounding::NearestEven => (1, 0),
                Rounding::Stochastic { .. } if dd == DType::F32 => (1, 0),
                Rounding::Stochastic { seed } => (2, seed_key(seed)),
            }
        };
        let base = dst.offset as u64;
        let args = [self.arg(OP, "src", src)?, self.arg_mut(OP, "dst", &dst)?];
        self.flat(
            OP,
            &shaders::CAST,
            "main",
            &[("C_MODE", mode)],
            &args,
            src.len as u64,
            WG,
            |start, len| {
                let (lo, hi) = split64(base + start);
                vec![len as u32, key, lo, hi]
            },
        )
    }

    fn fill(&self, dst: ViewMut<'_, WgpuBuffer>, value: f32) -> Result<()> {
        Check::new(self, "fill").view_mut("dst", &dst)?;
        self.pointwise("fill", 7, None, None, &dst, value, 1)
    }
}

impl GemmOps for WgpuBackend {
    fn gemm(
        &self,
        a: View<'_, WgpuBuffer>,
        b: View<'_, WgpuBuffer>,
        c: ViewMut<'_, WgpuBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        let span_c = contract::gemm(self, &a, &b, &c, spec)?;
        self.gemm_into("gemm", (a, b, None), c, spec, span_c)
    }

    /// The bias added in the GEMM kernel's store, before C's one rounding.
    fn gemm_bias(
        &self,
        a: View<'_, WgpuBuffer>,
        b: View<'_, WgpuBuffer>,
        bias: View<'_, WgpuBuffer>,
        c: ViewMut<'_, WgpuBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        let span_c = contract::gemm_bias(self, &a, &b, &bias, &c, spec)?;
        self.gemm_into("gemm_bias", (a, b, Some(bias)), c, spec, span_c)
    }
}

impl WgpuBackend {
    /// The GEMM kernel's passes for a checked product whose C spans `span_c` elements,
    /// with a bias (one per column) when given.
    fn gemm_into(
        &self,
        op: &'static str,
        (a, b, bias): (
            View<'_, WgpuBuffer>,
            View<'_, WgpuBuffer>,
            Option<View<'_, WgpuBuffer>>,
        ),
        c: ViewMut<'_, WgpuBuffer>,
        spec: &Gemm,
        span_c: usize,
    ) -> Result<()> {
        let Gemm { m, n, k, batch, .. } = *spec;
        if span_c == 0 {
            return Ok(());
        }
        // the contract checked these fit the views
        let span = |stride: usize, size: usize| (batch - 1) * stride + size;
        let (span_a, span_b) = (span(spec.stride_a, m * k), span(spec.stride_b, k * n));
        let mut aa = self.arg(op, "a", a)?;
        let mut bb = self.arg(op, "b", b)?;
        let mut cc = self.arg_mut(op, "c", &c)?;
        // Bind only the spans the product touches.
        aa.len = span_a.max(1).min(a.len) as u64;
        bb.len = span_b.max(1).min(b.len) as u64;
        cc.len = span_c as u64;
        let mut args = vec![aa, bb, cc];
        if let Some(bias) = bias {
            args.push(self.arg(op, "bias", bias)?);
        }
        let (slots, args) = Self::order(&shaders::GEMM, &args);
        let pipeline = self.pipeline(op, &shaders::GEMM, "main", &slots, &[])?;
        let tiles_x = n.div_ceil(64) as u64;
        let tiles_y = m.div_ceil(64) as u64;
        if tiles_x > 65535 || tiles_y > 65535 {
            return Err(self.shape_err(op, format!("m={m} n={n}: more than 65535 tiles of 64")));
        }
        let base = [
            self.u32p(op, "m", m)?,
            self.u32p(op, "n", n)?,
            self.u32p(op, "k", k)?,
            u32::from(spec.trans_a),
            u32::from(spec.trans_b),
            self.u32p(op, "stride_a", spec.stride_a)?,
            self.u32p(op, "stride_b", spec.stride_b)?,
            self.u32p(op, "stride_c", spec.stride_c)?,
        ];
        let mut blocks = Vec::new();
        let mut b0 = 0usize;
        while b0 < batch {
            let nb = (batch - b0).min(65535);
            let mut p = base.to_vec();
            p.extend([
                b0 as u32,
                fb(spec.alpha),
                fb(spec.beta),
                u32::from(bias.is_some()),
            ]);
            blocks.push((nb, p));
            b0 += nb;
        }
        let passes: Vec<Pass<'_>> = blocks
            .iter()
            .map(|(nb, p)| Pass {
                pipeline: pipeline.clone(),
                tensors: args.iter().map(|a| a.tensor(0, a.len)).collect(),
                params: p,
                grid: (tiles_x as u32, tiles_y as u32, *nb as u32),
            })
            .collect();
        self.submit(op, &passes)
    }
}

impl PointwiseOps for WgpuBackend {
    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_, WgpuBuffer>,
        b: View<'_, WgpuBuffer>,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "binary";
        contract::same_len(self, OP, &[("a", &a), ("b", &b)], ("out", &out))?;
        let code = match op {
            BinaryOp::Add => 0,
            BinaryOp::Mul => 1,
            BinaryOp::Sub => 8,
        };
        self.pointwise(OP, code, Some(a), Some((b, true)), &out, 0.0, 1)
    }

    fn scale(
        &self,
        x: View<'_, WgpuBuffer>,
        alpha: f32,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "scale";
        contract::same_len(self, OP, &[("x", &x)], ("out", &out))?;
        self.pointwise(OP, 2, Some(x), None, &out, alpha, 1)
    }

    fn axpy(
        &self,
        alpha: f32,
        x: View<'_, WgpuBuffer>,
        dst: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "axpy";
        contract::same_len(self, OP, &[("x", &x)], ("dst", &dst))?;
        self.pointwise(OP, 3, Some(x), None, &dst, alpha, 1)
    }

    fn bias_add(
        &self,
        x: View<'_, WgpuBuffer>,
        bias: View<'_, WgpuBuffer>,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "bias_add";
        let n = bias.len;
        contract::bias_add(self, &x, &bias, &out)?;
        let cols = self.u32p(OP, "bias length", n)?;
        self.pointwise(OP, 4, Some(x), Some((bias, false)), &out, 0.0, cols)
    }

    fn unary(
        &self,
        op: UnaryOp,
        x: View<'_, WgpuBuffer>,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        let name = op.name();
        contract::same_len(self, name, &[("x", &x)], ("out", &out))?;
        self.pointwise(name, 16 + op.code(), Some(x), None, &out, 0.0, 1)
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: View<'_, WgpuBuffer>,
        dy: View<'_, WgpuBuffer>,
        dx: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        let name = op.backward_name();
        contract::same_len(self, name, &[("x", &x), ("dy", &dy)], ("dx", &dx))?;
        self.pointwise(name, 32 + op.code(), Some(x), Some((dy, true)), &dx, 0.0, 1)
    }

    fn mul_broadcast(
        &self,
        x: View<'_, WgpuBuffer>,
        row_scale: Option<View<'_, WgpuBuffer>>,
        col_scale: Option<View<'_, WgpuBuffer>>,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "mul_broadcast";
        let (_, cols) =
            contract::mul_broadcast(self, &x, row_scale.as_ref(), col_scale.as_ref(), &out)?;
        let cols32 = self.u32p(OP, "cols", cols.max(1))?;
        let mut args = vec![self.arg(OP, "a", x)?, self.arg_mut(OP, "out", &out)?];
        for (name, v) in [("rs", row_scale), ("b", col_scale)] {
            if let Some(v) = v {
                let mut a = self.arg(OP, name, v)?;
                a.chunked = false;
                args.push(a);
            }
        }
        let code = 9 + u32::from(row_scale.is_some()) + 2 * u32::from(col_scale.is_some());
        self.flat(
            OP,
            &shaders::POINTWISE,
            "main",
            &[("C_OP", code)],
            &args,
            out.len as u64,
            WG,
            |start, len| vec![len as u32, cols32, start as u32, 0],
        )
    }

    fn dropout(
        &self,
        x: View<'_, WgpuBuffer>,
        p: f32,
        seed: u64,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "dropout";
        let (threshold, scale) = contract::dropout(self, &x, p, &out)?;
        let key = seed_key(seed);
        let args = [self.arg(OP, "a", x)?, self.arg_mut(OP, "out", &out)?];
        self.flat(
            OP,
            &shaders::POINTWISE,
            "main",
            &[("C_OP", 15)],
            &args,
            out.len as u64,
            WG,
            |start, len| vec![len as u32, threshold, start as u32, fb(scale), key],
        )
    }

    fn swiglu(
        &self,
        gu: View<'_, WgpuBuffer>,
        f: usize,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "swiglu";
        contract::swiglu(self, OP, &gu, None, f, &out)?;
        let args = [self.arg(OP, "gu", gu)?, self.arg_mut(OP, "out", &out)?];
        self.swiglu_pass(OP, 0, &args, out.len, f)
    }

    fn swiglu_backward(
        &self,
        gu: View<'_, WgpuBuffer>,
        dy: View<'_, WgpuBuffer>,
        f: usize,
        dgu: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "swiglu_backward";
        contract::swiglu(self, OP, &gu, Some(&dy), f, &dgu)?;
        let n = dy.len;
        let args = [
            self.arg(OP, "gu", gu)?,
            self.arg(OP, "dy", dy)?,
            self.arg_mut(OP, "dgu", &dgu)?,
        ];
        self.swiglu_pass(OP, 1, &args, n, f)
    }
}

impl WgpuBackend {
    /// One SwiGLU pass (`C_BWD` = `bwd`) over `n = rows * f` elements.
    fn swiglu_pass(
        &self,
        op: &'static str,
        bwd: u32,
        args: &[Arg<'_>],
        n: usize,
        f: usize,
    ) -> Result<()> {
        // the packed input spans 2n elements: every index the shader forms must fit in u32
        self.u32p(op, "packed elements", 2 * n)?;
        let params = [self.u32p(op, "elements", n)?, self.u32p(op, "f", f)?, 0, 0];
        self.whole(
            op,
            &shaders::SWIGLU,
            &[("main", (n as u64).div_ceil(WG))],
            &[("C_BWD", bwd)],
            args,
            &params,
        )
    }
}

impl RowOps for WgpuBackend {
    fn reduce_rows(
        &self,
        op: ReduceOp,
        x: View<'_, WgpuBuffer>,
        cols: usize,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "reduce_rows";
        let rows = contract::reduce_rows(self, &x, cols, &out)?;
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Mean => 1,
            ReduceOp::Max => 2,
            ReduceOp::SumSq => 3,
        };
        let args = [self.arg(OP, "x", x)?, self.arg_mut(OP, "out", &out)?];
        let params = [self.u32p(OP, "rows", rows)?, self.u32p(OP, "cols", cols)?];
        self.whole(
            OP,
            &shaders::REDUCE,
            &[("main", rows as u64)],
            &[("C_OP", code)],
            &args,
            &params,
        )
    }

    fn sum_cols_acc(&self, x: View<'_, WgpuBuffer>, out: ViewMut<'_, WgpuBuffer>) -> Result<()> {
        const OP: &str = "sum_cols_acc";
        let cols = out.len;
        let rows = contract::sum_cols(self, &x, &out)?;
        let args = [self.arg(OP, "x", x)?, self.arg_mut(OP, "out", &out)?];
        let params = [self.u32p(OP, "rows", rows)?, self.u32p(OP, "cols", cols)?];
        self.whole(
            OP,
            &shaders::REDUCE,
            &[("cols", (cols as u64).div_ceil(WG))],
            &[],
            &args,
            &params,
        )
    }

    fn softmax(
        &self,
        x: View<'_, WgpuBuffer>,
        cols: usize,
        causal: bool,
        log: bool,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "softmax";
        let rows = contract::softmax(self, &x, cols, &out)?;
        let args = [self.arg(OP, "x", x)?, self.arg_mut(OP, "out", &out)?];
        let params = [
            self.u32p(OP, "rows", rows)?,
            self.u32p(OP, "cols", cols)?,
            0,
            0,
        ];
        self.whole(
            OP,
            &shaders::ROWS,
            &[("softmax", rows as u64)],
            &[("C_LOG", u32::from(log)), ("C_CAUSAL", u32::from(causal))],
            &args,
            &params,
        )
    }

    fn softmax_backward(
        &self,
        y: View<'_, WgpuBuffer>,
        dy: View<'_, WgpuBuffer>,
        cols: usize,
        log: bool,
        dx: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "softmax_backward";
        let rows = contract::softmax_backward(self, &y, &dy, cols, &dx)?;
        let args = [
            self.arg(OP, "y", y)?,
            self.arg(OP, "dy", dy)?,
            self.arg_mut(OP, "dx", &dx)?,
        ];
        let params = [
            self.u32p(OP, "rows", rows)?,
            self.u32p(OP, "cols", cols)?,
            0,
            0,
        ];
        self.whole(
            OP,
            &shaders::ROWS,
            &[("softmax_bwd", rows as u64)],
            &[("C_LOG", u32::from(log))],
            &args,
            &params,
        )
    }
}

impl NormOps for WgpuBackend {
    fn layer_norm(
        &self,
        x: View<'_, WgpuBuffer>,
        weight: View<'_, WgpuBuffer>,
        bias: View<'_, WgpuBuffer>,
        eps: f32,
        out: ViewMut<'_, WgpuBuffer>,
        mean: ViewMut<'_, WgpuBuffer>,
        rstd: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let (rows, c) = contract::layer_norm(self, &x, &weight, &bias, &out, &mean, &rstd)?;
        let args = [
            self.arg(OP, "x", x)?,
            self.arg(OP, "w", weight)?,
            self.arg(OP, "b", bias)?,
            self.arg_mut(OP, "out", &out)?,
            self.arg_mut(OP, "mean", &mean)?,
            self.arg_mut(OP, "rstd", &rstd)?,
        ];
        let params = [
            self.u32p(OP, "rows", rows)?,
            self.u32p(OP, "c", c)?,
            fb(eps),
            0,
        ];
        self.whole(
            OP,
            &shaders::ROWS,
            &[("ln_fwd", rows as u64)],
            &[],
            &args,
            &params,
        )
    }

    fn layer_norm_backward(
        &self,
        dy: View<'_, WgpuBuffer>,
        x: View<'_, WgpuBuffer>,
        weight: View<'_, WgpuBuffer>,
        mean: View<'_, WgpuBuffer>,
        rstd: View<'_, WgpuBuffer>,
        dx: ViewMut<'_, WgpuBuffer>,
        dweight: ViewMut<'_, WgpuBuffer>,
        dbias: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "layer_norm_backward";
        let (rows, c) = contract::layer_norm_backward(
            self, &dy, &x, &weight, &mean, &rstd, &dx, &dweight, &dbias,
        )?;
        let args = [
            self.arg(OP, "dy", dy)?,
            self.arg(OP, "x", x)?,
            self.arg(OP, "w", weight)?,
            self.arg(OP, "mean", mean)?,
            self.arg(OP, "rstd", rstd)?,
            self.arg_mut(OP, "dx", &dx)?,
            self.arg_mut(OP, "dweight", &dweight)?,
            self.arg_mut(OP, "dbias", &dbias)?,
        ];
        let params = [self.u32p(OP, "rows", rows)?, self.u32p(OP, "c", c)?, 0, 0];
        self.whole(
            OP,
            &shaders::ROWS,
            &[
                ("ln_bwd_dx", rows as u64),
                ("ln_bwd_dw", (c as u64).div_ceil(WG)),
            ],
            &[],
            &args,
            &params,
        )
    }
}

impl LossOps for WgpuBackend {
    fn cross_entropy(
        &self,
        logits: View<'_, WgpuBuffer>,
        targets: &WgpuIndex,
        vocab: usize,
        losses: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "cross_entropy";
        let rows = contract::cross_entropy(self, &logits, &targets.host, vocab, &losses)?;
        let args = [
            self.arg(OP, "x", logits)?,
            Self::arg_index("tg", &targets.buf, targets.len()),
            self.arg_mut(OP, "out", &losses)?,
        ];
        self.classifier(OP, "ce_fwd", rows, vocab, 0.0, &args)
    }

    fn cross_entropy_backward(
        &self,
        logits: View<'_, WgpuBuffer>,
        targets: &WgpuIndex,
        vocab: usize,
        dloss: f32,
        dlogits: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_backward";
        let rows = contract::cross_entropy_backward(self, &logits, &targets.host, vocab, &dlogits)?;
        let args = [
            self.arg(OP, "x", logits)?,
            Self::arg_index("tg", &targets.buf, targets.len()),
            self.arg_mut(OP, "dx", &dlogits)?,
        ];
        self.classifier(OP, "ce_bwd", rows, vocab, dloss, &args)
    }

    fn cross_entropy_fused(
        &self,
        logits: View<'_, WgpuBuffer>,
        targets: &WgpuIndex,
        vocab: usize,
        dloss: f32,
        losses: ViewMut<'_, WgpuBuffer>,
        dlogits: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_fused";
        let rows =
            contract::cross_entropy_fused(self, &logits, &targets.host, vocab, &losses, &dlogits)?;
        let args = [
            self.arg(OP, "x", logits)?,
            Self::arg_index("tg", &targets.buf, targets.len()),
            self.arg_mut(OP, "out", &losses)?,
            self.arg_mut(OP, "dx", &dlogits)?,
        ];
        self.classifier(OP, "ce_fused", rows, vocab, dloss, &args)
    }
}

impl WgpuBackend {
    /// One workgroup per logits row of the cross-entropy `entry` of `rows.wgsl`.
    fn classifier(
        &self,
        op: &'static str,
        entry: &str,
        rows: usize,
        vocab: usize,
        dloss: f32,
        args: &[Arg<'_>],
    ) -> Result<()> {
        let params = [
            self.u32p(op, "rows", rows)?,
            self.u32p(op, "vocab", vocab)?,
            0,
            fb(dloss),
        ];
        self.whole(
            op,
            &shaders::ROWS,
            &[(entry, rows as u64)],
            &[],
            args,
            &params,
        )
    }
}

impl EmbeddingOps for WgpuBackend {
    fn embedding(
        &self,
        table: View<'_, WgpuBuffer>,
        ids: &WgpuIndex,
        c: usize,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "embedding";
        contract::embedding(self, &table, &ids.host, c, &out)?;
        if ids.is_empty() {
            return Ok(());
        }
        let copy = u32::from(table.buf.dtype == out.buf.dtype);
        let args = [
            self.arg(OP, "table", table)?,
            Self::arg_index("ids", &ids.buf, ids.len()),
            self.arg_mut(OP, "out", &out)?,
        ];
        let n = out.len;
        let params = [self.u32p(OP, "elements", n)?, self.u32p(OP, "c", c)?, 0, 0];
        self.whole(
            OP,
            &shaders::EMBED,
            &[("gather", (n as u64).div_ceil(WG))],
            &[("C_COPY", copy)],
            &args,
            &params,
        )
    }

    fn embedding_backward(
        &self,
        dout: View<'_, WgpuBuffer>,
        ids: &WgpuIndex,
        c: usize,
        dtable: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "embedding_backward";
        contract::embedding_backward(self, &dout, &ids.host, c, &dtable)?;
        if ids.is_empty() {
            return Ok(());
        }
        // Group positions by id (a counting sort on the host copy): starts, rows, positions.
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by_key(|&i| ids.host[i as usize]);
        let mut starts = vec![0u32];
        let mut rows = Vec::new();
        for (k, &i) in order.iter().enumerate() {
            let id = ids.host[i as usize];
            if rows.last() != Some(&id) {
                if k > 0 {
                    starts.push(k as u32);
                }
                rows.push(id);
            }
        }
        starts.push(order.len() as u32);
        let nu = rows.len();
        let mut csr = starts;
        csr.extend(&rows);
        csr.extend(&order);
        let csr_buf = self.temp_u32(&csr);
        let args = [
            self.arg(OP, "dout", dout)?,
            Self::arg_index("csr", &csr_buf, csr.len()),
            self.arg_mut(OP, "dtable", &dtable)?,
        ];
        let n = self.mul(OP, nu, c)?;
        let params = [
            self.u32p(OP, "elements", n)?,
            self.u32p(OP, "c", c)?,
            nu as u32,
            0,
        ];
        self.whole(
            OP,
            &shaders::EMBED,
            &[("scatter", (n as u64).div_ceil(WG))],
            &[],
            &args,
            &params,
        )
    }
}

impl LayoutOps for WgpuBackend {
    fn rope(
        &self,
        x: View<'_, WgpuBuffer>,
        cos: View<'_, WgpuBuffer>,
        sin: View<'_, WgpuBuffer>,
        s: &Rope,
        out: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "rope";
        contract::rope(self, &x, &cos, &sin, s, &out)?;
        let pairs = x.len / 2;
        let args = [
            self.arg(OP, "x", x)?,
            self.arg(OP, "cos", cos)?,
            self.arg(OP, "sin", sin)?,
            self.arg_mut(OP, "out", &out)?,
        ];
        let sign = if s.inverse { -1.0 } else { 1.0 };
        let params = [
            self.u32p(OP, "pairs", pairs)?,
            self.u32p(OP, "heads", s.heads)?,
            self.u32p(OP, "head_dim / 2", s.head_dim / 2)?,
            self.u32p(OP, "t", s.t)?,
            fb(sign),
            self.u32p(OP, "rotated", s.rotated)?,
            0,
            0,
        ];
        self.u32p(OP, "elements", x.len)?;
        self.whole(
            OP,
            &shaders::ROPE,
            &[("main", (pairs as u64).div_ceil(WG))],
            &[],
            &args,
            &params,
        )
    }

    fn split_heads(
        &self,
        src: View<'_, WgpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "split_heads";
        contract::heads(self, layout, &src, &dst, false)?;
        let copy = u32::from(src.buf.dtype == dst.buf.dtype);
        let args = [self.arg(OP, "src", src)?, self.arg_mut(OP, "dst", &dst)?];
        self.heads(OP, "split", layout, &args, copy, 0)
    }

    fn merge_heads(
        &self,
        src: View<'_, WgpuBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, WgpuBuffer>,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "merge_heads";
        contract::heads(self, layout, &src, &dst, true)?;
        let copy = u32::from(src.buf.dtype == dst.buf.dtype && !accumulate);
        let args = [self.arg(OP, "src", src)?, self.arg_mut(OP, "dst", &dst)?];
        self.heads(OP, "merge", layout, &args, copy, u32::from(accumulate))
    }
}

/// The largest head size of the WGSL attention kernel (its private accumulators); larger
/// heads run the trait's default composition.
const ATTENTION_MAX_HS: usize = 256;

impl WgpuBackend {
    /// Whether `attention.wgsl` runs shape `s` (head size `hs`): heads up to
    /// [`ATTENTION_MAX_HS`], and loops the adapter runs to the end. Its longest invocation (the
    /// first key of a group in `attn_dkv`) loops `group x t` times over the query rows, two
    /// `hs` loops each, plus the head loops around them. Otherwise the trait's default
    /// composition runs, whose loops are short (llvmpipe at long context).
    fn attention_kernel_runs(&self, s: &Attention, hs: usize) -> bool {
        let longest = (s.group() * s.t) as u64 * (2 * hs as u64 + 1) + 4 * hs as u64 + 64;
        hs <= ATTENTION_MAX_HS && self.loops_fit(longest)
    }

    /// The attention kernel's parameters: `count` invocations over a shape of head size `hs`.
    fn attention_params(&self, op: &'static str, s: &Attention, count: usize) -> Result<[u32; 8]> {
        let hs = s.head_size();
        Ok([
            self.u32p(op, "invocations", count)?,
            self.u32p(op, "t", s.t)?,
            self.u32p(op, "heads", s.heads)?,
            self.u32p(op, "kv_heads", s.kv_heads)?,
            self.u32p(op, "head size", hs)?,
            self.u32p(op, "c", s.c)?,
            self.u32p(op, "qkv row", s.qkv_row())?,
            (1.0 / (hs as f32).sqrt()).to_bits(),
        ])
    }
}

/// One invocation per row of `n`: workgroups of 64.
fn attention_groups(n: usize) -> u64 {
    (n as u64).div_ceil(64)
}

impl AttentionOps for WgpuBackend {
    fn attention(
        &self,
        qkv: View<'_, WgpuBuffer>,
        s: &Attention,
        out: ViewMut<'_, WgpuBuffer>,
        lse: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "attention";
        let hs = contract::attention_forward(self, &qkv, s, &out, &lse)?;
        if !self.attention_kernel_runs(s, hs) {
            return crate::gemm_attention::forward(self, qkv, s, out, lse);
        }
        let rows = s.lse_len();
        let params = self.attention_params(OP, s, rows)?;
        let args = [
            self.arg(OP, "qkv", qkv)?,
            self.arg_mut(OP, "out", &out)?,
            self.arg_mut(OP, "lse", &lse)?,
        ];
        let entries = [("attn_fwd", attention_groups(rows))];
        self.whole(OP, &shaders::ATTENTION, &entries, &[], &args, &params)
    }

    fn attention_backward(
        &self,
        dout: View<'_, WgpuBuffer>,
        qkv: View<'_, WgpuBuffer>,
        out: View<'_, WgpuBuffer>,
        lse: View<'_, WgpuBuffer>,
        s: &Attention,
        dqkv: ViewMut<'_, WgpuBuffer>,
    ) -> Result<()> {
        const OP: &str = "attention_backward";
        let hs = contract::attention_backward(self, &dout, &qkv, &out, &lse, s, &dqkv)?;
        if !self.attention_kernel_runs(s, hs) {
            return crate::gemm_attention::backward(self, dout, qkv, out, lse, s, dqkv);
        }
        let rows = s.lse_len();
        let mut delta = self.scratch_f32(rows);
        let delta = delta.view_mut();
        let args = [
            self.arg(OP, "qkv", qkv)?,
            self.arg(OP, "out", out)?,
            self.arg(OP, "lse", lse)?,
            self.arg(OP, "dout", dout)?,
            self.arg_mut(OP, "delta", &delta)?,
            self.arg_mut(OP, "dqkv", &dqkv)?,
        ];
        // D first, then the two gradient passes (each element of dqkv has one writer)
        let params = self.attention_params(OP, s, rows)?;
        let first = [
            ("attn_delta", attention_groups(rows)),
            ("attn_dq", attention_groups(rows)),
        ];
        self.whole(OP, &shaders::ATTENTION, &first, &[], &args, &params)?;
        let keys = s.b * s.kv_heads * s.t;
        let params = self.attention_params(OP, s, keys)?;
        let entries = [("attn_dkv", attention_groups(keys))];
        self.whole(OP, &shaders::ATTENTION, &entries, &[], &args, &params)
    }
}

impl OptimOps for WgpuBackend {
    fn grad_stats(&self, grads: View<'_, WgpuBuffer>, grad_mult: f32) -> Result<GradStats> {
        const OP: &str = "grad_stats";
        let n = grads.len as u64;
        if n == 0 {
            self.synchronize()?;
            return Ok(GradStats::default());
        }
        let nparts = n.div_ceil(STATS_BLOCK) as usize;
        let mut part = self.scratch_f32(2 * nparts);
        {
            let pv = part.view_mut();
            let mut parg = self.arg_mut(OP, "part", &pv)?;
            parg.chunked = false;
            let args = [self.arg(OP, "g", grads)?, parg];
            self.flat(
                OP,
                &shaders::STATS,
                "main",
                &[],
                &args,
                n,
                STATS_BLOCK,
                |start, len| vec![len as u32, (start / STATS_BLOCK) as u32, fb(grad_mult), 0],
            )?;
        }
        let raw = self.read_back(OP, part.raw(), 0, (2 * nparts * 4) as u64)?;
        let vals: &[f32] = bytemuck::cast_slice(&raw);
        let mut out = GradStats::default();
        for pair in vals.chunks_exact(2) {
            out.sum_sq += f64::from(pair[0]);
            out.non_finite |= pair[1] != 0.0;
        }
        Ok(out)
    }

    fn adamw(
        &self,
        params: ViewMut<'_, WgpuBuffer>,
        grads: View<'_, WgpuBuffer>,
        m: ViewMut<'_, WgpuBuffer>,
        v: ViewMut<'_, WgpuBuffer>,
        model: Option<ViewMut<'_, WgpuBuffer>>,
        hp: &AdamW,
    ) -> Result<()> {
        const OP: &str = "adamw";
        let (_, c) = contract::adamw(self, &params, &grads, &m, &v, model.as_ref(), hp)?;
        let coef = [
            c.decay,
            c.w1,
            hp.beta2,
            c.w2,
            c.bc2_sqrt,
            hp.eps,
            c.neg_step_size,
        ];
        self.optim(
            OP,
            0,
            params,
            grads,
            m,
            Some(v),
            model,
            hp.grad_mult,
            coef,
            hp.rounding,
        )
    }

    fn sgd(
        &self,
        params: ViewMut<'_, WgpuBuffer>,
        grads: View<'_, WgpuBuffer>,
        momentum_buf: ViewMut<'_, WgpuBuffer>,
        model: Option<ViewMut<'_, WgpuBuffer>>,
        hp: &Sgd,
    ) -> Result<()> {
        const OP: &str = "sgd";
        contract::sgd(self, &params, &grads, &momentum_buf, model.as_ref(), hp)?;
        let coef = [
            -hp.lr,
            hp.momentum,
            1.0 - hp.dampening,
            hp.weight_decay,
            f32::from(u8::from(hp.nesterov)),
            f32::from(u8::from(hp.first_step)),
            f32::from(u8::from(hp.momentum != 0.0)),
        ];
        self.optim(
            OP,
            1,
            params,
            grads,
            momentum_buf,
            None,
            model,
            hp.grad_mult,
            coef,
            hp.rounding,
        )
    }

    fn range_counts(
        &self,
        src: View<'_, WgpuBuffer>,
        queries: &[RangeQuery],
    ) -> Result<Vec<RangeCounts>> {
        const OP: &str = "range_counts";
        contract::range_counts(self, &src, queries)?;
        // counts add; the amax comes as two exact 16-bit halves per group and is a maximum
        let fold = |acc: &mut [u64; 4], g: &[f32]| {
            for k in 0..3 {
                acc[k] += g[k] as u64;
            }
            acc[3] = acc[3].max(((g[3] as u64) << 16) | g[4] as u64);
        };
        let parts = self.count_parts::<4>(
            OP,
            "range_main",
            5,
            queries.len(),
            |k| {
                let q = &queries[k];
                let t = mp_dtype::RangeThresholds::of(q.dtype);
                let view = View {
                    buf: src.buf,
                    offset: src.offset + q.offset,
                    len: q.len,
                };
                let params = [
                    q.scale.to_bits(),
                    t.nonzero_from,
                    t.normal_from,
                    t.overflow_from,
                ];
                (vec![(view, "x")], params, 0)
            },
            fold,
        )?;
        Ok(parts
            .iter()
            .map(|c| RangeCounts {
                underflow: c[0],
                subnormal: c[1],
                overflow: c[2],
                amax: f32::from_bits(c[3] as u32),
            })
            .collect())
    }

    fn lost_update_counts<'a>(
        &self,
        before: View<'a, WgpuBuffer>,
        after: View<'a, WgpuBuffer>,
        ranges: &[(usize, usize)],
        dtype: DType,
    ) -> Result<Vec<UpdateCounts>> {
        const OP: &str = "lost_update_counts";
        contract::lost_update_counts(self, &before, &after, ranges)?;
        let code = match dtype {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::BF16 => 2,
            DType::F8E4M3 => 3,
            DType::F8E5M2 => 4,
        };
        let fold = |acc: &mut [u64; 2], g: &[f32]| {
            acc[0] += g[0] as u64;
            acc[1] += g[1] as u64;
        };
        let parts = self.count_parts::<2>(
            OP,
            "lost_main",
            2,
            ranges.len(),
            |k| {
                let (o, n) = ranges[k];
                let at = |v: &View<'a, WgpuBuffer>| View {
                    buf: v.buf,
                    offset: v.offset + o,
                    len: n,
                };
                (vec![(at(&before), "x"), (at(&after), "y")], [0; 4], code)
            },
            fold,
        )?;
        Ok(parts
            .iter()
            .map(|c| UpdateCounts {
                updated: c[0],
                lost: c[1],
            })
            .collect())
    }
}

/// What one query of a counting pass reads: its views (by tensor name, all of one length),
/// four parameters and the `C_DT` constant.
type CountQuery<'a> = (Vec<(View<'a, WgpuBuffer>, &'static str)>, [u32; 4], u32);

impl WgpuBackend {
    /// One counting pass of `entry` of the counts shader per query (`query(k)` gives its
    /// views and parameters): every workgroup writes `width` partial values of its 4096
    /// elements into one scratch buffer, read back once; per query, the partials of its
    /// groups are folded into a zeroed accumulator with `fold(acc, group)`.
    fn count_parts<'a, const W: usize>(
        &self,
        op: &'static str,
        entry: &str,
        width: usize,
        n_queries: usize,
        query: impl Fn(usize) -> CountQuery<'a>,
        fold: impl Fn(&mut [u64; W], &[f32]),
    ) -> Result<Vec<[u64; W]>> {
        let queries: Vec<CountQuery<'a>> = (0..n_queries).map(query).collect();
        let groups: Vec<usize> = queries
            .iter()
            .map(|(views, _, _)| views.first().map_or(0, |(v, _)| v.len.div_ceil(4096)))
            .collect();
        let total: usize = groups.iter().sum();
        let mut part = self.scratch_f32(width * total);
        let mut first = 0usize;
        for ((views, params, dt), &g) in queries.iter().zip(&groups) {
            let n = views.first().map_or(0, |(v, _)| v.len) as u64;
            let pv = part.view_mut();
            let mut parg = self.arg_mut(op, "part", &pv)?;
            parg.chunked = false;
            let mut args = vec![parg];
            for &(v, name) in views {
                args.push(self.arg(op, name, v)?);
            }
            let base = self.u32p(op, "partial counts", first + g)?;
            self.flat(
                op,
                &shaders::COUNTS,
                entry,
                &[("C_DT", *dt)],
                &args,
                n,
                STATS_BLOCK,
                |start, len| {
                    let mut p = vec![len as u32, base - g as u32 + (start / STATS_BLOCK) as u32];
                    p.extend(params);
                    p.extend([0, 0]);
                    p
                },
            )?;
            first += g;
        }
        if total == 0 {
            self.synchronize()?;
            return Ok(vec![[0; W]; n_queries]);
        }
        let raw = self.read_back(op, part.raw(), 0, (width * total * 4) as u64)?;
        let vals: &[f32] = bytemuck::cast_slice(&raw);
        let mut at = 0usize;
        Ok(groups
            .iter()
            .map(|&g| {
                let mut acc = [0u64; W];
                for group in vals[at * width..(at + g) * width].chunks_exact(width) {
                    fold(&mut acc, group);
                }
                at += g;
                acc
            })
            .collect())
    }
}

impl WgpuBackend {
    /// Runs entry `entry` of the heads shader over a validated layout.
    fn heads(
        &self,
        op: &'static str,
        entry: &str,
        l: &Heads,
        args: &[Arg<'_>],
        copy: u32,
        acc: u32,
    ) -> Result<()> {
        let n = l.head_major_len();
        let params = [
            self.u32p(op, "elements", n)?,
            self.u32p(op, "t", l.t)?,
            self.u32p(op, "heads", l.heads)?,
            self.u32p(op, "head size", l.hs)?,
            self.u32p(op, "row", l.row)?,
            self.u32p(op, "col", l.col)?,
            0,
            0,
        ];
        self.u32p(op, "token-major elements", l.token_major_len())?;
        self.whole(
            op,
            &shaders::HEADS,
            &[(entry, (n as u64).div_ceil(WG))],
            &[("C_COPY", copy), ("C_ACC", acc)],
            args,
            &params,
        )
    }

    /// The fused optimizer pass (`opt` 0 AdamW, 1 SGD) over a flat range.
    #[allow(clippy::too_many_arguments)]
    fn optim(
        &self,
        op: &'static str,
        opt: u32,
        params: ViewMut<'_, WgpuBuffer>,
        grads: View<'_, WgpuBuffer>,
        s1: ViewMut<'_, WgpuBuffer>,
        s2: Option<ViewMut<'_, WgpuBuffer>>,
        model: Option<ViewMut<'_, WgpuBuffer>>,
        grad_mult: f32,
        coef: [f32; 7],
        rounding: Rounding,
    ) -> Result<()> {
        // the views were checked by the op's contract
        let n = params.len;
        let (sr, key) = Self::rounding(rounding);
        let (p0, m0) = (
            params.offset as u64,
            model.as_ref().map_or(0, |m| m.offset as u64),
        );
        let mut args = vec![
            self.arg_mut(op, "params", &params)?,
            self.arg(op, "grads", grads)?,
            self.arg_mut(op, "s1", &s1)?,
        ];
        if let Some(v) = &s2 {
            args.push(self.arg_mut(op, "s2", v)?);
        }
        if let Some(mv) = &model {
            args.push(self.arg_mut(op, "model", mv)?);
        }
        let consts = [
            ("C_OPT", opt),
            ("C_SR", sr),
            ("C_MODEL", u32::from(model.is_some())),
        ];
        self.flat(
            op,
            &shaders::OPTIM,
            "main",
            &consts,
            &args,
            n as u64,
            WG,
            |start, len| {
                let (plo, phi) = split64(p0 + start);
                let (mlo, mhi) = split64(m0 + start);
                let mut p = vec![len as u32, key, plo, phi, mlo, mhi, fb(grad_mult)];
                p.extend(coef.iter().map(|&c| fb(c)));
                p
            },
        )
    }
}
