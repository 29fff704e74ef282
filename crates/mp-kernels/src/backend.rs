//! The backend trait, the buffer views ops take, and the small argument structs of each op.
//!
//! Shapes are row-major and given in elements. A `View` names `len` elements of a buffer
//! starting at element `offset`; an op checks that every view it gets has the length its
//! shape implies and returns [`KernelError::Shape`](crate::KernelError::Shape) otherwise.

use crate::Result;
use mp_dtype::DType;
pub use mp_dtype::Rounding;

/// A flat device buffer of one dtype.
pub trait DeviceBuffer: Send + Sync {
    /// The storage format of every element.
    fn dtype(&self) -> DType;
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when the buffer holds no element.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A read-only window of `len` elements of a buffer, starting at element `offset`.
#[derive(Debug)]
pub struct View<'a, T: ?Sized> {
    /// The buffer.
    pub buf: &'a T,
    /// First element.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl<T: ?Sized> Clone for View<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: ?Sized> Copy for View<'_, T> {}

/// A writable window of `len` elements of a buffer, starting at element `offset`.
#[derive(Debug)]
pub struct ViewMut<'a, T: ?Sized> {
    /// The buffer.
    pub buf: &'a mut T,
    /// First element.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
}

impl<'a, T: DeviceBuffer + ?Sized> View<'a, T> {
    /// The dtype of the underlying buffer.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
}

impl<'a, T: DeviceBuffer + ?Sized> ViewMut<'a, T> {
    /// The dtype of the underlying buffer.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
    /// Reborrows as a shorter-lived mutable view of the same window.
    pub fn reborrow(&mut self) -> ViewMut<'_, T> {
        ViewMut {
            buf: self.buf,
            offset: self.offset,
            len: self.len,
        }
    }
    /// Reborrows as a read-only view of the same window.
    pub fn as_view(&self) -> View<'_, T> {
        View {
            buf: self.buf,
            offset: self.offset,
            len: self.len,
        }
    }
}

/// Views of whole buffers and of element ranges; implemented for every [`DeviceBuffer`].
pub trait BufferExt: DeviceBuffer {
    /// The whole buffer, read-only.
    fn view(&self) -> View<'_, Self> {
        View {
            buf: self,
            offset: 0,
            len: self.len(),
        }
    }
    /// The whole buffer, writable.
    fn view_mut(&mut self) -> ViewMut<'_, Self> {
        let len = self.len();
        ViewMut {
            buf: self,
            offset: 0,
            len,
        }
    }
    /// `len` elements from `offset`, read-only. Panics if the range is out of bounds (a bug in
    /// the caller, never user input: callers derive ranges from validated shapes).
    fn slice(&self, offset: usize, len: usize) -> View<'_, Self> {
        assert!(
            offset + len <= self.len(),
            "view {offset}+{len} out of {} elements",
            self.len()
        );
        View {
            buf: self,
            offset,
            len,
        }
    }
    /// `len` elements from `offset`, writable. Panics if the range is out of bounds.
    fn slice_mut(&mut self, offset: usize, len: usize) -> ViewMut<'_, Self> {
        assert!(
            offset + len <= self.len(),
            "view {offset}+{len} out of {} elements",
            self.len()
        );
        ViewMut {
            buf: self,
            offset,
            len,
        }
    }
}
impl<T: DeviceBuffer + ?Sized> BufferExt for T {}

/// A (batched) matrix product `C = alpha * op(A) * op(B) + beta * C`, row-major.
///
/// `op(A)` is `m x k` (A stored `k x m` when `trans_a`), `op(B)` is `k x n` (B stored `n x k`
/// when `trans_b`), C is `m x n`. Batch `i` reads A at `i * stride_a`, B at `i * stride_b` and
/// writes C at `i * stride_c` (elements, relative to each view's offset); a stride of 0
/// broadcasts. A and B share a dtype (any); C may be any dtype; accumulation is FP32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    /// Rows of `op(A)` and C.
    pub m: usize,
    /// Columns of `op(B)` and C.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// Number of independent products.
    pub batch: usize,
    /// A is stored transposed (`k x m`).
    pub trans_a: bool,
    /// B is stored transposed (`n x k`).
    pub trans_b: bool,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the existing C (0 overwrites C, 1 accumulates into it).
    pub beta: f32,
    /// Elements between consecutive A matrices.
    pub stride_a: usize,
    /// Elements between consecutive B matrices.
    pub stride_b: usize,
    /// Elements between consecutive C matrices.
    pub stride_c: usize,
}

