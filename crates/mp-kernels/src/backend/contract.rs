//! Op contracts: the argument checks and derived scalars of every backend op, written once.
//!
//! Every backend calls the op's contract before it launches anything, so each op refuses the
//! same bad call with the same [`KernelError`] on every device (only the device name in the
//! message differs), and a backend's own code only launches. A contract checks that every
//! view lies inside its buffer, that lengths fit the op's shape, that dtypes are the ones the
//! op accepts, and returns what the kernels derive from the arguments (row counts, AdamW's
//! bias corrections).
//!
//! The contracts are public so that a backend outside this crate can call them too.

use super::{AdamW, Attention, DeviceBuffer, Gemm, Heads, MemoryOps, Sgd, View, ViewMut};
use crate::{KernelError, Result};
use mp_dtype::DType;

/// The checks of one op on one backend: builds its errors with the op and device names.
pub struct Check<'b, B: ?Sized> {
    be: &'b B,
    op: &'static str,
}

impl<'b, B: MemoryOps + ?Sized> Check<'b, B> {
    /// The checks of `op` on `be`.
    pub fn new(be: &'b B, op: &'static str) -> Self {
        Check { be, op }
    }

    /// A [`KernelError::Shape`] of this op.
    pub fn shape_err(&self, msg: impl Into<String>) -> KernelError {
        KernelError::Shape {
            op: self.op,
            device: self.be.name(),
            msg: msg.into(),
        }
    }

    /// A [`KernelError::UnsupportedDType`] of this op.
    pub fn dtype_err(&self, dtype: DType, detail: &str) -> KernelError {
        KernelError::UnsupportedDType {
            op: self.op,
            device: self.be.name(),
            dtype,
            detail: if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            },
        }
    }

    /// Fails unless `got == want`, naming the argument.
    pub fn len(&self, name: &str, got: usize, want: usize) -> Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(self.shape_err(format!("{name} has {got} elements, expected {want}")))
        }
    }

    /// The number of rows of `cols` elements in `len` (`what` names the row length in the
    /// message, e.g. `"bias length "`).
    pub fn rows(&self, name: &str, len: usize, cols: usize, what: &str) -> Result<usize> {
        if cols == 0 || !len.is_multiple_of(cols) {
            return Err(self.shape_err(format!(
                "{name} has {len} elements, not a whole number of rows of {what}{cols}"
            )));
        }
        Ok(len / cols)
    }

    /// Fails unless the dtype is `want`.
    pub fn dtype(&self, name: &str, got: DType, want: DType) -> Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(self.dtype_err(got, &format!("{name} must be {want}")))
        }
    }

    /// `a * b`, or a shape error when it overflows `usize`.
    pub fn mul(&self, a: usize, b: usize) -> Result<usize> {
        a.checked_mul(b)
            .ok_or_else(|| self.shape_err(format!("{a} x {b} elements overflow")))
    }

    /// Fails unless the window `offset..offset + len` lies inside a buffer of `buf_len`.
    pub fn range(&self, name: &str, offset: usize, len: usize, buf_len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= buf_len => Ok(()),
            _ => Err(self.shape_err(format!(
                "{name}: view {offset}+{len} is outside its buffer of {buf_len} elements"
            ))),
        }
    }

    /// Fails unless the view lies inside its buffer.
    pub fn view<T: DeviceBuffer + ?Sized>(&self, name: &str, v: &View<'_, T>) -> Result<()> {
        self.range(name, v.offset, v.len, v.buf.len())
    }

    /// Fails unless the writable view lies inside its buffer.
    pub fn view_mut<T: DeviceBuffer + ?Sized>(&self, name: &str, v: &ViewMut<'_, T>) -> Result<()> {
        self.range(name, v.offset, v.len, v.buf.len())
    }

    /// Fails unless every index is below `limit`, naming the first offender.
    pub fn ids(&self, name: &str, ids: &[u32], limit: usize) -> Result<()> {
        match ids.iter().position(|&i| i as usize >= limit) {
            None => Ok(()),
            Some(p) => Err(self.shape_err(format!(
                "{name}[{p}] = {} is out of range (must be < {limit})",
                ids[p]
            ))),
        }
    }
}

type V<'a, B> = View<'a, <B as MemoryOps>::Buffer>;
type M<'a, B> = ViewMut<'a, <B as MemoryOps>::Buffer>;

