//! The op families for [`CudaBackend`]: each op's contract ([`contract`]), then one or a few
//! launches.

use cudarc::driver::sys::CUfunction_attribute_enum;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use mp_dtype::DType;

use super::gemm::{self, Epilogue, Problem, Vectors};
use super::kernels::module_of;
use super::{Arg, CudaBackend, CudaBuffer, CudaIndex, Pw, dt_code};
use crate::Result;
use crate::backend::contract::{self, Check};
use crate::backend::*;

/// One kernel argument by value (pushed by reference for the launch).
#[derive(Clone, Copy, Debug)]
enum K {
    U64(u64),
    U32(u32),
    I32(i32),
    F32(f32),
}
impl From<u32> for K {
    fn from(v: u32) -> Self {
        K::U32(v)
    }
}
impl From<u64> for K {
    fn from(v: u64) -> Self {
        K::U64(v)
    }
}
impl From<i32> for K {
    fn from(v: i32) -> Self {
        K::I32(v)
    }
}
impl From<f32> for K {
    fn from(v: f32) -> Self {
        K::F32(v)
    }
}
/// `[K; N]` from values of the kernel's parameter types, in order.
macro_rules! kargs {
    ($($x:expr),* $(,)?) => { [$(K::from($x)),*] };
}

const ROW_BLOCK: u32 = 256;
const WIDE_ROW_BLOCK: u32 = 1024;

impl CudaBackend {
    /// GEMM into an FP32 staging copy of C when cuBLASLt has no kernel for (A/B, C) directly.
    fn gemm_staged(
        &self,
        a: View<'_, CudaBuffer>,
        b: View<'_, CudaBuffer>,
        c: ViewMut<'_, CudaBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        const OP: &str = "gemm";
        let ab = a.dtype();
        let cdt = c.dtype();
        // inputs: cast to f32 when cuBLASLt cannot take them as they are
        let in_dt = if matches!(ab, DType::F32 | DType::F16 | DType::BF16) {
            ab
        } else {
            DType::F32
        };
        let stage_in = |v: View<'_, CudaBuffer>| -> Result<Option<super::Temp>> {
            if in_dt == v.dtype() {
                return Ok(None);
            }
            let t = self.temp(OP, v.len * 4)?;
            let dst = Arg {
                ptr: self.temp_ptr(&t),
                dt: dt_code(DType::F32),
            };
            self.pointwise(
                OP,
                Pw::CAST,
                Some(self.arg(v)),
                None,
                dst,
                v.len,
                0.0,
                Rounding::NearestEven,
                0,
            )?;
            Ok(Some(t))
        };
        let ta = stage_in(a)?;
        let tb = stage_in(b)?;
        let out_dt = if gemm::supported(in_dt, cdt) {
            cdt
        } else {
            DType::F32
        };
        let tc = if out_dt == cdt {
            None
        } else {
            let t = self.temp(OP, c.len * 4)?;
            if spec.beta != 0.0 {
                let dst = Arg {
                    ptr: self.temp_ptr(&t),
                    dt: dt_code(DType::F32),
                };
                self.pointwise(
                    OP,
                    Pw::CAST,
                    Some(self.arg_mut(&c)),
                    None,
                    dst,
                    c.len,
                    0.0,
                    Rounding::NearestEven,
                    0,
                )?;
            }
            Some(t)
        };
        let pa = ta
            .as_ref()
            .map_or_else(|| self.addr(a.buf, a.offset), |t| self.temp_ptr(t));
        let pb = tb
            .as_ref()
            .map_or_else(|| self.addr(b.buf, b.offset), |t| self.temp_ptr(t));
        let pc = tc
            .as_ref()
            .map_or_else(|| self.addr(c.buf, c.offset), |t| self.temp_ptr(t));
        self.gemm_raw(
            (in_dt, out_dt),
            (pa, pb, pc),
            spec,
            Epilogue::None,
            Vectors::default(),
        )?;
        if let Some(t) = &tc {
            let src = Arg {
                ptr: self.temp_ptr(t),
                dt: dt_code(DType::F32),
            };
            let dst = self.arg_mut(&c);
            self.pointwise(
                OP,
                Pw::CAST,
                Some(src),
                None,
                dst,
                c.len,
                0.0,
                Rounding::NearestEven,
                0,
            )?;
        }
        Ok(())
    }

    /// The cuBLASLt problem of `batch` products of `s` on operands of dtypes `(ab, cdt)` at
    /// device addresses `(pa, pb, pc)`, with `epilogue`.
    fn problem(
        &self,
        (ab, cdt): (DType, DType),
        (pa, pb, pc): (u64, u64, u64),
        s: &Gemm,
        batch: usize,
        epilogue: Epilogue,
    ) -> Problem {
        let (sa, sb, sc) = (
            s.stride_a * ab.size_in_bytes(),
            s.stride_b * ab.size_in_bytes(),
            s.stride_c * cdt.size_in_bytes(),
        );
        // a batch's matrix starts at base + i * stride: both must be aligned
        let stride = |st: usize| if batch > 1 { st as u64 } else { 0 };
        Problem {
            ab,
            c: cdt,
            m: s.m as u64,
            n: s.n as u64,
            k: s.k as u64,
            trans_a: s.trans_a,
            trans_b: s.trans_b,
            batch: batch as u64,
            stride_a: s.stride_a as i64,
            stride_b: s.stride_b as i64,
            stride_c: s.stride_c as i64,
            tf32: self.opts.allow_tf32,
            align: [
                gemm::alignment(pa | stride(sa)),
                gemm::alignment(pb | stride(sb)),
                gemm::alignment(pc | stride(sc)),
            ],
            epilogue,
        }
    }

    /// `C = epilogue(alpha op(A) op(B) + beta C)` through cuBLASLt on device addresses
    /// `(pa, pb, pc)` of operands of dtypes `(ab, cdt)`; an epilogue other than
    /// [`Epilogue::None`] (its addresses in `vecs`) only for one product.
    fn gemm_raw(
        &self,
        dtypes: (DType, DType),
        (pa, pb, pc): (u64, u64, u64),
        s: &Gemm,
        epilogue: Epilogue,
        vecs: Vectors,
    ) -> Result<()> {
        const OP: &str = "gemm";
        let (ab, cdt) = dtypes;
        let (sa, sb, sc) = (
            s.stride_a * ab.size_in_bytes(),
            s.stride_b * ab.size_in_bytes(),
            s.stride_c * cdt.size_in_bytes(),
        );
        // A zero stride (a broadcast operand, or every product into one C) runs as a sequence of
        // single products: always correct, and cuBLASLt's strided batches are only relied on
        // for distinct matrices.
        let broadcast = s.batch > 1 && (s.stride_a == 0 || s.stride_b == 0 || s.stride_c == 0);
        let (batch, per_call) = if broadcast {
            (1usize, s.batch)
        } else {
            (s.batch, 1)
        };
        for i in 0..per_call {
            let ptrs = (
                pa + (i * sa) as u64,
                pb + (i * sb) as u64,
                pc + (i * sc) as u64,
            );
            let p = self.problem(dtypes, ptrs, s, batch, epilogue);
            self.ctx.bind_to_thread().map_err(|e| self.dev_err(OP, e))?;
            self.lt
                .matmul(&self.stream, &p, ptrs, vecs, s.alpha, s.beta)
                .map_err(|e| self.dev_err(OP, e))?;
        }
        Ok(())
    }

    fn launch_rows(
        &self,
        op: &'static str,
        name: &'static str,
        cfg: LaunchConfig,
        args: &[K],
    ) -> Result<()> {
        let module =
            module_of(name).ok_or_else(|| self.dev_err(op, format!("unknown kernel {name}")))?;
        let f = self.func(module, name)?;
        if cfg.shared_mem_bytes > 48 * 1024 {
            // dynamic shared memory beyond the default limit needs the kernel's opt-in
            f.set_attribute(
                CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                cfg.shared_mem_bytes as i32,
            )
            .map_err(|e| self.dev_err(op, e))?;
        }
        let mut l = self.stream.launch_builder(&f);
        for a in args {
            match a {
                K::U64(v) => l.arg(v),
                K::U32(v) => l.arg(v),
                K::I32(v) => l.arg(v),
                K::F32(v) => l.arg(v),
            };
        }
        // SAFETY: each caller pushes exactly the kernel's parameter list, with addresses that
        // cover the element counts it checked.
        unsafe { l.launch(cfg) }
            .map(|_| ())
            .map_err(self.launch_err(op))
    }
}

