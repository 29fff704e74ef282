//! Fault injection: 1000 FP16-style steps (F16 gradients, FP32 master, F16 model copy) with
//! inf/NaN injected into 10% of the steps at random elements, on top of the overflows the
//! growing scale causes by itself.

use mp_kernels::prelude::*;
use mp_kernels::{CpuBackend, CpuBuffer, DType};
use mp_optim::{AdamW, AdamWConfig};
use mp_scaler::{GradScaler, OptimizerId, ScalerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

/// Crosses a block boundary of the CPU passes.
const N: usize = 40_000;
const STEPS: usize = 1000;

/// The scale rule written out independently of the crate: PyTorch's `_amp_update_scale_`
/// with DeepSpeed hysteresis and min/max bounds.
struct RuleModel {
    scale: f32,
    tracker: u32,
    hysteresis_left: u32,
    c: ScalerConfig,
}

impl RuleModel {
    fn new(c: ScalerConfig) -> Self {
        RuleModel {
            scale: c.init_scale,
            tracker: 0,
            hysteresis_left: c.hysteresis,
            c,
        }
    }

    fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.tracker = 0;
            if self.hysteresis_left > 1 {
                self.hysteresis_left -= 1;
            } else {
                let s = (f64::from(self.scale) * self.c.backoff_factor) as f32;
                self.scale = self.c.min_scale.map_or(s, |lo| s.max(lo));
            }
            return;
        }
        self.tracker += 1;
        if self.tracker == self.c.growth_interval {
            let grown = (f64::from(self.scale) * self.c.growth_factor) as f32;
            if grown.is_finite() {
                self.scale = self.c.max_scale.map_or(grown, |hi| grown.min(hi));
            }
            self.hysteresis_left = self.c.hysteresis;
            self.tracker = 0;
        }
    }
}

fn bytes(be: &CpuBackend, b: &CpuBuffer) -> Vec<u8> {
    be.download_bytes(b.view()).unwrap()
}

fn run(config: ScalerConfig, seed: u64) -> (usize, usize) {
    let be = CpuBackend;
    let mut rng = StdRng::seed_from_u64(seed);
    let init: Vec<f32> = (0..N).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut params = be.upload_f32(&init, DType::F32).unwrap();
    let mut model = be.upload_f32(&init, DType::F16).unwrap();
    let cfg = AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(&be, N, cfg).unwrap();
    let mut scaler = GradScaler::new(config).unwrap();
    let mut rule = RuleModel::new(config);
    let (mut injected, mut skipped) = (0, 0);

    for t in 0..STEPS {
        let scale = scaler.get_scale();
        assert_eq!(scale, rule.scale, "step {t}: scale");
        let mut g: Vec<f32> = (0..N)
            .map(|_| rng.random_range(-1e-3f32..1e-3) * scale)
            .collect();
        if rng.random_bool(0.1) {
            injected += 1;
            for _ in 0..rng.random_range(1..=3) {
                let i = rng.random_range(0..N);
                g[i] = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN][rng.random_range(0..3)];
            }
        }
        let grads = be.upload_f32(&g, DType::F16).unwrap();
        // What the check must find: any non-finite F16 gradient (injected, or overflowed
        // when the scaled value exceeded F16's range).
        let expect_inf = be
            .download_f32(grads.view())
            .unwrap()
            .iter()
            .any(|x| !x.is_finite());

        let before = (
            bytes(&be, &params),
            bytes(&be, &model),
            bytes(&be, opt.exp_avg()),
            bytes(&be, opt.exp_avg_sq()),
            opt.step_count(),
        );
        let stepped = scaler
            .step(OptimizerId::DEFAULT, &be, grads.view(), |mult| {
                opt.step(
                    &be,
                    params.view_mut(),
                    grads.view(),
                    Some(model.view_mut()),
                    mult,
                )
                .map_err(BoxErr::from)
            })
            .unwrap();
        assert_eq!(
            stepped.is_none(),
            expect_inf,
            "step {t}: skipped iff non-finite"
        );
        let after = (
            bytes(&be, &params),
            bytes(&be, &model),
            bytes(&be, opt.exp_avg()),
            bytes(&be, opt.exp_avg_sq()),
            opt.step_count(),
        );
        if expect_inf {
            skipped += 1;
            assert!(
                before == after,
                "step {t}: a skipped step changed the state"
            );
        } else {
            assert_eq!(after.4, before.4 + 1, "step {t}: step count");
            assert_ne!(
                before.0, after.0,
                "step {t}: a real step moved the master weights"
            );
        }
        scaler.update(None).unwrap();
        rule.update(expect_inf);
        assert_eq!(
            scaler.get_scale(),
            rule.scale,
            "step {t}: scale after update"
        );
        assert_eq!(scaler.growth_tracker(), rule.tracker, "step {t}: tracker");
        assert_eq!(
            scaler.hysteresis_left(),
            rule.hysteresis_left,
            "step {t}: hysteresis"
        );
    }
    for (what, buf) in [
        ("master", &params),
        ("exp_avg", opt.exp_avg()),
        ("exp_avg_sq", opt.exp_avg_sq()),
    ] {
        assert!(
            be.download_f32(buf.view())
                .unwrap()
                .iter()
                .all(|x| x.is_finite()),
            "{what} stays finite"
        );
    }
    assert_eq!(opt.step_count() as usize, STEPS - skipped);
    (injected, skipped)
}

#[test]
fn fault_injection_pytorch_rule() {
    let (injected, skipped) = run(ScalerConfig::default().with_growth_interval(5), 11);
    assert!(
        injected > 50,
        "about 10% of 1000 steps are injected: {injected}"
    );
    assert!(
        skipped > injected,
        "the growing scale overflowed F16 by itself too: {skipped} vs {injected}"
    );
}

#[test]
fn fault_injection_hysteresis_and_bounds() {
    let config = ScalerConfig::default()
        .with_growth_interval(5)
        .with_hysteresis(3, false)
        .with_min_scale(1024.0)
        .with_max_scale(2f32.powi(24));
    let (injected, skipped) = run(config, 12);
    assert!(injected > 50 && skipped >= injected, "{injected} {skipped}");
}
