//! Cross-entropy and its backward against float64 references.

use crate::common::{cpu, down, f64s, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{
    TEST_DTYPES, assert_close, for_each_dtype, quantize, random_ids, random_vec,
};
use mp_kernels::{CpuBuffer, DType};

fn logits(n: usize, seed: u64, dt: DType) -> Vec<f32> {
    quantize(
        &random_vec(n, seed)
            .iter()
            .map(|v| 6.0 * v)
            .collect::<Vec<_>>(),
        dt,
    )
}

#[test]
fn cross_entropy_forward_backward() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for (rows, vocab) in [(1, 1), (4, 7), (1024, 256), (3, 50_257)] {
            let x = logits(rows * vocab, 51, dt);
            let xr = f64s(&x);
            let targets = random_ids(rows, vocab as u32, 52);
            let xb = up(&x, dt);
            let mut losses = CpuBuffer::zeros(DType::F32, rows);
            cpu()
                .cross_entropy(xb.view(), &targets, vocab, losses.view_mut())
                .unwrap();
            let mut want = Vec::new();
            let mut want_grad = Vec::new();
            let dloss = 0.37;
            for (row, &t) in xr.chunks(vocab).zip(&targets) {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
                want.push(m + s.ln() - row[t as usize]);
                for (j, v) in row.iter().enumerate() {
                    let onehot = if j == t as usize { 1.0 } else { 0.0 };
                    want_grad.push(((v - m).exp() / s - onehot) * dloss);
                }
            }
            let what = format!("cross_entropy {rows}x{vocab}");
            assert_close(&what, &down(&losses), &want, DType::F32);
            let mut dl = up(&random_vec(rows * vocab, 53), dt); // overwritten
            cpu()
                .cross_entropy_backward(xb.view(), &targets, vocab, dloss as f32, dl.view_mut())
                .unwrap();
            assert_close(&format!("{what} backward"), &down(&dl), &want_grad, dt);
            // the fused classifier: the same losses and gradient, bit for bit, from one pass
            let mut fl = CpuBuffer::zeros(DType::F32, rows);
            let mut fd = up(&random_vec(rows * vocab, 54), dt);
            cpu()
                .cross_entropy_fused(
                    xb.view(),
                    &targets,
                    vocab,
                    dloss as f32,
                    fl.view_mut(),
                    fd.view_mut(),
                )
                .unwrap();
            assert_eq!(fl.as_bytes(), losses.as_bytes(), "{what} fused losses");
            assert_eq!(fd.as_bytes(), dl.as_bytes(), "{what} fused gradient");
        }
    });
}