impl MemoryOps for CudaBackend {
    type Buffer = CudaBuffer;
    type Index = CudaIndex;

    fn name(&self) -> String {
        self.name.clone()
    }

    fn zeros(&self, dtype: DType, len: usize) -> Result<CudaBuffer> {
        let mut buf = self.new_buffer("zeros", dtype, len)?;
        self.stream
            .memset_zeros(&mut buf.data)
            .map_err(|e| self.dev_err("zeros", e))?;
        Ok(buf)
    }

    fn uninit(&self, dtype: DType, len: usize) -> Result<CudaBuffer> {
        // no fill: the stream-ordered pool hands back cached memory as it is
        self.new_buffer("uninit", dtype, len)
    }

    #[cfg(feature = "nccl")]
    fn device_comm_id(&self) -> Result<Option<Vec<u8>>> {
        self.nccl_id().map(Some)
    }

    #[cfg(feature = "nccl")]
    fn device_comm(
        &self,
        id: &[u8],
        rank: usize,
        size: usize,
    ) -> Result<Option<Box<dyn DeviceComm<CudaBuffer>>>> {
        Ok(Some(Box::new(self.nccl_comm(id, rank, size)?)))
    }

    fn upload_f32(&self, data: &[f32], dtype: DType) -> Result<CudaBuffer> {
        const OP: &str = "upload_f32";
        if dtype == DType::F32 {
            return self.upload_bytes(bytemuck::cast_slice(data), dtype);
        }
        let staged = self.upload_bytes(bytemuck::cast_slice(data), DType::F32)?;
        let out = self.new_buffer(OP, dtype, data.len())?;
        let src = self.arg(staged.view());
        let dst = Arg {
            ptr: self.addr(&out, 0),
            dt: dt_code(dtype),
        };
        self.pointwise(
            OP,
            Pw::CAST,
            Some(src),
            None,
            dst,
            data.len(),
            0.0,
            Rounding::NearestEven,
            0,
        )?;
        Ok(out)
    }

    fn upload_bytes(&self, bytes: &[u8], dtype: DType) -> Result<CudaBuffer> {
        const OP: &str = "upload_bytes";
        let size = dtype.size_in_bytes();
        if !bytes.len().is_multiple_of(size) {
            return Err(crate::KernelError::DType(
                mp_dtype::DTypeError::RaggedBytes {
                    op: OP,
                    bytes: bytes.len(),
                    dtype,
                },
            ));
        }
        let mut buf = self.new_buffer(OP, dtype, bytes.len() / size)?;
        if !bytes.is_empty() {
            let mut dst = buf.data.slice_mut(0..bytes.len());
            self.stream
                .memcpy_htod(bytes, &mut dst)
                .map_err(|e| self.dev_err(OP, e))?;
        }
        Ok(buf)
    }

    fn download_f32(&self, src: View<'_, CudaBuffer>) -> Result<Vec<f32>> {
        const OP: &str = "download_f32";
        Check::new(self, OP).view("src", &src)?;
        if src.dtype() == DType::F32 {
            let bytes = self.download_bytes(src)?;
            return Ok(bytemuck::pod_collect_to_vec(&bytes));
        }
        let staged = self.new_buffer(OP, DType::F32, src.len)?;
        let dst = Arg {
            ptr: self.addr(&staged, 0),
            dt: dt_code(DType::F32),
        };
        self.pointwise(
            OP,
            Pw::CAST,
            Some(self.arg(src)),
            None,
            dst,
            src.len,
            0.0,
            Rounding::NearestEven,
            0,
        )?;
        let bytes = self.download_bytes(staged.view())?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn download_bytes(&self, src: View<'_, CudaBuffer>) -> Result<Vec<u8>> {
        const OP: &str = "download_bytes";
        Check::new(self, OP).view("src", &src)?;
        let size = src.dtype().size_in_bytes();
        let (start, n) = (src.offset * size, src.len * size);
        let mut out = vec![0u8; n];
        if n > 0 {
            let view = src.buf.data.slice(start..start + n);
            self.stream
                .memcpy_dtoh(&view, &mut out)
                .map_err(|e| self.dev_err(OP, e))?;
        }
        self.stream.synchronize().map_err(|e| self.dev_err(OP, e))?;
        Ok(out)
    }

    fn upload_index(&self, data: &[u32]) -> Result<CudaIndex> {
        const OP: &str = "upload_index";
        // a 1-element allocation when empty keeps every index address valid
        let mut dev = unsafe { self.stream.alloc::<u32>(data.len().max(1)) }
            .map_err(|e| self.dev_err(OP, e))?;
        if !data.is_empty() {
            let mut dst = dev.slice_mut(0..data.len());
            self.stream
                .memcpy_htod(data, &mut dst)
                .map_err(|e| self.dev_err(OP, e))?;
        }
        Ok(CudaIndex {
            data: dev,
            host: data.to_vec(),
        })
    }

    fn index_values<'i>(&self, ids: &'i CudaIndex) -> &'i [u32] {
        &ids.host
    }

    fn free_memory(&self) -> Option<u64> {
        self.ctx.mem_get_info().ok().map(|(free, _)| free as u64)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| self.dev_err("synchronize", e))
    }

    fn cast(
        &self,
        src: View<'_, CudaBuffer>,
        dst: ViewMut<'_, CudaBuffer>,
        rounding: Rounding,
    ) -> Result<()> {
        const OP: &str = "cast";
        let n = contract::same_len(self, OP, &[("src", &src)], ("dst", &dst))?;
        let d = self.arg_mut(&dst);
        if src.dtype() == dst.dtype() {
            // already representable: a plain copy (bit-exact, NaN payloads included)
            if n > 0 {
                let bytes = n * src.dtype().size_in_bytes();
                self.ctx.bind_to_thread().map_err(|e| self.dev_err(OP, e))?;
                // SAFETY: both ranges are live and `bytes` long (lengths checked above).
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(
                        d.ptr,
                        self.arg(src).ptr,
                        bytes,
                        self.stream.cu_stream(),
                    )
                }
                .map_err(|e| self.dev_err(OP, e))?;
            }
            return Ok(());
        }
        self.pointwise(
            OP,
            Pw::CAST,
            Some(self.arg(src)),
            None,
            d,
            n,
            0.0,
            rounding,
            dst.offset,
        )
    }

    fn fill(&self, dst: ViewMut<'_, CudaBuffer>, value: f32) -> Result<()> {
        Check::new(self, "fill").view_mut("dst", &dst)?;
        let d = self.arg_mut(&dst);
        self.pointwise(
            "fill",
            Pw::FILL,
            None,
            None,
            d,
            dst.len,
            value,
            Rounding::NearestEven,
            0,
        )
    }
}

