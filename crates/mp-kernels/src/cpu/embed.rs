//! Embedding gather and its scatter-add backward.
//!
//! The backward groups the positions by table row (a counting sort), then updates the used
//! rows in parallel, each accumulating its positions in ascending order in f32 and rounding
//! once: no atomics, no races, and the same bits whatever the thread count.

use super::CpuBackend;
use super::CpuBuffer;
use super::check::{bytes, bytes_mut};
use super::convert::{load, widen, with_f32_mut};
use crate::Result;
use crate::backend::contract;
use crate::backend::*;
use crate::backend::{View, ViewMut};
use rayon::prelude::*;

/// `out[i, :] = table[ids[i], :]`.
pub(crate) fn embedding(
    table: View<'_, CpuBuffer>,
    ids: &[u32],
    c: usize,
    out: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "embedding";
    let (dt, dout) = (table.dtype(), out.dtype());
    let (st, so) = (dt.size_in_bytes(), dout.size_in_bytes());
    let table = bytes(OP, "table", table)?;
    let out = bytes_mut(OP, "out", out)?;
    if ids.is_empty() {
        return Ok(());
    }
    out.par_chunks_mut(c * so)
        .zip(ids.par_iter())
        .for_each_init(Vec::new, |t, (o, &id)| {
            let src = &table[id as usize * c * st..(id as usize + 1) * c * st];
            if dt == dout {
                o.copy_from_slice(src);
            } else {
                t.resize(c, 0.0);
                widen(dt, src, t);
                super::convert::narrow(dout, t, o);
            }
        });
    Ok(())
}

/// `dtable[ids[i], :] += dout[i, :]`.
pub(crate) fn embedding_backward(
    dout: View<'_, CpuBuffer>,
    ids: &[u32],
    c: usize,
    dtable: ViewMut<'_, CpuBuffer>,
) -> Result<()> {
    const OP: &str = "embedding_backward";
    let vocab = dtable.len / c;
    let (dd, dt) = (dout.dtype(), dtable.dtype());
    let sd = dd.size_in_bytes();
    let dout = bytes(OP, "dout", dout)?;
    let dtable = bytes_mut(OP, "dtable", dtable)?;
    if ids.is_empty() {
        return Ok(());
    }
    // CSR of positions per table row, positions ascending within a row.
    let mut start = vec![0u32; vocab + 1];
    for &id in ids {
        start[id as usize + 1] += 1;
    }
    for r in 0..vocab {
        start[r + 1] += start[r];
    }
    let mut fill = start.clone();
    let mut pos = vec![0u32; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        pos[fill[id as usize] as usize] = i as u32;
        fill[id as usize] += 1;
    }
    dtable
        .par_chunks_mut(c * dt.size_in_bytes())
        .enumerate()
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(tg, to), (r, row)| {
                let ps = &pos[start[r] as usize..start[r + 1] as usize];
                if ps.is_empty() {
                    return;
                }
                with_f32_mut(dt, row, to, true, |acc| {
                    for &p in ps {
                        let p = p as usize;
                        let g = load(dd, &dout[p * c * sd..(p + 1) * c * sd], tg);
                        for (a, &v) in acc.iter_mut().zip(g) {
                            *a += v;
                        }
                    }
                });
            },
        );
    Ok(())
}

impl EmbeddingOps for CpuBackend {
    fn embedding(
        &self,
        table: View<'_, CpuBuffer>,
        ids: &Vec<u32>,
        c: usize,
        out: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::embedding(self, &table, ids, c, &out)?;
        embedding(table, ids, c, out)
    }

    fn embedding_backward(
        &self,
        dout: View<'_, CpuBuffer>,
        ids: &Vec<u32>,
        c: usize,
        dtable: ViewMut<'_, CpuBuffer>,
    ) -> Result<()> {
        contract::embedding_backward(self, &dout, ids, c, &dtable)?;
        embedding_backward(dout, ids, c, dtable)
    }
}
