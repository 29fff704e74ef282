//! The pure-BF16 mode (parameters stored BF16, no FP32 master) with stochastic rounding.

use mp_kernels::prelude::*;
use mp_kernels::{CpuBackend, DType};
use mp_optim::{AdamW, AdamWConfig, Rounding, Sgd, SgdConfig};

/// Updates far below half a BF16 ulp vanish under round-to-nearest-even but accumulate, on
/// average, under stochastic rounding: E[SR(x)] = x makes the parameters a martingale around
/// the exact trajectory.
#[test]
fn stochastic_rounding_is_unbiased_where_nearest_even_stagnates() {
    let be = CpuBackend;
    let n = 100_000;
    let steps = 100;
    // BF16 ulp at 1.0 is 2^-7 = 0.0078; each step moves by lr * g = 0.001 (< ulp / 2).
    let (lr, g) = (1e-3f32, 1.0f32);
    let grads = be.upload_f32(&vec![g; n], DType::F32).unwrap();
    let mut means = Vec::new();
    for rounding in [Rounding::NearestEven, Rounding::Stochastic { seed: 1234 }] {
        let cfg = SgdConfig {
            lr,
            rounding,
            ..SgdConfig::default()
        };
        let mut opt = Sgd::new(&be, n, cfg).unwrap();
        let mut p = be.upload_f32(&vec![1.0; n], DType::BF16).unwrap();
        for _ in 0..steps {
            opt.step(&be, p.view_mut(), grads.view(), None, 1.0)
                .unwrap();
        }
        let v = be.download_f32(p.view()).unwrap();
        means.push(v.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64);
    }
    let exact = 1.0 - f64::from(lr * g) * steps as f64;
    assert_eq!(means[0], 1.0, "RNE: every update rounds away");
    // Per element the rounding noise adds at most ulp^2/4 of variance a step: std of the mean
    // over n elements is below sqrt(steps) * 2^-8 / sqrt(n) ~ 1.2e-4; allow 8 of those.
    assert!(
        (means[1] - exact).abs() < 1e-3,
        "SR mean {} vs exact {exact}",
        means[1]
    );
}

#[test]
fn pure_bf16_adamw_is_reproducible_and_seed_dependent() {
    let be = CpuBackend;
    let n = 70_000;
    let grads = be
        .upload_f32(
            &(0..n)
                .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
                .collect::<Vec<_>>(),
            DType::BF16,
        )
        .unwrap();
    let run = |seed: u64| {
        let cfg = AdamWConfig {
            rounding: Rounding::Stochastic { seed },
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&be, n, cfg).unwrap();
        let mut p = be.upload_f32(&vec![0.5; n], DType::BF16).unwrap();
        for _ in 0..5 {
            opt.step(&be, p.view_mut(), grads.view(), None, 1.0)
                .unwrap();
        }
        be.download_bytes(p.view()).unwrap()
    };
    let a = run(7);
    assert_eq!(a, run(7), "same seed, same bits");
    assert_ne!(a, run(8), "another seed, other rounding");
}