impl GemmOps for CudaBackend {
    fn gemm(
        &self,
        a: View<'_, CudaBuffer>,
        b: View<'_, CudaBuffer>,
        c: ViewMut<'_, CudaBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        const OP: &str = "gemm";
        let s = spec;
        if contract::gemm(self, &a, &b, &c, spec)? == 0 {
            return Ok(());
        }
        let too_big = [s.m, s.n, s.k, s.batch]
            .iter()
            .any(|&d| d > i32::MAX as usize);
        if too_big {
            return Err(self.shape_err(OP, format!("{s:?}: a dimension exceeds i32")));
        }
        if s.k == 0 || s.alpha == 0.0 {
            // C = beta C batch by batch (elements between strided outputs are not C's), and
            // beta = 0 writes zeros without reading C (as BLAS and the CPU backend do)
            let per = s.m * s.n;
            let runs: Vec<(usize, usize)> = if s.stride_c == per {
                vec![(0, per * s.batch)]
            } else {
                (0..s.batch).map(|i| (i * s.stride_c, per)).collect()
            };
            let dt = dt_code(c.dtype());
            for (off, n) in runs {
                let cc = Arg {
                    ptr: self.addr(c.buf, c.offset + off),
                    dt,
                };
                let (op, src) = if s.beta == 0.0 {
                    (Pw::FILL, None)
                } else {
                    (Pw::SCALE, Some(cc))
                };
                self.pointwise(OP, op, src, None, cc, n, s.beta, Rounding::NearestEven, 0)?;
            }
            return Ok(());
        }
        if gemm::supported(a.dtype(), c.dtype()) {
            let (pa, pb, pc) = (
                self.addr(a.buf, a.offset),
                self.addr(b.buf, b.offset),
                self.addr(c.buf, c.offset),
            );
            self.gemm_raw(
                (a.dtype(), c.dtype()),
                (pa, pb, pc),
                s,
                Epilogue::None,
                Vectors::default(),
            )
        } else {
            self.gemm_staged(a, b, c, s)
        }
    }

    /// cuBLASLt's `BIAS` epilogue when the bias has C's dtype, starts 16-byte aligned and
    /// cuBLASLt has an algorithm for the problem; the default composition otherwise (the same
    /// values).
    fn gemm_bias(
        &self,
        a: View<'_, CudaBuffer>,
        b: View<'_, CudaBuffer>,
        bias: View<'_, CudaBuffer>,
        c: ViewMut<'_, CudaBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        if contract::gemm_bias(self, &a, &b, &bias, &c, spec)? == 0 {
            return Ok(());
        }
        let vecs = Vectors {
            bias: Some(self.addr(bias.buf, bias.offset)),
            aux: None,
        };
        let cc = (self.addr(c.buf, c.offset), c.dtype());
        if bias.dtype() != c.dtype()
            || !self.gemm_epilogue("gemm_bias", (&a, &b, cc), spec, Epilogue::Bias, vecs)?
        {
            return compose_gemm_bias(self, a, b, bias, c, spec);
        }
        Ok(())
    }

    /// cuBLASLt's `GELU_AUX_BIAS` epilogue (`out` as D, `pre` as the aux matrix) where
    /// `CudaBackend::gemm_epilogue` can use it and the bias has C's dtype; the default
    /// composition otherwise.
    fn gemm_bias_gelu(
        &self,
        a: View<'_, CudaBuffer>,
        b: View<'_, CudaBuffer>,
        bias: View<'_, CudaBuffer>,
        pre: ViewMut<'_, CudaBuffer>,
        out: ViewMut<'_, CudaBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        const OP: &str = "gemm_bias_gelu";
        if contract::gemm_bias_gelu(self, &a, &b, &bias, &pre, &out, spec)? == 0 {
            return Ok(());
        }
        let vecs = Vectors {
            bias: Some(self.addr(bias.buf, bias.offset)),
            aux: Some(self.addr(pre.buf, pre.offset)),
        };
        let d = (self.addr(out.buf, out.offset), out.dtype());
        if bias.dtype() != out.dtype()
            || !self.gemm_epilogue(OP, (&a, &b, d), spec, Epilogue::GeluAuxBias, vecs)?
        {
            return compose_gemm_bias_gelu(self, a, b, bias, pre, out, spec);
        }
        Ok(())
    }

    /// cuBLASLt's `DGELU` epilogue into a scratch buffer of `pre`'s dtype (`pre` as the aux
    /// matrix), then `dx +=` it; the default composition where the epilogue cannot run.
    fn gemm_dgelu(
        &self,
        a: View<'_, CudaBuffer>,
        b: View<'_, CudaBuffer>,
        pre: View<'_, CudaBuffer>,
        dx: ViewMut<'_, CudaBuffer>,
        spec: &Gemm,
    ) -> Result<()> {
        const OP: &str = "gemm_dgelu";
        if contract::gemm_dgelu(self, &a, &b, &pre, &dx, spec)? == 0 {
            return Ok(());
        }
        let mut dh = self.uninit(pre.dtype(), spec.m * spec.n)?;
        let vecs = Vectors {
            bias: None,
            aux: Some(self.addr(pre.buf, pre.offset)),
        };
        let d = (self.addr(&dh, 0), dh.dtype());
        if !self.gemm_epilogue(OP, (&a, &b, d), spec, Epilogue::DGelu, vecs)? {
            // the default composition on the scratch already allocated (not a second one)
            self.gemm(a, b, dh.view_mut(), spec)?;
            return self.unary_backward(UnaryOp::GeluTanh, pre, dh.view(), dx);
        }
        self.axpy(1.0, dh.view(), dx)
    }

    /// cuBLASLt's `BGRADB` (the sums of our A) or `BGRADA` (of our B) epilogue, writing
    /// `dbias` when it has C's dtype; the default composition where the epilogue cannot run
    /// or `alpha` is not 1 (cuBLASLt's documentation does not say whether the sums are
    /// scaled by `alpha`).
    fn gemm_bias_grad(
        &self,
        a: View<'_, CudaBuffer>,
        b: View<'_, CudaBuffer>,
        c: ViewMut<'_, CudaBuffer>,
        dbias: ViewMut<'_, CudaBuffer>,
        of: BiasGradOf,
        spec: &Gemm,
    ) -> Result<()> {
        const OP: &str = "gemm_bias_grad";
        if contract::gemm_bias_grad(self, &a, &b, &c, &dbias, of, spec)? == 0 {
            return Ok(());
        }
        let epilogue = match of {
            BiasGradOf::A => Epilogue::BiasGradOfA,
            BiasGradOf::B => Epilogue::BiasGradOfB,
        };
        let vecs = Vectors {
            bias: Some(self.addr(dbias.buf, dbias.offset)),
            aux: None,
        };
        let cc = (self.addr(c.buf, c.offset), c.dtype());
        if spec.alpha != 1.0
            || dbias.dtype() != c.dtype()
            || !self.gemm_epilogue(OP, (&a, &b, cc), spec, epilogue, vecs)?
        {
            return compose_gemm_bias_grad(self, a, b, c, dbias, of, spec);
        }
        Ok(())
    }
}

impl CudaBackend {
    /// Launches one product (`batch` 1) with a cuBLASLt epilogue, D at address and dtype `d`,
    /// when cuBLASLt can run it: sizes within `i32`, `k > 0`, `alpha != 0`, a supported dtype
    /// pair, every epilogue address 16-byte aligned, the aux matrix's leading dimension (our
    /// `n`) a multiple of 8, and an algorithm for the problem (asked once per problem, then
    /// cached). Returns false, having launched nothing, otherwise: the caller composes.
    fn gemm_epilogue(
        &self,
        op: &'static str,
        (a, b, d): (&View<'_, CudaBuffer>, &View<'_, CudaBuffer>, (u64, DType)),
        s: &Gemm,
        epilogue: Epilogue,
        vecs: Vectors,
    ) -> Result<bool> {
        let fits = [s.m, s.n, s.k].iter().all(|&x| x <= i32::MAX as usize);
        let dtypes = (a.dtype(), d.1);
        let aligned = [vecs.bias, vecs.aux]
            .into_iter()
            .flatten()
            .all(|p| gemm::alignment(p) >= 16);
        if !fits
            || s.batch != 1
            || s.k == 0
            || s.alpha == 0.0
            || !gemm::supported(dtypes.0, dtypes.1)
            || !aligned
            || (vecs.aux.is_some() && !s.n.is_multiple_of(8))
        {
            return Ok(false);
        }
        let ptrs = (self.addr(a.buf, a.offset), self.addr(b.buf, b.offset), d.0);
        self.ctx.bind_to_thread().map_err(|e| self.dev_err(op, e))?;
        if !self
            .lt
            .has_plan(&self.problem(dtypes, ptrs, s, 1, epilogue))
        {
            return Ok(false);
        }
        self.gemm_raw(dtypes, ptrs, s, epilogue, vecs)?;
        Ok(true)
    }
}

