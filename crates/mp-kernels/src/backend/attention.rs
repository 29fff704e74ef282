//! The layout and attention families: head-layout copies (and the transposes and blocks they
//! express), causal multi-head self-attention.

use super::{GemmOps, MemoryOps, PointwiseOps, RowOps, View, ViewMut};
use crate::Result;

/// Shape of a causal self-attention: batch `b`, sequence `t`, `heads` query heads of width
/// `c / heads` (the head size `hs`), and `kv_heads` key/value heads of the same size
/// (`kv_heads` divides `heads`; fewer is grouped-query attention: query head `h` attends with
/// key/value head `h / (heads / kv_heads)`). Scores are scaled by `1 / sqrt(hs)`.
///
/// The packed projection rows `qkv` are `b x t x (c + 2 kv_heads hs)`: the query heads, then
/// the key heads, then the value heads, each head's `hs` elements contiguous (HF GPT-2's
/// `c_attn` output when `kv_heads = heads`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attention {
    /// Batch size.
    pub b: usize,
    /// Sequence length.
    pub t: usize,
    /// Width of the query heads and of the output (`heads x hs`).
    pub c: usize,
    /// Number of query heads.
    pub heads: usize,
    /// Number of key/value heads (divides `heads`).
    pub kv_heads: usize,
}

impl Attention {
    /// Multi-head attention: as many key/value heads as query heads.
    pub fn mha(b: usize, t: usize, c: usize, heads: usize) -> Self {
        Attention {
            b,
            t,
            c,
            heads,
            kv_heads: heads,
        }
    }

    /// The head size `c / heads` (0 without heads).
    pub fn head_size(&self) -> usize {
        self.c.checked_div(self.heads).unwrap_or(0)
    }

    /// Query heads per key/value head (0 without key/value heads).
    pub fn group(&self) -> usize {
        self.heads.checked_div(self.kv_heads).unwrap_or(0)
    }

    /// Width of the keys (and of the values): `kv_heads x hs`.
    pub fn kv_width(&self) -> usize {
        self.kv_heads * self.head_size()
    }

    /// Elements of one packed `qkv` row: `c + 2 kv_heads hs`.
    pub fn qkv_row(&self) -> usize {
        self.c + 2 * self.kv_width()
    }

    /// Elements of the saved log-sum-exp, one per query row of each head: `b x heads x t`.
    pub fn lse_len(&self) -> usize {
        self.b * self.heads * self.t
    }
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
    /// Part `part` (0 = q, 1 = k, 2 = v) of an attention's packed `qkv` rows (all of its
    /// heads: `heads` query heads, `kv_heads` key or value heads).
    pub fn qkv(s: &Attention, part: usize) -> Self {
        let hs = s.head_size();
        let (heads, col) = match part {
            0 => (s.heads, 0),
            1 => (s.kv_heads, s.c),
            _ => (s.kv_heads, s.c + s.kv_width()),
        };
        Heads {
            b: s.b,
            t: s.t,
            heads,
            hs,
            row: s.qkv_row(),
            col,
        }
    }

