//! Embedding gather and scatter-add backward against float64 references.

use crate::common::{cpu, down, input, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{
    TEST_DTYPES, assert_close, assert_close_tol, for_each_dtype, random_ids, tolerance,
};
use mp_kernels::{CpuBuffer, DType};

#[test]
fn embedding_gather_and_scatter_add() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for (vocab, c, n) in [(1, 1, 1), (10, 3, 50), (256, 128, 1024), (50, 9000, 7)] {
            let (table, tr) = input(vocab * c, 61, dt);
            let ids = random_ids(n, vocab as u32, 62);
            for dout in [dt, DType::F32] {
                let mut out = CpuBuffer::zeros(dout, n * c);
                cpu()
                    .embedding(up(&table, dt).view(), &ids, c, out.view_mut())
                    .unwrap();
                let want: Vec<f64> = ids
                    .iter()
                    .flat_map(|&i| tr[i as usize * c..(i as usize + 1) * c].iter().cloned())
                    .collect();
                assert_close(
                    &format!("embedding {vocab}x{c} n={n} ->{dout}"),
                    &down(&out),
                    &want,
                    dout,
                );
            }

            let (g, gr) = input(n * c, 63, dt);
            for dtab in [DType::F32, dt] {
                let (t0, t0r) = input(vocab * c, 64, dtab);
                let mut dtable = up(&t0, dtab);
                cpu()
                    .embedding_backward(up(&g, dt).view(), &ids, c, dtable.view_mut())
                    .unwrap();
                let mut want = t0r.clone();
                for (i, &id) in ids.iter().enumerate() {
                    for j in 0..c {
                        want[id as usize * c + j] += gr[i * c + j];
                    }
                }
                let (abs, k) = tolerance(dtab);
                let abs = abs + (n as f64).sqrt() * 4.0 * f64::from(f32::EPSILON);
                assert_close_tol(
                    &format!("embedding_backward {vocab}x{c} n={n} into {dtab}"),
                    &down(&dtable),
                    &want,
                    dtab,
                    abs,
                    k,
                );
            }
        }
    });
}