impl PointwiseOps for CudaBackend {
    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_, CudaBuffer>,
        b: View<'_, CudaBuffer>,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "binary";
        let n = contract::same_len(self, OP, &[("a", &a), ("b", &b)], ("out", &out))?;
        let pw = match op {
            BinaryOp::Add => Pw::ADD,
            BinaryOp::Mul => Pw::MUL,
            BinaryOp::Sub => Pw::SUB,
        };
        let o = self.arg_mut(&out);
        self.pointwise(
            OP,
            pw,
            Some(self.arg(a)),
            Some(self.arg(b)),
            o,
            n,
            0.0,
            Rounding::NearestEven,
            0,
        )
    }

    fn scale(
        &self,
        x: View<'_, CudaBuffer>,
        alpha: f32,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "scale";
        let n = contract::same_len(self, OP, &[("x", &x)], ("out", &out))?;
        let o = self.arg_mut(&out);
        self.pointwise(
            OP,
            Pw::SCALE,
            Some(self.arg(x)),
            None,
            o,
            n,
            alpha,
            Rounding::NearestEven,
            0,
        )
    }

    fn axpy(
        &self,
        alpha: f32,
        x: View<'_, CudaBuffer>,
        dst: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "axpy";
        let n = contract::same_len(self, OP, &[("x", &x)], ("dst", &dst))?;
        let d = self.arg_mut(&dst);
        self.pointwise(
            OP,
            Pw::AXPY,
            Some(self.arg(x)),
            None,
            d,
            n,
            alpha,
            Rounding::NearestEven,
            0,
        )
    }

    fn bias_add(
        &self,
        x: View<'_, CudaBuffer>,
        bias: View<'_, CudaBuffer>,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "bias_add";
        let rows = contract::bias_add(self, &x, &bias, &out)?;
        let (n, cols) = (x.len, bias.len);
        if n == 0 {
            return Ok(());
        }
        let (xa, ba, oa) = (self.arg(x), self.arg(bias), self.arg_mut(&out));
        let vec = (cols.is_multiple_of(8) && Self::vec_ok(&[xa, ba, oa])) as i32;
        let (r, c) = (rows as u64, cols as u64);
        self.launch_rows(
            OP,
            "mp_bias_add",
            self.grid_8(n, 256),
            &kargs![xa.ptr, xa.dt, ba.ptr, ba.dt, oa.ptr, oa.dt, r, c, vec],
        )
    }

    fn unary(
        &self,
        op: UnaryOp,
        x: View<'_, CudaBuffer>,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        let name = op.name();
        let n = contract::same_len(self, name, &[("x", &x)], ("out", &out))?;
        let o = self.arg_mut(&out);
        self.pointwise(
            name,
            Pw::unary(op),
            Some(self.arg(x)),
            None,
            o,
            n,
            0.0,
            Rounding::NearestEven,
            0,
        )
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: View<'_, CudaBuffer>,
        dy: View<'_, CudaBuffer>,
        dx: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        let name = op.backward_name();
        let n = contract::same_len(self, name, &[("x", &x), ("dy", &dy)], ("dx", &dx))?;
        let d = self.arg_mut(&dx);
        self.pointwise(
            name,
            Pw::unary_backward(op),
            Some(self.arg(x)),
            Some(self.arg(dy)),
            d,
            n,
            0.0,
            Rounding::NearestEven,
            0,
        )
    }

    fn mul_broadcast(
        &self,
        x: View<'_, CudaBuffer>,
        row_scale: Option<View<'_, CudaBuffer>>,
        col_scale: Option<View<'_, CudaBuffer>>,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "mul_broadcast";
        let (rows, cols) =
            contract::mul_broadcast(self, &x, row_scale.as_ref(), col_scale.as_ref(), &out)?;
        if x.len == 0 {
            return Ok(());
        }
        let (xa, oa) = (self.arg(x), self.arg_mut(&out));
        let null = Arg { ptr: 0, dt: 0 };
        let ra = row_scale.map_or(null, |v| self.arg(v));
        let ca = col_scale.map_or(null, |v| self.arg(v));
        let (r, c) = (rows as u64, cols as u64);
        self.launch_rows(
            OP,
            "mp_mul_broadcast",
            self.grid_1(x.len, 256),
            &kargs![
                xa.ptr, xa.dt, ra.ptr, ra.dt, ca.ptr, ca.dt, oa.ptr, oa.dt, r, c
            ],
        )
    }

    fn dropout(
        &self,
        x: View<'_, CudaBuffer>,
        p: f32,
        seed: u64,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "dropout";
        let (threshold, scale) = contract::dropout(self, &x, p, &out)?;
        if x.len == 0 {
            return Ok(());
        }
        let (xa, oa, n) = (self.arg(x), self.arg_mut(&out), x.len as u64);
        self.launch_rows(
            OP,
            "mp_dropout",
            self.grid_1(x.len, 256),
            &kargs![xa.ptr, xa.dt, oa.ptr, oa.dt, n, threshold, scale, seed],
        )
    }

    fn swiglu(
        &self,
        gu: View<'_, CudaBuffer>,
        f: usize,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "swiglu";
        contract::swiglu(self, OP, &gu, None, f, &out)?;
        if out.len == 0 {
            return Ok(());
        }
        let (ga, oa) = (self.arg(gu), self.arg_mut(&out));
        let (n, f64_) = (out.len as u64, f as u64);
        self.launch_rows(
            OP,
            "mp_swiglu",
            self.grid_1(out.len, 256),
            &kargs![ga.ptr, ga.dt, oa.ptr, oa.dt, n, f64_],
        )
    }

    fn swiglu_backward(
        &self,
        gu: View<'_, CudaBuffer>,
        dy: View<'_, CudaBuffer>,
        f: usize,
        dgu: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "swiglu_backward";
        contract::swiglu(self, OP, &gu, Some(&dy), f, &dgu)?;
        if dy.len == 0 {
            return Ok(());
        }
        let (n, f64_) = (dy.len as u64, f as u64);
        let (ga, ya, da) = (self.arg(gu), self.arg(dy), self.arg_mut(&dgu));
        self.launch_rows(
            OP,
            "mp_swiglu_bwd",
            self.grid_1(n as usize, 256),
            &kargs![ga.ptr, ga.dt, ya.ptr, ya.dt, da.ptr, da.dt, n, f64_],
        )
    }
}

