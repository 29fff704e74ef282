//! Every tape op beyond GPT-2's through one graph on a GPU backend against the CPU: the
//! loss and every parameter gradient, in FP32 and under BF16 autocast (the tests named
//! `*_wgpu` run on lavapipe in CI; `*_cuda` on the GPU machine). The graph: RMSNorm, linear,
//! split, SiLU / sigmoid, concat, ReLU, neg, scale, sub, tanh, dropout (the masks are the same
//! on every backend), softmax, log-softmax, mul, exp, matmul with a broadcast weight, transpose,
//! batched matmul of two activations, and MSE or mean as the loss.

use mp_autograd::{Autocast, Tape, WeightLayout};
use mp_dtype::DType;
use mp_kernels::testing::random_vec;
use mp_kernels::{Backend, BufferExt};

/// x [4, 8], g [8], w1 [8, 8], w2 [8, 8], target [4, 8], back to back.
const SHAPES: [&[usize]; 5] = [&[4, 8], &[8], &[8, 8], &[8, 8], &[4, 8]];

/// The loss and the gradient arena of the graph on `be`.
fn run<B: Backend>(be: &B, autocast: Autocast, mean: bool) -> (f32, Vec<f32>) {
    let n: usize = SHAPES.iter().map(|s| s.iter().product::<usize>()).sum();
    let master = be
        .upload_f32(&random_vec(n, 5), DType::F32)
        .expect("upload");
    let mut grads = be.zeros(DType::F32, n).expect("zeros");
    let mut tape = Tape::new(be)
        .with_params(&master)
        .with_autocast(autocast)
        .with_rng(3, 1);
    let mut off = 0;
    let p: Vec<_> = SHAPES
        .iter()
        .map(|s| {
            let t = tape.param_at(off, s).expect("param");
            off += s.iter().product::<usize>();
            t
        })
        .collect();
    let loss = (|| -> mp_autograd::Result<_> {
        let t = &mut tape;
        let h = t.rms_norm(p[0], p[1], 1e-6)?;
        let a = t.linear(h, p[2], None, WeightLayout::InOut)?;
        let parts = t.split(a, 1, &[3, 5])?;
        let (s1, s2) = (t.silu(parts[0])?, t.sigmoid(parts[1])?);
        let b = t.concat(&[s1, s2], 1)?;
        let r = t.relu(a)?;
        let r = t.neg(r)?;
        let r = t.scale(r, 0.5)?;
        let c = t.sub(b, r)?;
        let sw = t.swiglu(a)?; // [4, 4]: the packed halves of a
        let sw = t.concat(&[sw, sw], 1)?;
        let c = t.add(c, sw)?;
        let c = t.tanh(c)?;
        let d = t.dropout(c, 0.25)?;
        let (s, ls) = (t.softmax(d)?, t.log_softmax(d)?);
        let e = t.mul(s, ls)?;
        let e = t.exp(e)?;
        let e = t.reshape(e, &[1, 4, 8])?;
        let m = t.matmul(e, p[3])?;
        let mt = t.transpose(m)?;
        let q = t.matmul(mt, m)?; // [1, 8, 8]
        let q = t.reshape(q, &[8, 8])?;
        let q = t.linear(q, p[3], None, WeightLayout::OutIn)?;
        let y = t.split(q, 0, &[4, 4])?[1];
        if mean {
            let z = t.sub(y, p[4])?;
            t.mean(z)
        } else {
            t.mse_loss(y, p[4])
        }
    })()
    .expect("graph");
    let l = tape.to_vec_f32(loss).expect("loss")[0];
    tape.backward(loss, 1.0, &mut grads).expect("backward");
    (l, be.download_f32(grads.view()).expect("grads"))
}

/// Compares `be` with the CPU in FP32 (tight) and BF16 autocast (the relative norm of the
/// gradient difference).
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
pub fn tape_ops_match_cpu<B: Backend>(be: &B) {
    let cpu = mp_kernels::CpuBackend::new();
    for mean in [false, true] {
        let (lc, gc) = run(&cpu, Autocast::OFF, mean);
        let (lg, gg) = run(be, Autocast::OFF, mean);
        assert!(
            (lc - lg).abs() <= 1e-5 + 1e-4 * lc.abs(),
            "fp32 loss: cpu {lc}, {lg}"
        );
        for (i, (c, g)) in gc.iter().zip(&gg).enumerate() {
            assert!(
                (c - g).abs() <= 1e-4 + 1e-3 * c.abs(),
                "fp32 grad [{i}]: cpu {c}, {g}"
            );
        }
        assert!(
            gc.iter().any(|&v| v != 0.0),
            "an all-zero gradient proves nothing"
        );
        let bf = Autocast::to(DType::BF16);
        let ((lc, gc), (lg, gg)) = (run(&cpu, bf, mean), run(be, bf, mean));
        assert!(
            (lc - lg).abs() <= 2e-2 * lc.abs().max(1e-2),
            "bf16 loss: cpu {lc}, {lg}"
        );
        let diff: f64 = gc
            .iter()
            .zip(&gg)
            .map(|(c, g)| f64::from(c - g).powi(2))
            .sum();
        let norm: f64 = gc.iter().map(|c| f64::from(*c).powi(2)).sum();
        let rel = (diff / norm).sqrt();
        assert!(rel < 5e-2, "bf16 gradients: relative difference {rel:.3e}");
    }
}

#[test]
fn tape_ops_on_the_cpu_are_reproducible() {
    let cpu = mp_kernels::CpuBackend::new();
    let a = run(&cpu, Autocast::to(DType::BF16), false);
    assert_eq!(a, run(&cpu, Autocast::to(DType::BF16), false));
    assert!(a.0.is_finite() && a.1.iter().all(|g| g.is_finite()));
}

#[cfg(feature = "wgpu")]
#[test]
fn tape_ops_match_cpu_wgpu() {
    if let Some(be) = crate::common::wgpu_backend("tape_ops_match_cpu_wgpu") {
        tape_ops_match_cpu(be);
    }
}

#[cfg(feature = "cuda")]
#[test]
fn tape_ops_match_cpu_cuda() {
    if let Some(be) = crate::common::cuda_backend("tape_ops_match_cpu_cuda") {
        tape_ops_match_cpu(be);
    }
}