/// Element-wise ops over views of one length: every view inside its buffer, every length
/// equal to the first one's; returns that length.
pub fn same_len<B: MemoryOps + ?Sized>(
    be: &B,
    op: &'static str,
    inputs: &[(&str, &V<'_, B>)],
    out: (&str, &M<'_, B>),
) -> Result<usize> {
    let c = Check::new(be, op);
    for (name, v) in inputs {
        c.view(name, v)?;
    }
    c.view_mut(out.0, out.1)?;
    let n = inputs.first().map_or(out.1.len, |(_, v)| v.len);
    for (name, v) in inputs.iter().skip(1) {
        c.len(name, v.len, n)?;
    }
    c.len(out.0, out.1.len, n)?;
    Ok(n)
}

/// `x` of rows of `cols` (`what` names the row length), every view in bounds; returns rows.
pub fn rows<B: MemoryOps + ?Sized>(
    be: &B,
    op: &'static str,
    x: (&str, &V<'_, B>),
    cols: usize,
    what: &str,
) -> Result<usize> {
    let c = Check::new(be, op);
    c.view(x.0, x.1)?;
    c.rows(x.0, x.1.len, cols, what)
}

/// [`super::PointwiseOps::swiglu`] (without `dy`) and its backward (with it): `gu` of rows of
/// `2f`, `out` (the forward's output, or `dy` and the backward's `dgu`) matching; returns
/// the rows.
pub fn swiglu<B: MemoryOps + ?Sized>(
    be: &B,
    op: &'static str,
    gu: &V<'_, B>,
    dy: Option<&V<'_, B>>,
    f: usize,
    out: &M<'_, B>,
) -> Result<usize> {
    let c = Check::new(be, op);
    c.view("gu", gu)?;
    c.view_mut("out", out)?;
    if f == 0 {
        return Err(c.shape_err("f (the width of each half) must be positive"));
    }
    let rows = c.rows("gu", gu.len, c.mul(2, f)?, "2 f = ")?;
    let half = c.mul(rows, f)?;
    match dy {
        None => c.len("out", out.len, half)?,
        Some(dy) => {
            c.view("dy", dy)?;
            c.len("dy", dy.len, half)?;
            c.len("dgu", out.len, gu.len)?;
        }
    }
    Ok(rows)
}

/// [`super::GemmOps::gemm`]: A and B share a dtype, the operands hold what `spec` reads and
/// writes, batched outputs do not overlap. Returns C's span (0: nothing to do).
pub fn gemm<B: MemoryOps + ?Sized>(
    be: &B,
    a: &V<'_, B>,
    b: &V<'_, B>,
    cv: &M<'_, B>,
    spec: &Gemm,
) -> Result<usize> {
    let c = Check::new(be, "gemm");
    c.view("A", a)?;
    c.view("B", b)?;
    c.view_mut("C", cv)?;
    let Gemm { m, n, k, batch, .. } = *spec;
    if a.dtype() != b.dtype() {
        return Err(c.dtype_err(
            b.dtype(),
            &format!("A and B must share a dtype (A is {})", a.dtype()),
        ));
    }
    let span = |stride: usize, size: usize| -> Result<usize> {
        if batch == 0 || size == 0 {
            return Ok(0);
        }
        c.mul(batch - 1, stride)?
            .checked_add(size)
            .ok_or_else(|| c.shape_err("operand span overflows"))
    };
    let (size_a, size_b, size_c) = (c.mul(m, k)?, c.mul(k, n)?, c.mul(m, n)?);
    let spans = [
        ("A", a.len, span(spec.stride_a, size_a)?),
        ("B", b.len, span(spec.stride_b, size_b)?),
        ("C", cv.len, span(spec.stride_c, size_c)?),
    ];
    for (name, have, need) in spans {
        if have < need {
            return Err(c.shape_err(format!(
                "{name} has {have} elements but m={m} n={n} k={k} batch={batch} with its \
                 stride needs {need}"
            )));
        }
    }
    if batch > 1 && spec.stride_c < size_c && size_c > 0 {
        return Err(c.shape_err(format!(
            "stride_c {} < m*n = {size_c}: batch outputs would overlap",
            spec.stride_c
        )));
    }
    Ok(spans[2].2)
}

/// [`super::PointwiseOps::bias_add`]: `x` and `out` of rows of `bias.len`; returns rows.
pub fn bias_add<B: MemoryOps + ?Sized>(
    be: &B,
    x: &V<'_, B>,
    bias: &V<'_, B>,
    out: &M<'_, B>,
) -> Result<usize> {
    let c = Check::new(be, "bias_add");
    c.view("bias", bias)?;
    c.view_mut("out", out)?;
    let rows = rows(be, "bias_add", ("x", x), bias.len, "bias length ")?;
    c.len("out", out.len, x.len)?;
    Ok(rows)
}

/// [`super::PointwiseOps::mul_broadcast`]: `x` and `out` of `rows x cols`, where `cols` is
/// the length of `col_scale` (or `rows` that of `row_scale`); returns `(rows, cols)`.
pub fn mul_broadcast<B: MemoryOps + ?Sized>(
    be: &B,
    x: &V<'_, B>,
    row_scale: Option<&V<'_, B>>,
    col_scale: Option<&V<'_, B>>,
    out: &M<'_, B>,
) -> Result<(usize, usize)> {
    let c = Check::new(be, "mul_broadcast");
    c.view("x", x)?;
    c.view_mut("out", out)?;
    c.len("out", out.len, x.len)?;
    let (rows, cols) = match (row_scale, col_scale) {
        (_, Some(cs)) => {
            c.view("col_scale", cs)?;
            (c.rows("x", x.len, cs.len, "col_scale length ")?, cs.len)
        }
        (Some(rs), None) => {
            c.view("row_scale", rs)?;
            let cols = x.len.checked_div(rs.len).unwrap_or(0);
            (rs.len, cols)
        }
        (None, None) => (1, x.len),
    };
    if let Some(rs) = row_scale {
        c.view("row_scale", rs)?;
        if c.mul(rs.len, cols)? != x.len {
            return Err(c.shape_err(format!(
                "x has {} elements, not {} rows (row_scale length) of {cols}",
                x.len, rs.len
            )));
        }
    }
    Ok((rows, cols))
}

/// [`super::PointwiseOps::dropout`]: `0 <= p < 1`, `x` and `out` of one length; returns the
/// keep threshold (an element is kept when its 32 random bits are `>=` it) and the scale
/// `1 / (1 - p)` of kept elements.
pub fn dropout<B: MemoryOps + ?Sized>(
    be: &B,
    x: &V<'_, B>,
    p: f32,
    out: &M<'_, B>,
) -> Result<(u32, f32)> {
    let c = Check::new(be, "dropout");
    same_len(be, "dropout", &[("x", x)], ("out", out))?;
    if !(0.0..1.0).contains(&p) {
        return Err(c.shape_err(format!("drop probability {p} is outside [0, 1)")));
    }
    Ok(dropout_threshold(p))
}

/// The keep threshold and scale of a drop probability `p` in `[0, 1)` (see [`dropout`]).
pub fn dropout_threshold(p: f32) -> (u32, f32) {
    let t = (f64::from(p) * 4_294_967_296.0)
        .round()
        .min(u32::MAX as f64) as u32;
    (t, 1.0 / (1.0 - p))
}

/// [`super::RowOps::reduce_rows`]: `x` of rows of `cols`, `out` of one element per row;
/// returns rows.
pub fn reduce_rows<B: MemoryOps + ?Sized>(
    be: &B,
    x: &V<'_, B>,
    cols: usize,
    out: &M<'_, B>,
) -> Result<usize> {
    let c = Check::new(be, "reduce_rows");
    c.view_mut("out", out)?;
    let rows = rows(be, "reduce_rows", ("x", x), cols, "")?;
    c.len("out", out.len, rows)?;
    Ok(rows)
}

/// [`super::RowOps::sum_cols_acc`]: `x` of rows of `out.len`; returns rows.
pub fn sum_cols<B: MemoryOps + ?Sized>(be: &B, x: &V<'_, B>, out: &M<'_, B>) -> Result<usize> {
    Check::new(be, "sum_cols_acc").view_mut("out", out)?;
    rows(be, "sum_cols_acc", ("x", x), out.len, "out length ")
}

/// [`super::RowOps::softmax`]: `x` of rows of `cols`, `out` as long; returns rows.
pub fn softmax<B: MemoryOps + ?Sized>(
    be: &B,
    x: &V<'_, B>,
    cols: usize,
    out: &M<'_, B>,
) -> Result<usize> {
    let c = Check::new(be, "softmax");
    c.view_mut("out", out)?;
    let rows = rows(be, "softmax", ("x", x), cols, "")?;
    c.len("out", out.len, x.len)?;
    Ok(rows)
}

/// [`super::RowOps::softmax_backward`]: `y`, `dy` and `dx` of one length, rows of `cols`;
/// returns rows.
pub fn softmax_backward<B: MemoryOps + ?Sized>(
    be: &B,
    y: &V<'_, B>,
    dy: &V<'_, B>,
    cols: usize,
    dx: &M<'_, B>,
) -> Result<usize> {
    const OP: &str = "softmax_backward";
    let n = same_len(be, OP, &[("y", y), ("dy", dy)], ("dx", dx))?;
    Check::new(be, OP).rows("y", n, cols, "")
}

/// One argument of a norm, as its contract sees it.
struct Arg<'s> {
    name: &'s str,
    offset: usize,
    len: usize,
    buf_len: usize,
    dtype: DType,
}

fn arg<'s, T: DeviceBuffer + ?Sized>(name: &'s str, v: &View<'_, T>) -> Arg<'s> {
    Arg {
        name,
        offset: v.offset,
        len: v.len,
        buf_len: v.buf.len(),
        dtype: v.dtype(),
    }
}

fn arg_mut<'s, T: DeviceBuffer + ?Sized>(name: &'s str, v: &ViewMut<'_, T>) -> Arg<'s> {
    Arg {
        name,
        offset: v.offset,
        len: v.len,
        buf_len: v.buf.len(),
        dtype: v.dtype(),
    }
}

/// The shape every norm shares: `x` of rows of `c = weight.len`, each of `like_x` as long as
/// `x`, each of `stats` FP32 with one element per row, each of `like_w` as long as `weight`;
/// every view inside its buffer. Returns `(rows, c)`.
fn norm<B: MemoryOps + ?Sized>(
    be: &B,
    op: &'static str,
    (x, weight): (Arg<'_>, Arg<'_>),
    like_x: &[Arg<'_>],
    stats: &[Arg<'_>],
    like_w: &[Arg<'_>],
) -> Result<(usize, usize)> {
    let ck = Check::new(be, op);
    let all = [&x, &weight]
        .into_iter()
        .chain(like_x)
        .chain(stats)
        .chain(like_w);
    for a in all {
        ck.range(a.name, a.offset, a.len, a.buf_len)?;
    }
    let c = weight.len;
    let rows = ck.rows(x.name, x.len, c, "weight length ")?;
    for a in like_w {
        ck.len(a.name, a.len, c)?;
    }
    for a in like_x {
        ck.len(a.name, a.len, x.len)?;
    }
    for a in stats {
        ck.len(a.name, a.len, rows)?;
        ck.dtype(a.name, a.dtype, DType::F32)?;
    }
    Ok((rows, c))
}

/// [`super::NormOps::layer_norm`]: `x`/`out` of rows of `c = weight.len`, `bias` of `c`, FP32
/// `mean`/`rstd` of one per row; returns `(rows, c)`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm<B: MemoryOps + ?Sized>(
    be: &B,
    x: &V<'_, B>,
    weight: &V<'_, B>,
    bias: &V<'_, B>,
    out: &M<'_, B>,
    mean: &M<'_, B>,
    rstd: &M<'_, B>,
) -> Result<(usize, usize)> {
    norm(
        be,
        "layer_norm",
        (arg("x", x), arg("weight", weight)),
        &[arg_mut("out", out)],
        &[arg_mut("mean", mean), arg_mut("rstd", rstd)],
        &[arg("bias", bias)],
    )
}

/// [`super::NormOps::layer_norm_backward`]: as the forward, with `dy`/`dx` like `x` and
/// `dweight`/`dbias` like `weight`; returns `(rows, c)`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward<B: MemoryOps + ?Sized>(
    be: &B,
    dy: &V<'_, B>,
    x: &V<'_, B>,
    weight: &V<'_, B>,
    mean: &V<'_, B>,
    rstd: &V<'_, B>,
    dx: &M<'_, B>,
    dweight: &M<'_, B>,
    dbias: &M<'_, B>,
) -> Result<(usize, usize)> {
    norm(
        be,
        "layer_norm_backward",
        (arg("x", x), arg("weight", weight)),
        &[arg("dy", dy), arg_mut("dx", dx)],
        &[arg("mean", mean), arg("rstd", rstd)],
        &[arg_mut("dweight", dweight), arg_mut("dbias", dbias)],
    )
}

/// [`super::NormOps::rms_norm`]: `x`/`out` of rows of `c = weight.len`, FP32 `rstd` of one
/// per row, `eps >= 0`; returns `(rows, c)`.
pub fn rms_norm<B: MemoryOps + ?Sized>(
    be: &B,
    x: &V<'_, B>,
    weight: &V<'_, B>,
    eps: f32,
    out: &M<'_, B>,
    rstd: &M<'_, B>,
) -> Result<(usize, usize)> {
    const OP: &str = "rms_norm";
    let dims = norm(
        be,
        OP,
        (arg("x", x), arg("weight", weight)),
        &[arg_mut("out", out)],
        &[arg_mut("rstd", rstd)],
        &[],
    )?;
    if eps.is_nan() || eps < 0.0 {
        return Err(Check::new(be, OP).shape_err(format!("eps = {eps} must be >= 0")));
    }
    Ok(dims)
}

/// [`super::NormOps::rms_norm_backward`]: as the forward, with `dy`/`dx` like `x` and
/// `dweight` like `weight`; returns `(rows, c)`.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_backward<B: MemoryOps + ?Sized>(
    be: &B,
    dy: &V<'_, B>,
    x: &V<'_, B>,
    weight: &V<'_, B>,
    rstd: &V<'_, B>,
    dx: &M<'_, B>,
    dweight: &M<'_, B>,
) -> Result<(usize, usize)> {
    norm(
        be,
        "rms_norm_backward",
        (arg("x", x), arg("weight", weight)),
        &[arg("dy", dy), arg_mut("dx", dx)],
        &[arg("rstd", rstd)],
        &[arg_mut("dweight", dweight)],
    )
}

/// Cross-entropy: `logits` of rows of `vocab`, one target per row, each below `vocab`;
/// returns rows.
pub fn cross_entropy_rows<B: MemoryOps + ?Sized>(
    be: &B,
    op: &'static str,
    logits: &V<'_, B>,
    targets: &[u32],
    vocab: usize,
) -> Result<usize> {
    let ck = Check::new(be, op);
    ck.view("logits", logits)?;
    if vocab == 0 || !logits.len.is_multiple_of(vocab) {
        return Err(ck.shape_err(format!(
            "logits have {} elements, not a whole number of rows of vocab {vocab}",
            logits.len
        )));
    }
    let rows = logits.len / vocab;
    ck.len("targets", targets.len(), rows)?;
    ck.ids("targets", targets, vocab)?;
    Ok(rows)
}

/// [`super::LossOps::cross_entropy`]: see [`cross_entropy_rows`]; FP32 `losses` of one per
/// row. Returns rows.
pub fn cross_entropy<B: MemoryOps + ?Sized>(
    be: &B,
    logits: &V<'_, B>,
    targets: &[u32],
    vocab: usize,
    losses: &M<'_, B>,
) -> Result<usize> {
    const OP: &str = "cross_entropy";
    let rows = cross_entropy_rows(be, OP, logits, targets, vocab)?;
    let ck = Check::new(be, OP);
    ck.view_mut("losses", losses)?;
    ck.len("losses", losses.len, rows)?;
    ck.dtype("losses", losses.dtype(), DType::F32)?;
    Ok(rows)
}

/// [`super::LossOps::cross_entropy_backward`]: see [`cross_entropy_rows`]; `dlogits` like
/// `logits`. Returns rows.
pub fn cross_entropy_backward<B: MemoryOps + ?Sized>(
    be: &B,
    logits: &V<'_, B>,
    targets: &[u32],
    vocab: usize,
    dlogits: &M<'_, B>,
) -> Result<usize> {
    const OP: &str = "cross_entropy_backward";
    let rows = cross_entropy_rows(be, OP, logits, targets, vocab)?;
    let ck = Check::new(be, OP);
    ck.view_mut("dlogits", dlogits)?;
    ck.len("dlogits", dlogits.len, logits.len)?;
    Ok(rows)
}

/// [`super::LossOps::cross_entropy_fused`]: as [`cross_entropy`] and
/// [`cross_entropy_backward`] together. Returns rows.
pub fn cross_entropy_fused<B: MemoryOps + ?Sized>(
    be: &B,
    logits: &V<'_, B>,
    targets: &[u32],
    vocab: usize,
    losses: &M<'_, B>,
    dlogits: &M<'_, B>,
) -> Result<usize> {
    const OP: &str = "cross_entropy_fused";
    let rows = cross_entropy_rows(be, OP, logits, targets, vocab)?;
    let ck = Check::new(be, OP);
    ck.view_mut("losses", losses)?;
    ck.len("losses", losses.len, rows)?;
    ck.dtype("losses", losses.dtype(), DType::F32)?;
    ck.view_mut("dlogits", dlogits)?;
    ck.len("dlogits", dlogits.len, logits.len)?;
    Ok(rows)
}

/// The shape both embedding ops share: `table_len` a whole number of rows of `c`,
/// `c` elements per id in `rows_len`, every id a row of the table; returns the row count.
fn embedding_rows<B: MemoryOps + ?Sized>(
    ck: &Check<'_, B>,
    table_len: usize,
    ids: &[u32],
    c: usize,
    rows_len: usize,
) -> Result<usize> {
    if c == 0 || !table_len.is_multiple_of(c) {
        return Err(ck.shape_err(format!(
            "table has {table_len} elements, not a whole number of rows of {c}"
        )));
    }
    let vocab = table_len / c;
    ck.len("positions", rows_len, ck.mul(ids.len(), c)?)?;
    ck.ids("ids", ids, vocab)?;
    Ok(vocab)
}

/// [`super::EmbeddingOps::embedding`]: views in bounds, `table` of rows of `c`, `out` of `c`
/// elements per id, every id a row; returns the table's row count.
pub fn embedding<B: MemoryOps + ?Sized>(
    be: &B,
    table: &V<'_, B>,
    ids: &[u32],
    c: usize,
    out: &M<'_, B>,
) -> Result<usize> {
    let ck = Check::new(be, "embedding");
    ck.view("table", table)?;
    ck.view_mut("out", out)?;
    embedding_rows(&ck, table.len, ids, c, out.len)
}

/// [`super::EmbeddingOps::embedding_backward`]: as [`embedding`], with `dout` like `out` and
/// `dtable` like `table`.
pub fn embedding_backward<B: MemoryOps + ?Sized>(
    be: &B,
    dout: &V<'_, B>,
    ids: &[u32],
    c: usize,
    dtable: &M<'_, B>,
) -> Result<usize> {
    let ck = Check::new(be, "embedding_backward");
    ck.view("dout", dout)?;
    ck.view_mut("dtable", dtable)?;
    embedding_rows(&ck, dtable.len, ids, c, dout.len)
}

/// [`super::LayoutOps::split_heads`] (`merge = false`: token-major `src`, head-major `dst`)
/// and [`super::LayoutOps::merge_heads`] (`merge`: the reverse): both views in bounds, the
/// part fits in a token row and both sides have the lengths the layout implies.
pub fn heads<B: MemoryOps + ?Sized>(
    be: &B,
    layout: &Heads,
    src: &V<'_, B>,
    dst: &M<'_, B>,
    merge: bool,
) -> Result<()> {
    let ck = Check::new(be, if merge { "merge_heads" } else { "split_heads" });
    ck.view("src", src)?;
    ck.view_mut("dst", dst)?;
    let (token_major, head_major) = if merge {
        (dst.len, src.len)
    } else {
        (src.len, dst.len)
    };
    layout
        .check(token_major, head_major)
        .map_err(|m| ck.shape_err(m))
}

/// [`super::LayoutOps::rope`]: an even, non-zero head size, `x` and `out` of `rows x heads x
/// head_dim`, `cos` and `sin` FP32 `t x head_dim / 2`, `rows` a whole number of sequences of
/// `t`.
pub fn rope<B: MemoryOps + ?Sized>(
    be: &B,
    x: &V<'_, B>,
    cos: &V<'_, B>,
    sin: &V<'_, B>,
    s: &super::Rope,
    out: &M<'_, B>,
) -> Result<()> {
    let ck = Check::new(be, "rope");
    for (name, v) in [("x", x), ("cos", cos), ("sin", sin)] {
        ck.view(name, v)?;
    }
    ck.view_mut("out", out)?;
    if s.head_dim == 0 || !s.head_dim.is_multiple_of(2) {
        return Err(ck.shape_err(format!("head_dim {} must be even and non-zero", s.head_dim)));
    }
    if s.t == 0 || !s.rows.is_multiple_of(s.t) {
        return Err(ck.shape_err(format!(
            "{} rows are not a whole number of sequences of {} tokens",
            s.rows, s.t
        )));
    }
    if s.rotated > s.heads {
        return Err(ck.shape_err(format!(
            "{} rotated heads of {} per row",
            s.rotated, s.heads
        )));
    }
    let n = ck.mul(ck.mul(s.rows, s.heads)?, s.head_dim)?;
    ck.len("x", x.len, n)?;
    ck.len("out", out.len, n)?;
    let table = ck.mul(s.t, s.head_dim / 2)?;
    for (name, v) in [("cos", cos), ("sin", sin)] {
        ck.len(name, v.len, table)?;
        ck.dtype(name, v.dtype(), DType::F32)?;
    }
    Ok(())
}

/// [`super::GemmOps::gemm_bias`]: what [`gemm()`] checks, plus one product (`batch` 1) that
/// overwrites C (`beta` 0) and a bias of `n` elements. Returns C's span (0: nothing to do).
pub fn gemm_bias<B: MemoryOps + ?Sized>(
    be: &B,
    a: &V<'_, B>,
    b: &V<'_, B>,
    bias: &V<'_, B>,
    cv: &M<'_, B>,
    spec: &Gemm,
) -> Result<usize> {
    let span = gemm(be, a, b, cv, spec)?;
    let c = Check::new(be, "gemm_bias");
    c.view("bias", bias)?;
    if spec.batch != 1 || spec.beta != 0.0 {
        return Err(c.shape_err(format!(
            "batch {} and beta {}: a biased product is one product that overwrites C",
            spec.batch, spec.beta
        )));
    }
    c.len("bias", bias.len, spec.n)?;
    Ok(span)
}

/// [`super::GemmOps::gemm_bias_gelu`]: what [`gemm_bias`] checks (`pre` as C), and `out`
/// of `m x n` elements of `pre`'s dtype. Returns C's span (0: nothing to do).
pub fn gemm_bias_gelu<B: MemoryOps + ?Sized>(
    be: &B,
    a: &V<'_, B>,
    b: &V<'_, B>,
    bias: &V<'_, B>,
    pre: &M<'_, B>,
    out: &M<'_, B>,
    spec: &Gemm,
) -> Result<usize> {
    let span = gemm_bias(be, a, b, bias, pre, spec)?;
    let c = Check::new(be, "gemm_bias_gelu");
    c.view_mut("out", out)?;
    c.len("pre", pre.len, c.mul(spec.m, spec.n)?)?;
    c.len("out", out.len, c.mul(spec.m, spec.n)?)?;
    c.dtype("out", out.dtype(), pre.dtype())?;
    Ok(span)
}

/// [`super::GemmOps::gemm_dgelu`]: what [`gemm()`] checks (`dx` as C), one product that does
/// not read C (`batch` 1, `beta` 0), `pre` and `dx` of `m x n`. Returns C's span (0: nothing
/// to do).
pub fn gemm_dgelu<B: MemoryOps + ?Sized>(
    be: &B,
    a: &V<'_, B>,
    b: &V<'_, B>,
    pre: &V<'_, B>,
    dx: &M<'_, B>,
    spec: &Gemm,
) -> Result<usize> {
    let span = gemm(be, a, b, dx, spec)?;
    let c = Check::new(be, "gemm_dgelu");
    c.view("pre", pre)?;
    if spec.batch != 1 || spec.beta != 0.0 {
        return Err(c.shape_err(format!(
            "batch {} and beta {}: the GELU gradient's product is one product that does not \
             read C",
            spec.batch, spec.beta
        )));
    }
    c.len("pre", pre.len, c.mul(spec.m, spec.n)?)?;
    c.len("dx", dx.len, c.mul(spec.m, spec.n)?)?;
    Ok(span)
}

/// [`super::GemmOps::gemm_bias_grad`]: what [`gemm()`] checks, one product (`batch` 1), the
/// operand `of` names stored `k`-major (A `trans_a`, B not `trans_b`) and `dbias` of its
/// `m` (A) or `n` (B) elements. Returns C's span (0: nothing to do).
pub fn gemm_bias_grad<B: MemoryOps + ?Sized>(
    be: &B,
    a: &V<'_, B>,
    b: &V<'_, B>,
    cv: &M<'_, B>,
    dbias: &M<'_, B>,
    of: super::gemm::BiasGradOf,
    spec: &Gemm,
) -> Result<usize> {
    use super::gemm::BiasGradOf;
    let span = gemm(be, a, b, cv, spec)?;
    let c = Check::new(be, "gemm_bias_grad");
    c.view_mut("dbias", dbias)?;
    if spec.batch != 1 {
        return Err(c.shape_err(format!(
            "batch {}: a bias gradient comes from one product",
            spec.batch
        )));
    }
    let (k_major, len) = match of {
        BiasGradOf::A => (spec.trans_a, spec.m),
        BiasGradOf::B => (!spec.trans_b, spec.n),
    };
    if !k_major {
        return Err(c.shape_err(format!(
            "the bias gradient of {of:?} needs it stored k-major (trans_a {}, trans_b {})",
            spec.trans_a, spec.trans_b
        )));
    }
    c.len("dbias", dbias.len, len)?;
    Ok(span)
}

/// Attention: `c` divisible by `heads`, `heads` by `kv_heads`, `qkv` of
/// `b x t x (c + 2 kv_heads hs)`, `out` of `b x t x c`, `lse` of `b x heads x t` (the named
/// views' lengths); returns the head size.
pub fn attention<B: MemoryOps + ?Sized>(
    be: &B,
    op: &'static str,
    s: &Attention,
    lens: &[(&str, usize, AttentionPart)],
) -> Result<usize> {
    let ck = Check::new(be, op);
    if s.heads == 0 || !s.c.is_multiple_of(s.heads) {
        return Err(ck.shape_err(format!(
            "width c={} is not divisible by heads={}",
            s.c, s.heads
        )));
    }
    if s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
        return Err(ck.shape_err(format!(
            "heads={} is not divisible by kv_heads={}",
            s.heads, s.kv_heads
        )));
    }
    let bt = ck.mul(s.b, s.t)?;
    for &(name, got, part) in lens {
        let want = match part {
            AttentionPart::Qkv => ck.mul(bt, s.qkv_row())?,
            AttentionPart::Out => ck.mul(bt, s.c)?,
            AttentionPart::Lse => ck.mul(bt, s.heads)?,
        };
        ck.len(name, got, want)?;
    }
    Ok(s.head_size())
}

/// Which tensor of an attention a length belongs to (see [`attention`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPart {
    /// `b x t x (c + 2 kv_heads hs)`.
    Qkv,
    /// `b x t x c`.
    Out,
    /// `b x heads x t`, FP32.
    Lse,
}

/// The fused optimizer passes' views: `params` F32 (or BF16/F16 in the pure low-precision
/// mode), every other view of the same length, the named states FP32.
pub fn optimizer<B: MemoryOps + ?Sized>(
    be: &B,
    op: &'static str,
    params: &M<'_, B>,
    grads: &V<'_, B>,
    states: &[(&str, &M<'_, B>)],
    model: Option<&M<'_, B>>,
) -> Result<usize> {
    let ck = Check::new(be, op);
    let n = params.len;
    ck.view_mut("params", params)?;
    if matches!(params.dtype(), DType::F8E4M3 | DType::F8E5M2) {
        return Err(ck.dtype_err(
            params.dtype(),
            "parameters must be F32 (master weights) or BF16/F16 (pure low-precision mode)",
        ));
    }
    ck.view("grads", grads)?;
    ck.len("grads", grads.len, n)?;
    for (name, s) in states {
        ck.view_mut(name, s)?;
        ck.len(name, s.len, n)?;
        ck.dtype(name, s.dtype(), DType::F32)?;
    }
    if let Some(mv) = model {
        ck.view_mut("model", mv)?;
        ck.len("model", mv.len, n)?;
    }
    Ok(n)
}

/// AdamW's per-step scalars, derived once for every backend (see [`adamw`]): computed in
/// f64 from the f32 hyper-parameters (`powf` for the bias corrections) and rounded once to f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamCoef {
    /// `1 - lr * weight_decay` (decoupled decay factor).
    pub decay: f32,
    /// `1 - beta1`, the first moment's lerp weight.
    pub w1: f32,
    /// `1 - beta2`.
    pub w2: f32,
    /// `sqrt(1 - beta2^step)`.
    pub bc2_sqrt: f32,
    /// `-lr / (1 - beta1^step)`.
    pub neg_step_size: f32,
}

/// [`super::OptimOps::adamw`]: the views (see [`optimizer`]) and the 1-based step; returns
/// the length and the per-step scalars.
pub fn adamw<B: MemoryOps + ?Sized>(
    be: &B,
    params: &M<'_, B>,
    grads: &V<'_, B>,
    m: &M<'_, B>,
    v: &M<'_, B>,
    model: Option<&M<'_, B>>,
    hp: &AdamW,
) -> Result<(usize, AdamCoef)> {
    const OP: &str = "adamw";
    if hp.step == 0 {
        return Err(Check::new(be, OP).shape_err("the step number is 1-based; got 0"));
    }
    let n = optimizer(be, OP, params, grads, &[("m", m), ("v", v)], model)?;
    Ok((n, adam_coef(hp)))
}

/// AdamW's per-step scalars for `hp` (`hp.step >= 1`).
pub fn adam_coef(hp: &AdamW) -> AdamCoef {
    let step = hp.step as f64;
    let (beta1, beta2, lr) = (f64::from(hp.beta1), f64::from(hp.beta2), f64::from(hp.lr));
    let bc1 = 1.0 - beta1.powf(step);
    let bc2 = 1.0 - beta2.powf(step);
    AdamCoef {
        decay: (1.0 - lr * f64::from(hp.weight_decay)) as f32,
        w1: (1.0 - beta1) as f32,
        w2: (1.0 - beta2) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        neg_step_size: (-(lr / bc1)) as f32,
    }
}

/// [`super::OptimOps::range_counts`]: the view in its buffer, every query inside the view
/// with a finite scale.
pub fn range_counts<B: MemoryOps + ?Sized>(
    be: &B,
    src: &V<'_, B>,
    queries: &[super::RangeQuery],
) -> Result<()> {
    let c = Check::new(be, "range_counts");
    c.view("src", src)?;
    for (k, q) in queries.iter().enumerate() {
        if q.offset.checked_add(q.len).is_none_or(|end| end > src.len) {
            return Err(c.shape_err(format!(
                "query {k}: elements {}+{} are outside the view of {}",
                q.offset, q.len, src.len
            )));
        }
        if !q.scale.is_finite() {
            return Err(c.shape_err(format!("query {k}: scale {} is not finite", q.scale)));
        }
    }
    Ok(())
}

/// [`super::OptimOps::lost_update_counts`]: both views in their buffers and of one length,
/// every range inside them.
pub fn lost_update_counts<B: MemoryOps + ?Sized>(
    be: &B,
    before: &V<'_, B>,
    after: &V<'_, B>,
    ranges: &[(usize, usize)],
) -> Result<()> {
    let c = Check::new(be, "lost_update_counts");
    c.view("before", before)?;
    c.view("after", after)?;
    c.len("after", after.len, before.len)?;
    for (k, &(offset, len)) in ranges.iter().enumerate() {
        if offset.checked_add(len).is_none_or(|end| end > before.len) {
            return Err(c.shape_err(format!(
                "range {k}: elements {offset}+{len} are outside the views of {}",
                before.len
            )));
        }
    }
    Ok(())
}

/// [`super::OptimOps::sgd`]: the views (see [`optimizer`]); returns the length.
pub fn sgd<B: MemoryOps + ?Sized>(
    be: &B,
    params: &M<'_, B>,
    grads: &V<'_, B>,
    momentum_buf: &M<'_, B>,
    model: Option<&M<'_, B>>,
    _hp: &Sgd,
) -> Result<usize> {
    optimizer(
        be,
        "sgd",
        params,
        grads,
        &[("momentum_buf", momentum_buf)],
        model,
    )
}

/// [`super::AttentionOps::attention`]: views in bounds, the shape (see [`attention`]), `lse`
/// FP32; returns the head size.
pub fn attention_forward<B: MemoryOps + ?Sized>(
    be: &B,
    qkv: &V<'_, B>,
    s: &Attention,
    out: &M<'_, B>,
    lse: &M<'_, B>,
) -> Result<usize> {
    use AttentionPart::*;
    const OP: &str = "attention";
    let ck = Check::new(be, OP);
    ck.view("qkv", qkv)?;
    ck.view_mut("out", out)?;
    ck.view_mut("lse", lse)?;
    ck.dtype("lse", lse.dtype(), DType::F32)?;
    let lens = [
        ("qkv", qkv.len, Qkv),
        ("out", out.len, Out),
        ("lse", lse.len, Lse),
    ];
    attention(be, OP, s, &lens)
}

/// [`super::AttentionOps::attention_backward`]: as the forward, with `dout` like `out` and
/// `dqkv` like `qkv`; returns the head size.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<B: MemoryOps + ?Sized>(
    be: &B,
    dout: &V<'_, B>,
    qkv: &V<'_, B>,
    out: &V<'_, B>,
    lse: &V<'_, B>,
    s: &Attention,
    dqkv: &M<'_, B>,
) -> Result<usize> {
    use AttentionPart::*;
    const OP: &str = "attention_backward";
    let ck = Check::new(be, OP);
    ck.view("dout", dout)?;
    ck.view("qkv", qkv)?;
    ck.view("out", out)?;
    ck.view("lse", lse)?;
    ck.dtype("lse", lse.dtype(), DType::F32)?;
    ck.view_mut("dqkv", dqkv)?;
    let lens = [
        ("qkv", qkv.len, Qkv),
        ("dqkv", dqkv.len, Qkv),
        ("out", out.len, Out),
        ("dout", dout.len, Out),
        ("lse", lse.len, Lse),
    ];
    attention(be, OP, s, &lens)
}
