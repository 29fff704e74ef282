//! The per-optimizer state machine, its errors, several optimizers, disabled and static
//! modes, and state round trips, on the CPU backend.

use mp_kernels::prelude::*;
use mp_kernels::{CpuBackend, CpuBuffer, DType};
use mp_scaler::{GradScaler, OptStage, OptimizerId, ScalerConfig, ScalerError};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn grads(values: &[f32]) -> CpuBuffer {
    CpuBackend.upload_f32(values, DType::F32).unwrap()
}

#[test]
fn unscale_twice_unscale_after_step_and_step_twice_are_errors() {
    let be = CpuBackend;
    let g = grads(&[1.0, 2.0]);
    let id = OptimizerId::DEFAULT;
    let mut s = GradScaler::default();

    s.unscale_(id, &be, g.view()).unwrap();
    assert_eq!(s.stage(id), OptStage::Unscaled);
    let e = s.unscale_(id, &be, g.view()).unwrap_err();
    assert!(
        matches!(e, ScalerError::UnscaleTwice { optimizer: 0 }),
        "{e}"
    );
    assert!(e.to_string().contains("already been called"), "{e}");

    let mut calls = 0;
    let r = s
        .step(id, &be, g.view(), |_| {
            calls += 1;
            Ok::<_, BoxErr>(())
        })
        .unwrap();
    assert!(r.is_some());
    assert_eq!(s.stage(id), OptStage::Stepped);
    let e = s.unscale_(id, &be, g.view()).unwrap_err();
    assert!(matches!(e, ScalerError::UnscaleAfterStep { .. }), "{e}");
    let e = s
        .step(id, &be, g.view(), |_| {
            calls += 1;
            Ok::<_, BoxErr>(())
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("step() has already been called"),
        "{e}"
    );
    assert_eq!(calls, 1, "the second step never reached the optimizer");

    s.update(None).unwrap();
    assert_eq!(s.stage(id), OptStage::Ready);
    // A new iteration works again, and step unscales by itself.
    assert!(
        s.step(id, &be, g.view(), |_| Ok::<_, BoxErr>(()))
            .unwrap()
            .is_some()
    );
    s.update(None).unwrap();
    assert!(matches!(s.update(None), Err(ScalerError::NoInfChecks)));
}

#[test]
fn step_passes_one_over_scale_and_the_norm_is_of_unscaled_grads() {
    let be = CpuBackend;
    let mut s = GradScaler::new(ScalerConfig::default().with_init_scale(1024.0)).unwrap();
    let g = grads(&[3.0 * 1024.0, 4.0 * 1024.0]);
    let check = s.unscale_(OptimizerId(7), &be, g.view()).unwrap();
    assert!(!check.found_inf);
    assert_eq!(check.grad_norm, 5.0);
    assert_eq!(check.inv_scale, 1.0 / 1024.0);
    let clip = check.clip_factor(1.0);
    let mult = s
        .step(OptimizerId(7), &be, g.view(), |m| Ok::<_, BoxErr>(m * clip))
        .unwrap()
        .unwrap();
    assert_eq!(mult, check.grad_mult(clip));
}

#[test]
fn one_overflowing_optimizer_skips_itself_and_backs_off_the_scale() {
    let be = CpuBackend;
    let mut s = GradScaler::new(ScalerConfig::default().with_growth_interval(1)).unwrap();
    let good = grads(&[1.0, -1.0]);
    let bad = grads(&[1.0, f32::NAN]);
    let (a, b) = (OptimizerId(1), OptimizerId(2));
    let ra = s
        .step(a, &be, good.view(), |_| Ok::<_, BoxErr>("a"))
        .unwrap();
    let rb = s
        .step(b, &be, bad.view(), |_| Ok::<_, BoxErr>("b"))
        .unwrap();
    assert_eq!((ra, rb), (Some("a"), None));
    assert!(s.found_inf() && !s.should_step());
    s.update(None).unwrap();
    assert_eq!(s.get_scale(), 32768.0);
    assert_eq!(s.growth_tracker(), 0);
    // Both finite: grows (interval 1).
    s.step(a, &be, good.view(), |_| Ok::<_, BoxErr>(()))
        .unwrap();
    s.step(b, &be, good.view(), |_| Ok::<_, BoxErr>(()))
        .unwrap();
    s.update(None).unwrap();
    assert_eq!(s.get_scale(), 65536.0);
}

#[test]
fn disabled_scaler_always_steps_with_factor_one() {
    let be = CpuBackend;
    let mut s = GradScaler::new(ScalerConfig::disabled()).unwrap();
    let bad = grads(&[f32::INFINITY]);
    let id = OptimizerId::DEFAULT;
    for _ in 0..2 {
        let check = s.unscale_(id, &be, bad.view()).unwrap();
        assert!(check.found_inf, "the check still reports what it saw");
        assert_eq!(
            s.step(id, &be, bad.view(), Ok::<_, BoxErr>).unwrap(),
            Some(1.0)
        );
        s.update(None).unwrap();
    }
    assert_eq!(s.get_scale(), 1.0);
    assert_eq!(s.scale(2.5), 2.5);
}

#[test]
fn static_scale_skips_overflow_but_keeps_the_scale() {
    let be = CpuBackend;
    let mut s = GradScaler::new(ScalerConfig::static_scale(1.0)).unwrap();
    let id = OptimizerId::DEFAULT;
    for (vals, stepped) in [
        (vec![1.0f32], true),
        (vec![f32::NAN], false),
        (vec![2.0], true),
    ] {
        let g = grads(&vals);
        let r = s.step(id, &be, g.view(), Ok::<_, BoxErr>).unwrap();
        assert_eq!(r.is_some(), stepped);
        s.update(None).unwrap();
        assert_eq!(s.get_scale(), 1.0);
    }
}

#[test]
fn bf16_and_f16_gradients_are_checked_in_the_same_pass() {
    let be = CpuBackend;
    for dt in [DType::BF16, DType::F16] {
        let mut s = GradScaler::new(ScalerConfig::default().with_init_scale(4.0)).unwrap();
        let g = be.upload_f32(&[8.0, 0.0, -8.0], dt).unwrap();
        let c = s.check(&be, g.view()).unwrap();
        assert_eq!(c.grad_norm, 8.0f64.sqrt(), "{dt}");
        s.update(None).unwrap();
        // 1e6 overflows F16 on upload (-> inf); BF16 holds it.
        let g = be.upload_f32(&[1e6, 1.0], dt).unwrap();
        let c = s.check(&be, g.view()).unwrap();
        assert_eq!(c.found_inf, dt == DType::F16, "{dt}");
    }
}

#[test]
fn state_dict_round_trip_resumes_identically() {
    let be = CpuBackend;
    let config = ScalerConfig::default()
        .with_growth_interval(3)
        .with_hysteresis(2, false);
    let pattern = [false, true, false, false, false, true, true, false, false];
    let mut a = GradScaler::new(config).unwrap();
    let ok = grads(&[1.0]);
    let bad = grads(&[f32::INFINITY]);
    let run = |s: &mut GradScaler, infs: &[bool]| {
        for &inf in infs {
            s.check(&be, if inf { bad.view() } else { ok.view() })
                .unwrap();
            s.update(None).unwrap();
        }
    };
    run(&mut a, &pattern[..4]);
    let saved = a.state_dict_json();
    let mut b = GradScaler::new(config).unwrap();
    b.load_state_dict_json(&saved).unwrap();
    run(&mut a, &pattern[4..]);
    run(&mut b, &pattern[4..]);
    assert_eq!(a.state_dict(), b.state_dict());
    assert!(saved.contains("\"_hysteresis_left\""), "{saved}");
}

#[test]
fn check_stats_is_check_from_statistics_computed_elsewhere() {
    let be = CpuBackend;
    let config = ScalerConfig::default()
        .with_init_scale(8.0)
        .with_growth_interval(2);
    let (mut a, mut b) = (
        GradScaler::new(config).unwrap(),
        GradScaler::new(config).unwrap(),
    );
    for data in [
        &[16.0f32, -8.0][..],
        &[f32::INFINITY, 1.0],
        &[4.0, 0.0],
        &[2.0, 2.0],
    ] {
        let g = be.upload_f32(data, DType::F32).unwrap();
        let want = a.check(&be, g.view()).unwrap();
        let stats = be.grad_stats(g.view(), b.inv_scale()).unwrap();
        let got = b.check_stats(stats).unwrap();
        assert_eq!(got.found_inf, want.found_inf, "{data:?}");
        assert_eq!(got.inv_scale, want.inv_scale);
        if !want.found_inf {
            assert_eq!(got.grad_norm, want.grad_norm, "{data:?}");
        }
        // a second check before the update is refused, as check refuses it
        assert!(b.check_stats(stats).is_err());
        a.update(None).unwrap();
        b.update(None).unwrap();
        assert_eq!(a.get_scale(), b.get_scale());
    }
}
