//! Matrix products through cuBLASLt: row-major `C = alpha op(A) op(B) + beta C` mapped onto
//! column-major cuBLAS by computing `C^T = op(B)^T op(A)^T`, strided batches, FP32 compute
//! (TF32 tensor cores for FP32 inputs when enabled), one workspace buffer and a cache of the
//! heuristic's algorithm per problem. A linear layer's epilogues ride in cuBLASLt's (see
//! [`Epilogue`]): cuBLAS's column-major `C^T` has a row per column of our C, so a bias per
//! column of C is cuBLAS's bias per row, and cuBLAS's `A` and `B` are our B and A.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use mp_dtype::DType;

/// Bytes of the cuBLASLt workspace (NVIDIA's recommendation for Hopper).
pub(crate) const WORKSPACE_BYTES: usize = 32 << 20;

/// A supported (A/B dtype, C dtype) pair in cuBLASLt's terms.
fn cuda_type(dt: DType) -> Option<sys::cudaDataType> {
    match dt {
        DType::F32 => Some(sys::cudaDataType::CUDA_R_32F),
        DType::F16 => Some(sys::cudaDataType::CUDA_R_16F),
        DType::BF16 => Some(sys::cudaDataType::CUDA_R_16BF),
        _ => None,
    }
}

/// Whether cuBLASLt multiplies `ab` inputs into a `c` output directly (FP32 compute).
pub(crate) fn supported(ab: DType, c: DType) -> bool {
    matches!(
        (ab, c),
        (DType::F32, DType::F32)
            | (DType::BF16, DType::BF16)
            | (DType::BF16, DType::F32)
            | (DType::F16, DType::F16)
            | (DType::F16, DType::F32)
    )
}

/// The epilogue of a product. Its vectors and matrices are given per call ([`Vectors`]); the
/// aux matrix (the GELU's input) is `m x n` row-major like our C, of C's dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Epilogue {
    /// The product alone.
    None,
    /// `+ bias[j]` per column of C (`BIAS`), the bias of C's dtype.
    Bias,
    /// `C = gelu(product + bias)`, the GELU's input written to the aux matrix
    /// (`GELU_AUX_BIAS`).
    GeluAuxBias,
    /// `C = product * gelu'(aux)` (`DGELU`).
    DGelu,
    /// The bias vector (C's dtype) overwritten with the sums over `k` of our A (`BGRADB`:
    /// cuBLAS's B), `m` elements.
    BiasGradOfA,
    /// The same of our B (`BGRADA`: cuBLAS's A), `n` elements.
    BiasGradOfB,
}

impl Epilogue {
    fn raw(self) -> sys::cublasLtEpilogue_t {
        use sys::cublasLtEpilogue_t as E;
        match self {
            Epilogue::None => E::CUBLASLT_EPILOGUE_DEFAULT,
            Epilogue::Bias => E::CUBLASLT_EPILOGUE_BIAS,
            Epilogue::GeluAuxBias => E::CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            Epilogue::DGelu => E::CUBLASLT_EPILOGUE_DGELU,
            Epilogue::BiasGradOfA => E::CUBLASLT_EPILOGUE_BGRADB,
            Epilogue::BiasGradOfB => E::CUBLASLT_EPILOGUE_BGRADA,
        }
    }

    /// Whether the epilogue reads or writes the bias vector.
    fn has_bias(self) -> bool {
        !matches!(self, Epilogue::None | Epilogue::DGelu)
    }

    /// Whether the epilogue reads or writes the aux matrix.
    fn has_aux(self) -> bool {
        matches!(self, Epilogue::GeluAuxBias | Epilogue::DGelu)
    }
}

/// The device addresses an epilogue takes besides A, B and C: exactly those its
/// [`Epilogue`] names.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Vectors {
    /// The bias (read), or the bias gradient (written).
    pub bias: Option<u64>,
    /// The aux matrix: the GELU's input, written by `GeluAuxBias`, read by `DGelu`.
    pub aux: Option<u64>,
}

/// One product in column-major cuBLAS terms (after the row-major swap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Problem {
    /// Input dtype (both operands).
    pub ab: DType,
    /// Output dtype.
    pub c: DType,
    /// Row-major sizes and flags of the original product.
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub trans_a: bool,
    pub trans_b: bool,
    pub batch: u64,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    /// TF32 tensor cores for FP32 inputs.
    pub tf32: bool,
    /// The largest power of two (<= 16) dividing each pointer: A, B, C.
    pub align: [u32; 3],
    /// The epilogue; its pointers are given per call.
    pub epilogue: Epilogue,
}