impl Gemm {
    /// A single, non-transposed, overwriting product `C = A B` of `m x k` by `k x n`.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Gemm {
            m,
            n,
            k,
            batch: 1,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
        }
    }
}

/// Element-wise binary ops (inputs widened to FP32, output rounded to its dtype).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a * b`
    Mul,
}

/// Reductions over the last axis (FP32 accumulation, FP32 result).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Maximum (NaN propagates).
    Max,
    /// Sum of squares.
    SumSq,
}

/// Shape of a causal self-attention: batch `b`, sequence `t`, width `c`, `heads` heads
/// (head size `c / heads`), scores scaled by `1 / sqrt(head size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attention {
    /// Batch size.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Model width (all heads).
    pub c: usize,
    /// Number of heads.
    pub heads: usize,
}

/// One part (q, k, v, or an attention output) of token-major attention rows seen as head-major
/// matrices: element `d` of head `h` at position `i` of batch entry `n` is element
/// `(n * t + i) * row + col + h * hs + d` of the token-major buffer (`b x t x row`) and element
/// `((n * heads + h) * t + i) * hs + d` of the head-major one (`b x heads x t x hs`).
///
/// For HF GPT-2's fused `c_attn` output (`row = 3c`), q, k and v start at `col = 0, c, 2c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Batch size.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Number of heads.
    pub heads: usize,
    /// Head size.
    pub hs: usize,
    /// Elements per token row of the token-major buffer.
    pub row: usize,
    /// First column of the part within a token row.
    pub col: usize,
}

impl Heads {
    /// Part `part` (0 = q, 1 = k, 2 = v) of an attention's `b x t x 3c` qkv rows.
    pub fn qkv(s: &Attention, part: usize) -> Self {
        let hs = s.c / s.heads.max(1);
        Heads {
            b: s.b,
            t: s.t,
            heads: s.heads,
            hs,
            row: 3 * s.c,
            col: part * s.c,
        }
    }

    /// The `b x t x c` rows of an attention's output (or its gradient).
    pub fn out(s: &Attention) -> Self {
        Heads {
            row: s.c,
            col: 0,
            ..Heads::qkv(s, 0)
        }
    }

    /// Elements of the head-major side.
    pub fn head_major_len(&self) -> usize {
        self.b * self.heads * self.t * self.hs
    }

    /// Elements of the token-major side.
    pub fn token_major_len(&self) -> usize {
        self.b * self.t * self.row
    }

    /// Checks that the part fits in a token row and that the two sides have the lengths the
    /// layout implies; the message names what is wrong.
    pub fn check(&self, token_major: usize, head_major: usize) -> std::result::Result<(), String> {
        let part = self
            .heads
            .checked_mul(self.hs)
            .and_then(|w| w.checked_add(self.col));
        if part.is_none_or(|end| end > self.row) {
            return Err(format!(
                "{} heads of {} from column {} do not fit in rows of {}",
                self.heads, self.hs, self.col, self.row
            ));
        }
        let (tm, hm) = (self.token_major_len(), self.head_major_len());
        if token_major != tm {
            return Err(format!(
                "token-major side has {token_major} elements, expected {tm}"
            ));
        }
        if head_major != hm {
            return Err(format!(
                "head-major side has {head_major} elements, expected {hm}"
            ));
        }
        Ok(())
    }
}

