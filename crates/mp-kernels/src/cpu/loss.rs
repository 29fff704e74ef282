//! Cross-entropy fused with log-softmax, its backward, and both in one pass (the fused
//! classifier), in f32 (stable logsumexp).

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{as_f32_mut, load, with_f32_mut};
use super::math::exp_sub;
use super::pointwise::CHUNK;
use super::reduce::{max, sum};
use crate::Result;
use crate::backend::contract;
use crate::backend::*;
use crate::backend::{View, ViewMut};
use rayon::prelude::*;

/// `max` and `ln(sum(exp(x - max)))` of a row (`e` is scratch of the row's length).
#[inline]
fn max_lse(x: &[f32], e: &mut [f32]) -> (f32, f32) {
    let m = max(x);
    exp_sub(x, m, e);
    (m, sum(e).ln())
}

/// `losses[r] = logsumexp(logits[r]) - logits[r, targets[r]]`.
pub(crate) fn cross_entropy(
    logits: View<'_, CpuBuffer>,
    targets: &[u32],
    vocab: usize,
    losses: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "cross_entropy";
    let dl = logits.dtype();
    let logits = bytes(OP, "logits", logits)?;
    let losses = as_f32_mut(bytes_mut(OP, "losses", losses)?);
    let rows_per = (CHUNK / vocab).max(1);
    losses
        .par_chunks_mut(rows_per)
        .zip(logits.par_chunks(rows_per * vocab * dl.size_in_bytes()))
        .zip(targets.par_chunks(rows_per))
        .for_each_init(
            || (Vec::new(), vec![0.0f32; vocab]),
            |(t, e), ((lc, xc), tc)| {
                let xc = load(dl, xc, t);
                for ((l, row), &tg) in lc.iter_mut().zip(xc.chunks_exact(vocab)).zip(tc) {
                    let (m, lse) = max_lse(row, e);
                    *l = m + lse - row[tg as usize];
                }
            },
        );
    Ok(())
}

/// `dlogits = (softmax(logits) - onehot(targets)) * dloss`, and with `losses` each row's
/// `logsumexp - logits[target]` from the same pass.
pub(crate) fn cross_entropy_backward(
    logits: View<'_, CpuBuffer>,
    targets: &[u32],
    vocab: usize,
    dloss: f32,
    losses: Option<ViewMut<'_, CpuBuffer>>,
    dlogits: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "cross_entropy_backward";
    let (dl, dd) = (logits.dtype(), dlogits.dtype());
    let logits = bytes(OP, "logits", logits)?;
    let dlogits = bytes_mut(OP, "dlogits", dlogits)?;
    let rows_per = (CHUNK / vocab).max(1);
    let mut none = Vec::new();
    let losses: &mut [f32] = match losses {
        Some(l) => as_f32_mut(bytes_mut(OP, "losses", l)?),
        None => &mut none,
    };
    let with_loss = !losses.is_empty();
    let mut loss_chunks: Vec<&mut [f32]> = losses.chunks_mut(rows_per).collect();
    loss_chunks.resize_with(targets.len().div_ceil(rows_per), Default::default);
    dlogits
        .par_chunks_mut(rows_per * vocab * dd.size_in_bytes())
        .zip(logits.par_chunks(rows_per * vocab * dl.size_in_bytes()))
        .zip(targets.par_chunks(rows_per))
        .zip(loss_chunks.into_par_iter())
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(tx, to), (((oc, xc), tc), lc)| {
                let xc = load(dl, xc, tx);
                with_f32_mut(dd, oc, to, false, |o| {
                    for (r, ((orow, row), &tg)) in o
                        .chunks_exact_mut(vocab)
                        .zip(xc.chunks_exact(vocab))
                        .zip(tc)
                        .enumerate()
                    {
                        let m = max(row);
                        exp_sub(row, m, orow);
                        let s = sum(orow);
                        if with_loss {
                            lc[r] = m + s.ln() - row[tg as usize];
                        }
                        let k = dloss / s;
                        for o in orow.iter_mut() {
                            *o *= k;
                        }
                        orow[tg as usize] -= dloss;
                    }
                });
            },
        );
    Ok(())
}

impl LossOps for CpuBackend {
    fn cross_entropy(
        &self,
        logits: View<'_, CpuBuffer>,
        targets: &Vec<u32>,
        vocab: usize,
        losses: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::cross_entropy(self, &logits, targets, vocab, &losses)?;
        cross_entropy(logits, targets, vocab, losses)
    }

    fn cross_entropy_backward(
        &self,
        logits: View<'_, CpuBuffer>,
        targets: &Vec<u32>,
        vocab: usize,
        dloss: f32,
        dlogits: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::cross_entropy_backward(self, &logits, targets, vocab, &dlogits)?;
        cross_entropy_backward(logits, targets, vocab, dloss, None, dlogits)
    }

    fn cross_entropy_fused(
        &self,
        logits: View<'_, CpuBuffer>,
        targets: &Vec<u32>,
        vocab: usize,
        dloss: f32,
        losses: ViewMut<'_, CpuBuffer>,
        dlogits: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::cross_entropy_fused(self, &logits, targets, vocab, &losses, &dlogits)?;
        cross_entropy_backward(logits, targets, vocab, dloss, Some(losses), dlogits)
    }
}