impl RowOps for CudaBackend {
    fn reduce_rows(
        &self,
        op: ReduceOp,
        x: View<'_, CudaBuffer>,
        cols: usize,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "reduce_rows";
        let rows = contract::reduce_rows(self, &x, cols, &out)?;
        if rows == 0 {
            return Ok(());
        }
        let code: i32 = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Mean => 1,
            ReduceOp::Max => 2,
            ReduceOp::SumSq => 3,
        };
        let (xa, oa) = (self.arg(x), self.arg_mut(&out));
        let (r, c) = (rows as u64, cols as u64);
        let block = if cols >= 4096 {
            WIDE_ROW_BLOCK
        } else {
            ROW_BLOCK
        };
        self.launch_rows(
            OP,
            "mp_reduce_rows",
            Self::grid_rows(rows, block),
            &kargs![code, xa.ptr, xa.dt, r, c, oa.ptr, oa.dt],
        )
    }

    fn sum_cols_acc(&self, x: View<'_, CudaBuffer>, out: ViewMut<'_, CudaBuffer>) -> Result<()> {
        const OP: &str = "sum_cols_acc";
        let cols = out.len;
        let rows = contract::sum_cols(self, &x, &out)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let (per, chunks) = Self::col_chunks(rows);
        let (_guard, part, _, _) = self.scratch(OP, chunks * cols, 1)?;
        let (xa, oa) = (self.arg(x), self.arg_mut(&out));
        let (r, c, per64, ch64) = (rows as u64, cols as u64, per as u64, chunks as u64);
        let gx = cols.div_ceil(256) as u32;
        let cfg = LaunchConfig {
            grid_dim: (gx, chunks as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_rows(
            OP,
            "mp_sum_cols_partial",
            cfg,
            &kargs![xa.ptr, xa.dt, r, c, per64, part],
        )?;
        let one = 1i32;
        let cfg = LaunchConfig {
            grid_dim: (gx, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_rows(
            OP,
            "mp_sum_cols_final",
            cfg,
            &kargs![part, ch64, c, oa.ptr, oa.dt, oa.ptr, oa.dt, one],
        )
    }

    fn softmax(
        &self,
        x: View<'_, CudaBuffer>,
        cols: usize,
        causal: bool,
        log: bool,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "softmax";
        let rows = contract::softmax(self, &x, cols, &out)?;
        if rows == 0 {
            return Ok(());
        }
        let (xa, oa) = (self.arg(x), self.arg_mut(&out));
        let (r, c, ca, lg) = (rows as u64, cols as u64, causal as i32, log as i32);
        let block = if cols >= 4096 {
            WIDE_ROW_BLOCK
        } else {
            ROW_BLOCK
        };
        self.launch_rows(
            OP,
            "mp_softmax",
            Self::grid_rows(rows, block),
            &kargs![xa.ptr, xa.dt, r, c, ca, lg, oa.ptr, oa.dt],
        )
    }

    fn softmax_backward(
        &self,
        y: View<'_, CudaBuffer>,
        dy: View<'_, CudaBuffer>,
        cols: usize,
        log: bool,
        dx: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "softmax_backward";
        let rows = contract::softmax_backward(self, &y, &dy, cols, &dx)?;
        if rows == 0 {
            return Ok(());
        }
        let (ya, ga, da) = (self.arg(y), self.arg(dy), self.arg_mut(&dx));
        let (r, c, lg) = (rows as u64, cols as u64, log as i32);
        let block = if cols >= 4096 {
            WIDE_ROW_BLOCK
        } else {
            ROW_BLOCK
        };
        self.launch_rows(
            OP,
            "mp_softmax_bwd",
            Self::grid_rows(rows, block),
            &kargs![ya.ptr, ya.dt, ga.ptr, ga.dt, r, c, lg, da.ptr, da.dt],
        )
    }
}

impl NormOps for CudaBackend {
    fn layer_norm(
        &self,
        x: View<'_, CudaBuffer>,
        weight: View<'_, CudaBuffer>,
        bias: View<'_, CudaBuffer>,
        eps: f32,
        out: ViewMut<'_, CudaBuffer>,
        mean: ViewMut<'_, CudaBuffer>,
        rstd: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        let (rows, c) = contract::layer_norm(self, &x, &weight, &bias, &out, &mean, &rstd)?;
        if rows == 0 {
            return Ok(());
        }
        let (xa, wa, ba) = (self.arg(x), self.arg(weight), self.arg(bias));
        let (oa, ma, ra) = (self.arg_mut(&out), self.arg_mut(&mean), self.arg_mut(&rstd));
        let (r, c64) = (rows as u64, c as u64);
        self.launch_rows(
            OP,
            "mp_layer_norm",
            Self::grid_rows(rows, ROW_BLOCK),
            &kargs![
                xa.ptr, xa.dt, wa.ptr, wa.dt, ba.ptr, ba.dt, r, c64, eps, oa.ptr, oa.dt, ma.ptr,
                ma.dt, ra.ptr, ra.dt
            ],
        )
    }

    fn layer_norm_backward(
        &self,
        dy: View<'_, CudaBuffer>,
        x: View<'_, CudaBuffer>,
        weight: View<'_, CudaBuffer>,
        mean: View<'_, CudaBuffer>,
        rstd: View<'_, CudaBuffer>,
        dx: ViewMut<'_, CudaBuffer>,
        dweight: ViewMut<'_, CudaBuffer>,
        dbias: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "layer_norm_backward";
        let (rows, c) = contract::layer_norm_backward(
            self, &dy, &x, &weight, &mean, &rstd, &dx, &dweight, &dbias,
        )?;
        if rows == 0 {
            return Ok(());
        }
        let (ga, xa, wa, ma, ra) = (
            self.arg(dy),
            self.arg(x),
            self.arg(weight),
            self.arg(mean),
            self.arg(rstd),
        );
        let (dxa, dwa, dba) = (
            self.arg_mut(&dx),
            self.arg_mut(&dweight),
            self.arg_mut(&dbias),
        );
        let (r, c64) = (rows as u64, c as u64);
        self.launch_rows(
            OP,
            "mp_layer_norm_bwd_dx",
            Self::grid_rows(rows, ROW_BLOCK),
            &kargs![
                ga.ptr, ga.dt, xa.ptr, xa.dt, wa.ptr, wa.dt, ma.ptr, ma.dt, ra.ptr, ra.dt, r, c64,
                dxa.ptr, dxa.dt
            ],
        )?;
        let (per, chunks) = Self::col_chunks(rows);
        let (_guard, part, _, _) = self.scratch(OP, 2 * chunks * c, 1)?;
        let (per64, ch64) = (per as u64, chunks as u64);
        let gx = c.div_ceil(256) as u32;
        let cfg = LaunchConfig {
            grid_dim: (gx, chunks as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_rows(
            OP,
            "mp_layer_norm_bwd_dwb_partial",
            cfg,
            &kargs![
                ga.ptr, ga.dt, xa.ptr, xa.dt, ma.ptr, ma.dt, ra.ptr, ra.dt, r, c64, per64, ch64,
                part
            ],
        )?;
        let two = 2i32;
        let cfg = LaunchConfig {
            grid_dim: (gx, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_rows(
            OP,
            "mp_sum_cols_final",
            cfg,
            &kargs![part, ch64, c64, dwa.ptr, dwa.dt, dba.ptr, dba.dt, two],
        )
    }
}

impl LossOps for CudaBackend {
    fn cross_entropy(
        &self,
        logits: View<'_, CudaBuffer>,
        targets: &CudaIndex,
        vocab: usize,
        losses: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "cross_entropy";
        let rows = contract::cross_entropy(self, &logits, &targets.host, vocab, &losses)?;
        if rows == 0 {
            return Ok(());
        }
        let (la, oa, t) = (
            self.arg(logits),
            self.arg_mut(&losses),
            self.index_ptr(targets),
        );
        let (r, v) = (rows as u64, vocab as u64);
        self.launch_rows(
            OP,
            "mp_cross_entropy",
            Self::grid_rows(rows, WIDE_ROW_BLOCK),
            &kargs![la.ptr, la.dt, t, r, v, oa.ptr, oa.dt],
        )
    }

    fn cross_entropy_backward(
        &self,
        logits: View<'_, CudaBuffer>,
        targets: &CudaIndex,
        vocab: usize,
        dloss: f32,
        dlogits: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_backward";
        let rows = contract::cross_entropy_backward(self, &logits, &targets.host, vocab, &dlogits)?;
        if rows == 0 {
            return Ok(());
        }
        let (la, da, t) = (
            self.arg(logits),
            self.arg_mut(&dlogits),
            self.index_ptr(targets),
        );
        let (r, v) = (rows as u64, vocab as u64);
        self.launch_rows(
            OP,
            "mp_cross_entropy_bwd",
            Self::grid_rows(rows, WIDE_ROW_BLOCK),
            &kargs![la.ptr, la.dt, t, r, v, dloss, da.ptr, da.dt],
        )
    }

    fn cross_entropy_fused(
        &self,
        logits: View<'_, CudaBuffer>,
        targets: &CudaIndex,
        vocab: usize,
        dloss: f32,
        losses: ViewMut<'_, CudaBuffer>,
        dlogits: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "cross_entropy_fused";
        let rows =
            contract::cross_entropy_fused(self, &logits, &targets.host, vocab, &losses, &dlogits)?;
        if rows == 0 {
            return Ok(());
        }
        let (la, oa, da, t) = (
            self.arg(logits),
            self.arg_mut(&losses),
            self.arg_mut(&dlogits),
            self.index_ptr(targets),
        );
        let (r, v) = (rows as u64, vocab as u64);
        self.launch_rows(
            OP,
            "mp_cross_entropy_fused",
            Self::grid_rows(rows, WIDE_ROW_BLOCK),
            &kargs![la.ptr, la.dt, t, r, v, dloss, oa.ptr, oa.dt, da.ptr, da.dt],
        )
    }
}

impl EmbeddingOps for CudaBackend {
    fn embedding(
        &self,
        table: View<'_, CudaBuffer>,
        ids: &CudaIndex,
        c: usize,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "embedding";
        contract::embedding(self, &table, &ids.host, c, &out)?;
        if out.len == 0 {
            return Ok(());
        }
        let (ta, oa, ip) = (self.arg(table), self.arg_mut(&out), self.index_ptr(ids));
        let (n, c64) = (ids.len() as u64, c as u64);
        let cfg = self.grid_1(out.len, 256);
        self.launch_rows(
            OP,
            "mp_embedding",
            cfg,
            &kargs![ta.ptr, ta.dt, ip, n, c64, oa.ptr, oa.dt],
        )
    }

    fn embedding_backward(
        &self,
        dout: View<'_, CudaBuffer>,
        ids: &CudaIndex,
        c: usize,
        dtable: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "embedding_backward";
        contract::embedding_backward(self, &dout, &ids.host, c, &dtable)?;
        if dout.len == 0 {
            return Ok(());
        }
        let (ga, ip) = (self.arg(dout), self.index_ptr(ids));
        let ta = self.arg_mut(&dtable);
        // FP32 accumulation: straight into an f32 table, else into an f32 staging copy
        let stage = if dtable.dtype() == DType::F32 {
            None
        } else {
            let t = self.temp(OP, dtable.len * 4)?;
            let dst = Arg {
                ptr: self.temp_ptr(&t),
                dt: dt_code(DType::F32),
            };
            self.pointwise(
                OP,
                Pw::CAST,
                Some(ta),
                None,
                dst,
                dtable.len,
                0.0,
                Rounding::NearestEven,
                0,
            )?;
            Some((t, dst))
        };
        let acc = stage.as_ref().map_or(ta.ptr, |(_, d)| d.ptr);
        let (n, c64) = (ids.len() as u64, c as u64);
        let cfg = self.grid_1(dout.len, 256);
        self.launch_rows(
            OP,
            "mp_embedding_bwd",
            cfg,
            &kargs![ga.ptr, ga.dt, ip, n, c64, acc],
        )?;
        if let Some((_t, src)) = &stage {
            self.pointwise(
                OP,
                Pw::CAST,
                Some(*src),
                None,
                ta,
                dtable.len,
                0.0,
                Rounding::NearestEven,
                0,
            )?;
        }
        Ok(())
    }
}

impl LayoutOps for CudaBackend {
    fn rope(
        &self,
        x: View<'_, CudaBuffer>,
        cos: View<'_, CudaBuffer>,
        sin: View<'_, CudaBuffer>,
        s: &Rope,
        out: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "rope";
        contract::rope(self, &x, &cos, &sin, s, &out)?;
        let pairs = x.len / 2;
        if pairs == 0 {
            return Ok(());
        }
        let (xa, ca, sa, oa) = (
            self.arg(x),
            self.arg(cos),
            self.arg(sin),
            self.arg_mut(&out),
        );
        let sign = if s.inverse { -1.0f32 } else { 1.0 };
        let (p, h, rot, half, t) = (
            pairs as u64,
            s.heads as u64,
            s.rotated as u64,
            (s.head_dim / 2) as u64,
            s.t as u64,
        );
        self.launch_rows(
            OP,
            "mp_rope",
            self.grid_1(pairs, 256),
            &kargs![
                xa.ptr, xa.dt, ca.ptr, sa.ptr, oa.ptr, oa.dt, p, h, rot, half, t, sign
            ],
        )
    }

    fn split_heads(
        &self,
        src: View<'_, CudaBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "split_heads";
        contract::heads(self, layout, &src, &dst, false)?;
        let (sa, da) = (self.arg(src), self.arg_mut(&dst));
        self.launch_heads(OP, sa, da, layout, false, false)
    }

    fn merge_heads(
        &self,
        src: View<'_, CudaBuffer>,
        layout: &Heads,
        dst: ViewMut<'_, CudaBuffer>,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "merge_heads";
        contract::heads(self, layout, &src, &dst, true)?;
        let (sa, da) = (self.arg(src), self.arg_mut(&dst));
        self.launch_heads(OP, sa, da, layout, true, accumulate)
    }
}

/// The tensor-core attention kernels (`kernels/flash.cu`) of one (compute type, head size):
/// BF16 or FP16 `qkv` with a head size of 64 or 128. Other shapes run the default GEMM
/// composition ([`crate::gemm_attention`]).
#[derive(Clone, Copy, Debug)]
struct Flash {
    /// The compute type: the dtype of `qkv`, to which `dout` is converted when it differs.
    dtype: DType,
    hs: usize,
    fwd: &'static str,
    dkv: &'static str,
    dq: &'static str,
}

/// Threads of a flash attention block (4 warps of 16 rows: 64 queries or keys).
const FLASH_THREADS: u32 = 128;
/// Rows (queries or keys) of a flash attention block.
const FLASH_ROWS: usize = 64;

impl Flash {
    fn select(s: &Attention, dtype: DType) -> Option<Flash> {
        let hs = s.head_size();
        let (fwd, dkv, dq) = match (dtype, hs) {
            (DType::BF16, 64) => (
                "mp_flash_fwd_bf16_64",
                "mp_flash_bwd_dkv_bf16_64",
                "mp_flash_bwd_dq_bf16_64",
            ),
            (DType::BF16, 128) => (
                "mp_flash_fwd_bf16_128",
                "mp_flash_bwd_dkv_bf16_128",
                "mp_flash_bwd_dq_bf16_128",
            ),
            (DType::F16, 64) => (
                "mp_flash_fwd_f16_64",
                "mp_flash_bwd_dkv_f16_64",
                "mp_flash_bwd_dq_f16_64",
            ),
            (DType::F16, 128) => (
                "mp_flash_fwd_f16_128",
                "mp_flash_bwd_dkv_f16_128",
                "mp_flash_bwd_dq_f16_128",
            ),
            _ => return None,
        };
        // the query/key blocks go in the grid's y dimension
        if s.t.div_ceil(FLASH_ROWS) > 65535 {
            return None;
        }
        Some(Flash {
            dtype,
            hs,
            fwd,
            dkv,
            dq,
        })
    }

    /// A padded shared-memory tile of `rows` rows in bytes.
    fn tile(&self, rows: usize) -> usize {
        rows * (self.hs + 8) * 2
    }

    /// The query tile of the dK/dV kernel (smaller at head size 128, for registers).
    fn dkv_queries(&self) -> usize {
        if self.hs > 64 { 32 } else { 64 }
    }

    fn grid(&self, s: &Attention, heads: usize, smem: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: ((s.b * heads) as u32, s.t.div_ceil(FLASH_ROWS) as u32, 1),
            block_dim: (FLASH_THREADS, 1, 1),
            shared_mem_bytes: smem as u32,
        }
    }
}

impl CudaBackend {
    /// `v` as a flash kernel operand: in the compute type and 16-byte aligned (what cp.async
    /// needs), converted or copied into a fresh buffer when it is not (the buffer is returned to
    /// live as long as the launch's argument).
    fn flash_operand(
        &self,
        v: View<'_, CudaBuffer>,
        dtype: DType,
    ) -> Result<(Arg, Option<CudaBuffer>)> {
        let a = self.arg(v);
        if v.dtype() == dtype && a.ptr.is_multiple_of(16) {
            return Ok((a, None));
        }
        let mut copy = self.uninit(dtype, v.len)?;
        self.cast(v, copy.view_mut(), Rounding::NearestEven)?;
        Ok((self.arg(copy.view()), Some(copy)))
    }
}

impl AttentionOps for CudaBackend {
    fn attention(
        &self,
        qkv: View<'_, CudaBuffer>,
        shape: &Attention,
        out: ViewMut<'_, CudaBuffer>,
        lse: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "attention";
        contract::attention_forward(self, &qkv, shape, &out, &lse)?;
        let Some(f) = Flash::select(shape, qkv.dtype()) else {
            return crate::gemm_attention::forward(self, qkv, shape, out, lse);
        };
        if shape.b * shape.t == 0 {
            return Ok(());
        }
        let (q, _copy) = self.flash_operand(qkv, f.dtype)?;
        let (o, l) = (self.arg_mut(&out), self.arg_mut(&lse));
        let s = shape;
        let [t, h, kvh, row] = [s.t, s.heads, s.kv_heads, s.qkv_row()].map(|v| v as u64);
        let scale = 1.0 / (f.hs as f32).sqrt();
        self.launch_rows(
            OP,
            f.fwd,
            f.grid(s, s.heads, 2 * f.tile(FLASH_ROWS)),
            &kargs![q.ptr, o.ptr, o.dt, l.ptr, t, h, kvh, row, scale],
        )
    }

    fn attention_backward(
        &self,
        dout: View<'_, CudaBuffer>,
        qkv: View<'_, CudaBuffer>,
        out: View<'_, CudaBuffer>,
        lse: View<'_, CudaBuffer>,
        shape: &Attention,
        dqkv: ViewMut<'_, CudaBuffer>,
    ) -> Result<()> {
        const OP: &str = "attention_backward";
        contract::attention_backward(self, &dout, &qkv, &out, &lse, shape, &dqkv)?;
        let Some(f) = Flash::select(shape, qkv.dtype()) else {
            return crate::gemm_attention::backward(self, dout, qkv, out, lse, shape, dqkv);
        };
        if shape.b * shape.t == 0 {
            return Ok(());
        }
        let s = shape;
        let [b, t, h, kvh, row, hs] =
            [s.b, s.t, s.heads, s.kv_heads, s.qkv_row(), f.hs].map(|v| v as u64);
        // delta = rowsum(dO ∘ O) per (batch entry, head, query): one warp a row
        let delta = self.uninit(DType::F32, s.lse_len())?;
        let (da, oa, dl) = (self.arg(dout), self.arg(out), self.arg(delta.view()));
        let warps = (s.lse_len() as u64).div_ceil(8);
        let delta_cfg = LaunchConfig {
            grid_dim: (warps.clamp(1, self.sm_count as u64 * 32) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_rows(
            OP,
            "mp_flash_delta",
            delta_cfg,
            &kargs![da.ptr, da.dt, oa.ptr, oa.dt, dl.ptr, b, t, h, hs],
        )?;
        let (q, _qcopy) = self.flash_operand(qkv, f.dtype)?;
        let (d, _dcopy) = self.flash_operand(dout, f.dtype)?;
        let (l, g) = (self.arg(lse), self.arg_mut(&dqkv));
        let scale = 1.0 / (f.hs as f32).sqrt();
        let args = kargs![
            q.ptr, d.ptr, l.ptr, dl.ptr, g.ptr, g.dt, t, h, kvh, row, scale
        ];
        let bq = f.dkv_queries();
        let dkv_smem = 2 * f.tile(FLASH_ROWS) + 2 * f.tile(bq) + 2 * bq * 4;
        self.launch_rows(OP, f.dkv, f.grid(s, s.kv_heads, dkv_smem), &args)?;
        self.launch_rows(OP, f.dq, f.grid(s, s.heads, 4 * f.tile(FLASH_ROWS)), &args)
    }
}

impl OptimOps for CudaBackend {
    fn grad_stats(&self, grads: View<'_, CudaBuffer>, grad_mult: f32) -> Result<GradStats> {
        const OP: &str = "grad_stats";
        Check::new(self, OP).view("grads", &grads)?;
        if grads.len == 0 {
            return Ok(GradStats::default());
        }
        let ga = self.arg(grads);
        let cfg = self.grid_8(grads.len, 256);
        let nblocks = cfg.grid_dim.0 as usize;
        let (guard, part, flags, out) = self.scratch(OP, nblocks, nblocks)?;
        let (n, vec) = (grads.len as u64, Self::vec_ok(&[ga]) as i32);
        self.launch_rows(
            OP,
            "mp_grad_stats_partial",
            cfg,
            &kargs![ga.ptr, ga.dt, n, vec, grad_mult, part, flags],
        )?;
        let np = nblocks as u64;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch_rows(
            OP,
            "mp_grad_stats_final",
            cfg,
            &kargs![part, flags, np, out],
        )?;
        let mut host = [0f64; 1];
        self.ctx.bind_to_thread().map_err(|e| self.dev_err(OP, e))?;
        // SAFETY: `out` is the live 1-element f64 scratch written by the launch above.
        let r = unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut host, out, self.stream.cu_stream())
        };
        drop(guard);
        r.map_err(|e| self.dev_err(OP, e))?;
        self.stream.synchronize().map_err(|e| self.dev_err(OP, e))?;
        let s = host[0];
        Ok(if s.is_nan() {
            GradStats {
                non_finite: true,
                sum_sq: f64::NAN,
            }
        } else {
            GradStats {
                non_finite: false,
                sum_sq: s,
            }
        })
    }

    fn adamw(
        &self,
        params: ViewMut<'_, CudaBuffer>,
        grads: View<'_, CudaBuffer>,
        m: ViewMut<'_, CudaBuffer>,
        v: ViewMut<'_, CudaBuffer>,
        model: Option<ViewMut<'_, CudaBuffer>>,
        hp: &AdamW,
    ) -> Result<()> {
        const OP: &str = "adamw";
        let (n, coef) = contract::adamw(self, &params, &grads, &m, &v, model.as_ref(), hp)?;
        if n == 0 {
            return Ok(());
        }
        let (pa, ga, ma, va) = (
            self.arg_mut(&params),
            self.arg(grads),
            self.arg_mut(&m),
            self.arg_mut(&v),
        );
        let mo = model.as_ref().map(|md| self.arg_mut(md));
        let mut all = vec![pa, ga, ma, va];
        all.extend(mo);
        let vec = Self::vec_ok(&all) as i32;
        let (mptr, mdt) = mo.map_or((0u64, 0i32), |a| (a.ptr, a.dt));
        let (step_size, sqrt_bc2) = (-coef.neg_step_size, coef.bc2_sqrt);
        let (sr, seed) = match hp.rounding {
            Rounding::NearestEven => (0i32, 0u64),
            Rounding::Stochastic { seed } => (1, seed),
        };
        let (n64, pbase, mbase) = (
            n as u64,
            params.offset as u64,
            model.as_ref().map_or(0, |md| md.offset) as u64,
        );
        let cfg = self.grid_8(n, 256);
        self.launch_rows(
            OP,
            "mp_adamw",
            cfg,
            &kargs![
                pa.ptr,
                pa.dt,
                ga.ptr,
                ga.dt,
                ma.ptr,
                va.ptr,
                mptr,
                mdt,
                n64,
                vec,
                hp.lr,
                hp.beta1,
                hp.beta2,
                hp.eps,
                hp.weight_decay,
                step_size,
                sqrt_bc2,
                hp.grad_mult,
                sr,
                seed,
                pbase,
                mbase
            ],
        )
    }

    fn sgd(
        &self,
        params: ViewMut<'_, CudaBuffer>,
        grads: View<'_, CudaBuffer>,
        momentum_buf: ViewMut<'_, CudaBuffer>,
        model: Option<ViewMut<'_, CudaBuffer>>,
        hp: &Sgd,
    ) -> Result<()> {
        const OP: &str = "sgd";
        let n = contract::sgd(self, &params, &grads, &momentum_buf, model.as_ref(), hp)?;
        if n == 0 {
            return Ok(());
        }
        let (pa, ga, ba) = (
            self.arg_mut(&params),
            self.arg(grads),
            self.arg_mut(&momentum_buf),
        );
        let mo = model.as_ref().map(|md| self.arg_mut(md));
        let mut all = vec![pa, ga];
        if hp.momentum != 0.0 {
            all.push(ba);
        }
        all.extend(mo);
        let vec = Self::vec_ok(&all) as i32;
        let (mptr, mdt) = mo.map_or((0u64, 0i32), |a| (a.ptr, a.dt));
        let (sr, seed) = match hp.rounding {
            Rounding::NearestEven => (0i32, 0u64),
            Rounding::Stochastic { seed } => (1, seed),
        };
        let (n64, pbase, mbase) = (
            n as u64,
            params.offset as u64,
            model.as_ref().map_or(0, |md| md.offset) as u64,
        );
        let (nest, first) = (hp.nesterov as i32, hp.first_step as i32);
        let cfg = self.grid_8(n, 256);
        self.launch_rows(
            OP,
            "mp_sgd",
            cfg,
            &kargs![
                pa.ptr,
                pa.dt,
                ga.ptr,
                ga.dt,
                ba.ptr,
                mptr,
                mdt,
                n64,
                vec,
                hp.lr,
                hp.momentum,
                hp.dampening,
                hp.weight_decay,
                nest,
                first,
                hp.grad_mult,
                sr,
                seed,
                pbase,
                mbase
            ],
        )
    }

    fn range_counts(
        &self,
        src: View<'_, CudaBuffer>,
        queries: &[RangeQuery],
    ) -> Result<Vec<RangeCounts>> {
        const OP: &str = "range_counts";
        contract::range_counts(self, &src, queries)?;
        let mut table = Vec::with_capacity(8 * queries.len());
        for q in queries {
            let t = mp_dtype::RangeThresholds::of(q.dtype);
            table.extend(split_u64(q.offset as u64));
            table.extend(split_u64(q.len as u64));
            table.extend([
                q.scale.to_bits(),
                t.nonzero_from,
                t.normal_from,
                t.overflow_from,
            ]);
        }
        let longest = queries.iter().map(|q| q.len).max().unwrap_or(0);
        let x = self.arg(src);
        let counts = self.count(
            OP,
            "mp_range_counts",
            &table,
            queries.len(),
            4,
            longest,
            |t, n, out| kargs![x.ptr, x.dt, t, n, out].to_vec(),
        )?;
        Ok(counts
            .chunks_exact(4)
            .map(|c| RangeCounts {
                underflow: c[0],
                subnormal: c[1],
                overflow: c[2],
                amax: f32::from_bits(c[3] as u32),
            })
            .collect())
    }

    fn lost_update_counts(
        &self,
        before: View<'_, CudaBuffer>,
        after: View<'_, CudaBuffer>,
        ranges: &[(usize, usize)],
        dtype: DType,
    ) -> Result<Vec<UpdateCounts>> {
        const OP: &str = "lost_update_counts";
        contract::lost_update_counts(self, &before, &after, ranges)?;
        let table: Vec<u32> = ranges
            .iter()
            .flat_map(|&(o, n)| split_u64(o as u64).into_iter().chain(split_u64(n as u64)))
            .collect();
        let longest = ranges.iter().map(|r| r.1).max().unwrap_or(0);
        let (b, a, dt) = (self.arg(before), self.arg(after), dt_code(dtype));
        let counts = self.count(
            OP,
            "mp_lost_update_counts",
            &table,
            ranges.len(),
            2,
            longest,
            |t, n, out| kargs![b.ptr, b.dt, a.ptr, a.dt, dt, t, n, out].to_vec(),
        )?;
        Ok(counts
            .chunks_exact(2)
            .map(|c| UpdateCounts {
                updated: c[0],
                lost: c[1],
            })
            .collect())
    }
}

/// `[lo, hi]` halves of a `u64` for the kernels' `u32` query tables.
fn split_u64(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

impl CudaBackend {
    /// One launch of a counting kernel over `nq` queries described by `table`, the longest
    /// `longest` elements, each answered by `width` u64 counters zeroed before the launch:
    /// uploads the table, launches with the arguments `args(table, nq, counters)`, and reads
    /// the counters back (waits for the device).
    #[allow(clippy::too_many_arguments)]
    fn count(
        &self,
        op: &'static str,
        kernel: &'static str,
        table: &[u32],
        nq: usize,
        width: usize,
        longest: usize,
        args: impl FnOnce(u64, u32, u64) -> Vec<K>,
    ) -> Result<Vec<u64>> {
        if nq == 0 {
            return Ok(Vec::new());
        }
        let nq32 = u32::try_from(nq)
            .map_err(|_| Check::new(self, op).shape_err(format!("{nq} queries in one call")))?;
        let queries = self.upload_index(table)?;
        let counters = self
            .stream
            .alloc_zeros::<u64>(nq * width)
            .map_err(|e| self.dev_err(op, e))?;
        let counters_ptr = self.slice_ptr(Some(&counters));
        let mut cfg = self.grid_8(longest.max(1), 256);
        // the x blocks of one query stride over it; the queries stride over y
        cfg.grid_dim.0 = cfg.grid_dim.0.min(self.sm_count * 4);
        cfg.grid_dim.1 = nq32.min(65_535);
        let table_ptr = self.index_ptr(&queries);
        self.launch_rows(op, kernel, cfg, &args(table_ptr, nq32, counters_ptr))?;
        let mut host = vec![0u64; nq * width];
        self.stream
            .memcpy_dtoh(&counters, &mut host)
            .map_err(|e| self.dev_err(op, e))?;
        self.stream.synchronize().map_err(|e| self.dev_err(op, e))?;
        Ok(host)
    }
}

impl CudaBackend {
    /// Launches `mp_heads` over a validated layout (`merge`: head-major `src` into token-major
    /// `dst`, else the reverse).
    fn launch_heads(
        &self,
        op: &'static str,
        src: Arg,
        dst: Arg,
        l: &Heads,
        merge: bool,
        accumulate: bool,
    ) -> Result<()> {
        let n = l.head_major_len();
        if n == 0 {
            return Ok(());
        }
        let dims = [l.b, l.t, l.heads, l.hs, l.row, l.col].map(|v| v as u64);
        let [b, t, h, hs, row, col] = dims;
        self.launch_rows(
            op,
            "mp_heads",
            self.grid_1(n, 256),
            &kargs![
                src.ptr,
                src.dt,
                dst.ptr,
                dst.dt,
                b,
                t,
                h,
                hs,
                row,
                col,
                merge as i32,
                accumulate as i32
            ],
        )
    }
}