/// Hyper-parameters of one fused AdamW step (`torch.optim.AdamW` order: decoupled decay
/// `p *= 1 - lr * wd` first, then moments, bias corrections, `denom = sqrt(v)/sqrt(bc2) + eps`,
/// `p -= lr / bc1 * m / denom`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// 1-based step number used for the bias corrections.
    pub step: u64,
    /// Every gradient is multiplied by this before use: `clip_factor / loss_scale`.
    pub grad_mult: f32,
    /// Rounding of the low-precision copy (and of the parameters themselves when they are
    /// stored low-precision, the pure-BF16 mode).
    pub rounding: Rounding,
}

/// Hyper-parameters of one fused SGD-with-momentum step (`torch.optim.SGD` semantics:
/// `g += wd * p; buf = momentum * buf + (1 - dampening) * g` (the first step sets `buf = g`);
/// `g = nesterov ? g + momentum * buf : buf; p -= lr * g`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 disables the buffer).
    pub momentum: f32,
    /// Dampening of the momentum.
    pub dampening: f32,
    /// L2 weight decay added to the gradient.
    pub weight_decay: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// True on the first step (the momentum buffer is initialised to the gradient).
    pub first_step: bool,
    /// Every gradient is multiplied by this before use: `clip_factor / loss_scale`.
    pub grad_mult: f32,
    /// Rounding of the low-precision copy.
    pub rounding: Rounding,
}

/// Result of the fused gradient check: one read pass over a gradient buffer.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct GradStats {
    /// True when any element is +-inf or NaN.
    pub non_finite: bool,
    /// Sum of squares of `grad * grad_mult` (FP32 accumulation per block, summed in f64);
    /// meaningless when `non_finite`.
    pub sum_sq: f64,
}

