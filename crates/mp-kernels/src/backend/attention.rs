//! The layout and attention families: head-layout copies (and the transposes and blocks they
//! express), causal multi-head self-attention.

use super::{GemmOps, MemoryOps, RowOps, View, ViewMut};
use crate::Result;

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

/// Layout copies between token-major rows and head-major matrices (see [`Heads`]).
pub trait LayoutOps: MemoryOps {
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

/// Causal multi-head self-attention.
pub trait AttentionOps: GemmOps + RowOps + LayoutOps {
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
}