struct Layout(sys::cublasLtMatrixLayout_t);
impl Layout {
    fn new(dt: DType, rows: u64, cols: u64, batch: u64, stride: i64) -> Result<Self, String> {
        let ty = cuda_type(dt).ok_or_else(|| format!("no cuBLASLt type for {dt}"))?;
        let l = Layout(lt::create_matrix_layout(ty, rows, cols, rows as i64).map_err(fmt)?);
        if batch > 1 {
            let count = batch as i32;
            // SAFETY: the layout is live; the buffers outlive the calls.
            unsafe {
                lt::set_matrix_layout_attribute(
                    l.0,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    (&count) as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )
                .map_err(fmt)?;
                lt::set_matrix_layout_attribute(
                    l.0,
                    sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    (&stride) as *const i64 as *const c_void,
                    std::mem::size_of::<i64>(),
                )
                .map_err(fmt)?;
            }
        }
        Ok(l)
    }
}
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once. Errors are ignored: Drop
        // never panics.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// Descriptors and the chosen algorithm of one problem, built once and reused.
struct Plan {
    /// Held while a call sets the descriptor's epilogue pointers and enqueues the product.
    call: Mutex<()>,
    desc: Desc,
    a: Layout,
    b: Layout,
    c: Layout,
    algo: sys::cublasLtMatmulAlgo_t,
    workspace: usize,
}

fn fmt(e: impl std::fmt::Debug) -> String {
    format!("cuBLASLt: {e:?}")
}

/// The cuBLASLt handle, its workspace and the plan cache of one backend.
pub(crate) struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// Every problem seen, with its plan or why cuBLASLt has none (asked once).
    plans: Mutex<HashMap<Problem, Result<Arc<Plan>, String>>>,
}