/// A compute device: memory and every kernel of a mixed-precision training step.
///
/// All ops are asynchronous on devices that can be: only the `download_*` methods,
/// [`Backend::grad_stats`] and [`Backend::synchronize`] wait for the device.
pub trait Backend: Send + Sync + 'static {
    /// A flat buffer of one dtype on this device.
    type Buffer: DeviceBuffer;
    /// A flat buffer of `u32` indices (token ids, targets) on this device.
    type Index: Send + Sync;

    /// A short human-readable device name for messages (`"cpu"`, `"cuda:0 (NVIDIA H200)"`).
    fn name(&self) -> String;

    // ----- memory -------------------------------------------------------------------------

    /// A zero-filled buffer of `len` elements.
    fn zeros(&self, dtype: DType, len: usize) -> Result<Self::Buffer>;
    /// A buffer of `len` elements for scratch results that every element is written to before
    /// it is read: its contents are unspecified (devices skip the zero fill; the default
    /// returns [`Backend::zeros`]).
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
    /// Waits until every queued op has finished.
    fn synchronize(&self) -> Result<()>;

    /// `dst = src` converted to `dst`'s dtype with `rounding` (same length).
    fn cast(
        &self,
        src: View<'_, Self::Buffer>,
        dst: ViewMut<'_, Self::Buffer>,
        rounding: Rounding,
    ) -> Result<()>;
    /// Every element of `dst` set to `value` (rounded to nearest even).
    fn fill(&self, dst: ViewMut<'_, Self::Buffer>, value: f32) -> Result<()>;

    // ----- dense algebra -------------------------------------------------------------------

    /// `C = alpha * op(A) op(B) + beta * C`, FP32 accumulation (see [`Gemm`]).
    fn gemm(
        &self,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        c: ViewMut<'_, Self::Buffer>,
        spec: &Gemm,
    ) -> Result<()>;

    // ----- pointwise -----------------------------------------------------------------------

    /// `out = a op b`, all of the same length.
    fn binary(
        &self,
        op: BinaryOp,
        a: View<'_, Self::Buffer>,
        b: View<'_, Self::Buffer>,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `out = alpha * x`.
    fn scale(
        &self,
        x: View<'_, Self::Buffer>,
        alpha: f32,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `dst += alpha * x` (gradient accumulation).
    fn axpy(
        &self,
        alpha: f32,
        x: View<'_, Self::Buffer>,
        dst: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `out[r, j] = x[r, j] + bias[j]` for `x` of `rows x bias.len`.
    fn bias_add(
        &self,
        x: View<'_, Self::Buffer>,
        bias: View<'_, Self::Buffer>,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// GELU, tanh approximation (`gelu_new` of HF GPT-2).
    fn gelu(&self, x: View<'_, Self::Buffer>, out: ViewMut<'_, Self::Buffer>) -> Result<()>;
    /// `dx += gelu'(x) * dy`.
    fn gelu_backward(
        &self,
        x: View<'_, Self::Buffer>,
        dy: View<'_, Self::Buffer>,
        dx: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;

    // ----- reductions ----------------------------------------------------------------------

    /// `out[r] = reduce(x[r, ..])` over rows of `cols` elements; `out` has `x.len / cols`
    /// elements of any dtype. A whole-tensor reduction is `cols = x.len`.
    fn reduce_rows(
        &self,
        op: ReduceOp,
        x: View<'_, Self::Buffer>,
        cols: usize,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `out[j] += sum_r x[r, j]` for `x` of `rows x out.len` (bias gradients).
    fn sum_cols_acc(&self, x: View<'_, Self::Buffer>, out: ViewMut<'_, Self::Buffer>)
    -> Result<()>;

    // ----- normalisation and softmax (FP32 internally) ---------------------------------------

    /// Row softmax (or log-softmax when `log`) over rows of `cols`. With `causal`, row `r` sees
    /// only columns `j <= r % cols` (rows are stacked `cols x cols` score blocks) and the rest
    /// are written as 0 (softmax) or -inf (log-softmax).
    fn softmax(
        &self,
        x: View<'_, Self::Buffer>,
        cols: usize,
        causal: bool,
        log: bool,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// Backward of [`Backend::softmax`] from its output `y` (same `cols` and `log`):
    /// `dx += y * (dy - sum_j dy_j y_j)` for softmax, `dx += dy - exp(y) * sum_j dy_j` for
    /// log-softmax; causally masked entries (`y` = 0, resp. -inf) receive and pass no gradient.
    fn softmax_backward(
        &self,
        y: View<'_, Self::Buffer>,
        dy: View<'_, Self::Buffer>,
        cols: usize,
        log: bool,
        dx: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// Layer norm over rows of `c = weight.len` elements:
    /// `out = (x - mean) * rstd * weight + bias`; saves FP32 `mean` and `rstd` per row.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        x: View<'_, Self::Buffer>,
        weight: View<'_, Self::Buffer>,
        bias: View<'_, Self::Buffer>,
        eps: f32,
        out: ViewMut<'_, Self::Buffer>,
        mean: ViewMut<'_, Self::Buffer>,
        rstd: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// Layer-norm backward: `dx += ..`, `dweight += ..`, `dbias += ..`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        dy: View<'_, Self::Buffer>,
        x: View<'_, Self::Buffer>,
        weight: View<'_, Self::Buffer>,
        mean: View<'_, Self::Buffer>,
        rstd: View<'_, Self::Buffer>,
        dx: ViewMut<'_, Self::Buffer>,
        dweight: ViewMut<'_, Self::Buffer>,
        dbias: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;

    // ----- loss ----------------------------------------------------------------------------

    /// Cross-entropy fused with log-softmax: `losses[r] = logsumexp(logits[r]) -
    /// logits[r, targets[r]]` for `logits` of `rows x vocab`; `losses` is FP32 of `rows`.
    fn cross_entropy(
        &self,
        logits: View<'_, Self::Buffer>,
        targets: &Self::Index,
        vocab: usize,
        losses: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `dlogits = (softmax(logits) - onehot(targets)) * dloss` (overwrites; `dloss` is the
    /// gradient of the objective with respect to each row's loss, e.g. `loss_scale / rows`).
    fn cross_entropy_backward(
        &self,
        logits: View<'_, Self::Buffer>,
        targets: &Self::Index,
        vocab: usize,
        dloss: f32,
        dlogits: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;

    // ----- embeddings ----------------------------------------------------------------------

    /// `out[i, :] = table[ids[i], :]` for a `table` of rows of `c` elements.
    fn embedding(
        &self,
        table: View<'_, Self::Buffer>,
        ids: &Self::Index,
        c: usize,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// `dtable[ids[i], :] += dout[i, :]` (scatter-add, FP32 accumulation).
    fn embedding_backward(
        &self,
        dout: View<'_, Self::Buffer>,
        ids: &Self::Index,
        c: usize,
        dtable: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;

    // ----- attention -----------------------------------------------------------------------

    /// Causal multi-head self-attention. `qkv` is `b x t x 3c` (q, k, v concatenated, heads
    /// interleaved as in HF GPT-2's `c_attn` output); `out` is `b x t x c`; `probs` receives
    /// the softmax probabilities `b x heads x t x t` saved for the backward pass.
    ///
    /// The default runs [`crate::gemm_attention::forward`] on this backend's own GEMM, softmax
    /// and head layout ops; a backend with a fused kernel overrides it.
    fn attention(
        &self,
        qkv: View<'_, Self::Buffer>,
        shape: &Attention,
        out: ViewMut<'_, Self::Buffer>,
        probs: ViewMut<'_, Self::Buffer>,
    ) -> Result<()> {
        crate::gemm_attention::forward(self, qkv, shape, out, probs)
    }
    /// Attention backward: `dqkv += ..` from `dout`, the inputs and the saved `probs`
    /// (default: [`crate::gemm_attention::backward`]).
    fn attention_backward(
        &self,
        dout: View<'_, Self::Buffer>,
        qkv: View<'_, Self::Buffer>,
        probs: View<'_, Self::Buffer>,
        shape: &Attention,
        dqkv: ViewMut<'_, Self::Buffer>,
    ) -> Result<()> {
        crate::gemm_attention::backward(self, dout, qkv, probs, shape, dqkv)
    }
    /// Gathers one part of token-major attention rows into head-major order (see [`Heads`]),
    /// rounded to `dst`'s dtype: `src` is `b x t x row`, `dst` is `b x heads x t x hs`.
    fn split_heads(
        &self,
        src: View<'_, Self::Buffer>,
        layout: &Heads,
        dst: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
    /// Scatters head-major `src` (`b x heads x t x hs`) into one part of token-major rows
    /// `dst` (`b x t x row`), overwriting it or, with `accumulate`, adding to it (FP32, one
    /// rounding to `dst`'s dtype). Elements of `dst` outside the part are left as they are.
    fn merge_heads(
        &self,
        src: View<'_, Self::Buffer>,
        layout: &Heads,
        dst: ViewMut<'_, Self::Buffer>,
        accumulate: bool,
    ) -> Result<()>;

    // ----- fused scaler and optimizer passes -----------------------------------------------

    /// One read pass over `grads`: whether any is non-finite, and the sum of squares of
    /// `grad * grad_mult` (the global norm of unscaled gradients, squared). Waits for the
    /// device: this is the one host read of a step.
    fn grad_stats(&self, grads: View<'_, Self::Buffer>, grad_mult: f32) -> Result<GradStats>;

    /// One fused AdamW pass over a flat parameter range: reads `grads` (any dtype) times
    /// `hp.grad_mult`, updates the FP32 moments `m`, `v` and `params`, and writes `model`
    /// (when given) as `params` rounded to its dtype with `hp.rounding`. `params` is FP32
    /// master weights, or BF16/F16 for the pure low-precision mode (then rounded with
    /// `hp.rounding`).
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        params: ViewMut<'_, Self::Buffer>,
        grads: View<'_, Self::Buffer>,
        m: ViewMut<'_, Self::Buffer>,
        v: ViewMut<'_, Self::Buffer>,
        model: Option<ViewMut<'_, Self::Buffer>>,
        hp: &AdamW,
    ) -> Result<()>;

    /// One fused SGD-with-momentum pass (see [`Sgd`]); `momentum_buf` is FP32.
    fn sgd(
        &self,
        params: ViewMut<'_, Self::Buffer>,
        grads: View<'_, Self::Buffer>,
        momentum_buf: ViewMut<'_, Self::Buffer>,
        model: Option<ViewMut<'_, Self::Buffer>>,
        hp: &Sgd,
    ) -> Result<()>;
}