    /// Head `head` alone of [`Heads::qkv`]'s part `part` (a `b x t x hs` head-major side).
    pub fn qkv_head(s: &Attention, part: usize, head: usize) -> Self {
        let all = Heads::qkv(s, part);
        Heads {
            heads: 1,
            col: all.col + head * all.hs,
            ..all
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

    /// Head `head` alone of [`Heads::out`].
    pub fn out_head(s: &Attention, head: usize) -> Self {
        Heads {
            heads: 1,
            col: head * s.head_size(),
            ..Heads::out(s)
        }
    }

    /// Query head `head`'s rows of an attention's log-sum-exp (`b x heads x t`) as the
    /// token-major side, the contiguous `b x t` of that head alone as the head-major side.
    pub fn lse_head(s: &Attention, head: usize) -> Self {
        Heads {
            b: s.b,
            t: 1,
            heads: 1,
            hs: s.t,
            row: s.heads * s.t,
            col: head * s.t,
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

impl Heads {
    /// The layout that makes [`LayoutOps::split_heads`] a batched transpose: `b` matrices of
    /// `m x n` (token-major side) to `n x m` (head-major side).
    pub fn transpose(b: usize, m: usize, n: usize) -> Self {
        Heads {
            b,
            t: m,
            heads: n,
            hs: 1,
            row: n,
            col: 0,
        }
    }

    /// The layout of a column block: `width` columns from column `col` of `rows` rows of `row`
    /// elements (token-major side) as a contiguous `rows x width` matrix (head-major side);
    /// what concatenating and splitting along a dimension is made of.
    pub fn block(rows: usize, row: usize, col: usize, width: usize) -> Self {
        Heads {
            b: 1,
            t: rows,
            heads: 1,
            hs: width,
            row,
            col,
        }
    }
}

/// The shape of a rotary position embedding ([`LayoutOps::rope`]): `rows` token rows of
/// `heads` heads of `head_dim` elements each, row `r` at position `r % t` (batches of `t`
/// tokens from position 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rope {
    /// Token rows (`b * t`).
    pub rows: usize,
    /// Heads per row.
    pub heads: usize,
    /// The leading heads of each row that rotate (at most `heads`); the others are copied,
    /// rounded to the output's dtype (the values of packed `q | k | v` rows).
    pub rotated: usize,
    /// Elements per head (even).
    pub head_dim: usize,
    /// Tokens per sequence: the positions are `0..t`, repeated.
    pub t: usize,
    /// Apply the inverse rotation (`sin` negated): the backward, since the rotation is
    /// orthogonal.
    pub inverse: bool,
}

/// Layout copies between token-major rows and head-major matrices (see [`Heads`]), and the
/// rotary position embedding.
pub trait LayoutOps: MemoryOps {
    /// The rotary position embedding with HF Llama's rotate-half convention, in FP32: for
    /// every head `x` of a row at position `p`, with `h = head_dim / 2` and `j < h`,
    /// `y[j] = x[j] cos[p, j] - x[j + h] sin[p, j]` and
    /// `y[j + h] = x[j + h] cos[p, j] + x[j] sin[p, j]` (each product rounded to f32, then
    /// the sum: what `x cos + rotate_half(x) sin` computes), rounded to `out`'s dtype. `cos`
    /// and `sin` are FP32 `t x h`; with `s.inverse` the sine is negated (the gradient:
    /// `dx = rope(dy)` inverse). Heads from `s.rotated` on are copied unrotated.
    fn rope(
        &self,
        x: View<'_, Self::Buffer>,
        cos: View<'_, Self::Buffer>,
        sin: View<'_, Self::Buffer>,
        s: &Rope,
        out: ViewMut<'_, Self::Buffer>,
    ) -> Result<()>;
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
    /// `dst[i, c, r] = src[i, r, c]` for `b` matrices of `m x n` (rounded to `dst`'s dtype).
    ///
    /// The default is [`LayoutOps::split_heads`] with [`Heads::transpose`].
    fn transpose(
        &self,
        src: View<'_, Self::Buffer>,
        b: usize,
        m: usize,
        n: usize,
        dst: ViewMut<'_, Self::Buffer>,
    ) -> Result<()> {
        self.split_heads(src, &Heads::transpose(b, m, n), dst)
    }
}

/// Causal multi-head (or grouped-query) self-attention that saves only the log-sum-exp of
/// each score row for its backward: O(b heads t) state, not the `t x t` probabilities.
pub trait AttentionOps: GemmOps + RowOps + LayoutOps + PointwiseOps {
    /// Causal self-attention over the packed projection rows `qkv` (see [`Attention`]):
    /// writes `out` (`b x t x c`, token-major) and `lse` (FP32, `b x heads x t`: the natural
    /// log of the sum of `e^score` over the visible keys of each query row, the scores scaled by
    /// `1 / sqrt(hs)`), which is all [`AttentionOps::attention_backward`] needs besides `qkv`
    /// and `out`.
    ///
    /// The default is [`crate::gemm_attention::forward`] on this backend's own GEMM, softmax
    /// and layout ops (O(t²) scratch while it runs, none saved); a backend with a fused kernel
    /// overrides it.
    fn attention(
        &self,
        qkv: View<'_, Self::Buffer>,
        shape: &Attention,
        out: ViewMut<'_, Self::Buffer>,
        lse: ViewMut<'_, Self::Buffer>,
    ) -> Result<()> {
        crate::gemm_attention::forward(self, qkv, shape, out, lse)
    }
    /// Attention backward: `dqkv += ..` from `dout`, the forward's `qkv`, its `out` and its
    /// `lse` (default: [`crate::gemm_attention::backward`], which recomputes the
    /// probabilities from the scores).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        dout: View<'_, Self::Buffer>,
        qkv: View<'_, Self::Buffer>,
        out: View<'_, Self::Buffer>,
        lse: View<'_, Self::Buffer>,
        shape: &Attention,
        dqkv: ViewMut<'_, Self::Buffer>,
    ) -> Result<()> {
        crate::gemm_attention::backward(self, dout, qkv, out, lse, shape, dqkv)
    }
}