// SAFETY: the handle is only used under the backend's single stream; cuBLASLt handles may be
// shared between threads (the plans are immutable after creation; the map is locked).
unsafe impl Send for Lt {}
// SAFETY: as above.
unsafe impl Sync for Lt {}
// SAFETY: the plan's descriptors are immutable after creation and only read by cublasLtMatmul.
unsafe impl Send for Plan {}
// SAFETY: as above.
unsafe impl Sync for Plan {}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // SAFETY: created in `new`, destroyed once, after every plan.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Lt {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self, String> {
        let handle = lt::create_handle().map_err(fmt)?;
        // SAFETY: the workspace is scratch memory only cuBLASLt writes.
        let workspace = unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) }.map_err(fmt);
        let workspace = match workspace {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created above.
                let _ = unsafe { lt::destroy_handle(handle) };
                return Err(e);
            }
        };
        Ok(Lt {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// The plan of `p`, built (and cached, with a failure too) on first use.
    fn plan(&self, p: &Problem) -> Result<Arc<Plan>, String> {
        if let Some(plan) = self.plans.lock().unwrap_or_else(|e| e.into_inner()).get(p) {
            return plan.clone();
        }
        let plan = self.build_plan(p);
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*p, plan.clone());
        plan
    }

    /// Whether cuBLASLt has an algorithm for `p` (e.g. for the `BIAS` epilogue at these
    /// alignments).
    pub(crate) fn has_plan(&self, p: &Problem) -> bool {
        self.plan(p).is_ok()
    }

    fn build_plan(&self, p: &Problem) -> Result<Arc<Plan>, String> {
        let compute = if p.ab == DType::F32 && p.tf32 {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        } else {
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
        };
        let desc =
            Desc(lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(fmt)?);
        // cuBLAS "A" is our B, cuBLAS "B" is our A (C^T = op(B)^T op(A)^T).
        let set_op = |attr, t: bool| {
            let v = t as i32;
            // SAFETY: desc is live; v outlives the call.
            unsafe {
                lt::set_matmul_desc_attribute(
                    desc.0,
                    attr,
                    (&v) as *const i32 as *const c_void,
                    std::mem::size_of::<i32>(),
                )
            }
            .map_err(fmt)
        };
        set_op(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            p.trans_b,
        )?;
        set_op(
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            p.trans_a,
        )?;
        if p.epilogue != Epilogue::None {
            use sys::cublasLtMatmulDescAttributes_t as D;
            let epilogue = p.epilogue.raw();
            let ty = cuda_type(p.c).ok_or_else(|| format!("no cuBLASLt type for {}", p.c))?;
            // the aux matrix is cuBLAS's column-major n x m: its leading dimension is our n
            let aux_ld = p.n as i64;
            // SAFETY: desc is live; the values outlive the calls.
            unsafe {
                lt::set_matmul_desc_attribute(
                    desc.0,
                    D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    (&epilogue) as *const sys::cublasLtEpilogue_t as *const c_void,
                    std::mem::size_of::<sys::cublasLtEpilogue_t>(),
                )
                .map_err(fmt)?;
                if p.epilogue.has_bias() {
                    lt::set_matmul_desc_attribute(
                        desc.0,
                        D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                        (&ty) as *const sys::cudaDataType as *const c_void,
                        std::mem::size_of::<sys::cudaDataType>(),
                    )
                    .map_err(fmt)?;
                }
                if p.epilogue.has_aux() {
                    lt::set_matmul_desc_attribute(
                        desc.0,
                        D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                        (&aux_ld) as *const i64 as *const c_void,
                        std::mem::size_of::<i64>(),
                    )
                    .map_err(fmt)?;
                }
            }
        }
        // stored column-major shapes: our B is (n x k) col-major view when !trans_b
        let (br, bc) = if p.trans_b { (p.k, p.n) } else { (p.n, p.k) };
        let (ar, ac) = if p.trans_a { (p.m, p.k) } else { (p.k, p.m) };
        let a = Layout::new(p.ab, br, bc, p.batch, p.stride_b)?;
        let b = Layout::new(p.ab, ar, ac, p.batch, p.stride_a)?;
        let c = Layout::new(p.c, p.n, p.m, p.batch, p.stride_c)?;
        let pref = Pref(lt::create_matmul_pref().map_err(fmt)?);
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: pref is live; the values outlive the calls.
        unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws) as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .map_err(fmt)?;
            // our (A, B, C) pointers are cuBLAS's (B, A, C/D)
            for (attr, al) in [
                (
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                    p.align[1],
                ),
                (
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    p.align[0],
                ),
                (
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    p.align[2],
                ),
                (
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                    p.align[2],
                ),
            ] {
                lt::set_matmul_pref_attribute(
                    pref.0,
                    attr,
                    (&al) as *const u32 as *const c_void,
                    std::mem::size_of::<u32>(),
                )
                .map_err(fmt)?;
            }
        }
        // SAFETY: every descriptor is live.
        let heur = unsafe {
            lt::get_matmul_algo_heuristic(self.handle, desc.0, a.0, b.0, c.0, c.0, pref.0)
        }
        .map_err(|e| format!("no cuBLASLt algorithm for {p:?}: {e:?}"))?;
        Ok(Arc::new(Plan {
            call: Mutex::new(()),
            desc,
            a,
            b,
            c,
            algo: heur.algo,
            workspace: heur.workspaceSize.min(WORKSPACE_BYTES),
        }))
    }

    /// Launches `C = epilogue(alpha op(A) op(B) + beta C)` on `stream` (asynchronous). `a`,
    /// `b`, `c` are device addresses of element 0 of the first batch of each operand; `vecs`
    /// holds exactly the addresses `p.epilogue` takes.
    pub(crate) fn matmul(
        &self,
        stream: &CudaStream,
        p: &Problem,
        (a, b, c): (u64, u64, u64),
        vecs: Vectors,
        alpha: f32,
        beta: f32,
    ) -> Result<(), String> {
        let plan = self.plan(p)?;
        if vecs.bias.is_some() != p.epilogue.has_bias()
            || vecs.aux.is_some() != p.epilogue.has_aux()
        {
            return Err(format!("epilogue pointers {vecs:?} for {p:?}"));
        }
        let _call = plan.call.lock().unwrap_or_else(|e| e.into_inner());
        use sys::cublasLtMatmulDescAttributes_t as D;
        for (attr, ptr) in [
            (D::CUBLASLT_MATMUL_DESC_BIAS_POINTER, vecs.bias),
            (D::CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, vecs.aux),
        ] {
            let Some(ptr) = ptr else { continue };
            // SAFETY: desc is live; the pointer value outlives the call (cuBLASLt copies it),
            // and the lock keeps another call from changing it before this one is enqueued.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc.0,
                    attr,
                    (&ptr) as *const u64 as *const c_void,
                    std::mem::size_of::<u64>(),
                )
            }
            .map_err(fmt)?;
        }
        let (ws, _guard) = self.workspace.device_ptr(stream);
        // SAFETY: the pointers address live device buffers of the sizes the layouts describe
        // (checked by the caller); alpha/beta are host scalars (default pointer mode).
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc.0,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                b as *const c_void,
                plan.a.0,
                a as *const c_void,
                plan.b.0,
                c as *const c_void,
                plan.c.0,
                c as *mut c_void,
                plan.c.0,
                &plan.algo,
                ws as *mut c_void,
                plan.workspace,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(fmt)
    }
}

/// The largest power of two, at most 16, dividing `addr`.
pub(crate) fn alignment(addr: u64) -> u32 {
    let tz = addr.trailing_zeros().min(4);
    1 << tz
}
