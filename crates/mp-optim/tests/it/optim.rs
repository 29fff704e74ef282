//! AdamW and SGD behaviour beyond the golden trajectories: parameter groups, learning-rate
//! changes, grad factors and gradient dtypes, state save/load, argument errors.

use crate::reference::{self, Adam, SgdHp, assert_close64};
use mp_kernels::prelude::*;
use mp_kernels::{CpuBackend, CpuBuffer, DType};
use mp_optim::{
    AdamW, AdamWConfig, OptimError, OptimizerState, ParamGroup, Rounding, Sgd, SgdConfig,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

fn down(b: &CpuBuffer) -> Vec<f32> {
    CpuBackend.download_f32(b.view()).unwrap()
}

#[test]
fn groups_weight_decay_lr_mult_and_set_lr_follow_the_reference() {
    let be = CpuBackend;
    let mut rng = StdRng::seed_from_u64(1);
    let n = 50_000;
    // Decayed matrix, undecayed 1-D params at half the lr, and a range outside every group.
    let groups = vec![
        ParamGroup::new(0..30_000, 0.1),
        ParamGroup {
            lr_mult: 0.5,
            ..ParamGroup::new(30_000..45_000, 0.0)
        },
    ];
    let cfg = AdamWConfig {
        lr: 3e-3,
        beta1: 0.8,
        beta2: 0.95,
        eps: 1e-6,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::with_groups(&be, n, cfg, groups.clone()).unwrap();
    let p0 = rand_vec(&mut rng, n, 1.0);
    let mut p = be.upload_f32(&p0, DType::F32).unwrap();
    let mut rp = f64s(&p0);
    let (mut rm, mut rv) = (vec![0.0; n], vec![0.0; n]);
    for (step, lr) in [(1u64, 3e-3f32), (2, 1e-3), (3, 5e-4)] {
        opt.set_lr(lr).unwrap();
        let g = rand_vec(&mut rng, n, 0.1);
        let gb = be.upload_f32(&g, DType::F32).unwrap();
        opt.step(&be, p.view_mut(), gb.view(), None, 0.5).unwrap();
        let g64: Vec<f64> = g.iter().map(|&x| f64::from(x) * 0.5).collect();
        for gr in &groups {
            let r = gr.range.clone();
            let h = Adam {
                lr: f64::from(lr) * f64::from(gr.lr_mult),
                beta1: 0.8,
                beta2: 0.95,
                eps: 1e-6,
                wd: f64::from(gr.weight_decay),
            };
            reference::adamw(
                &mut rp[r.clone()],
                &mut rm[r.clone()],
                &mut rv[r.clone()],
                &g64[r],
                h,
                step,
            );
        }
    }
    let got = down(&p);
    assert_close64("params", &got, &rp);
    assert_eq!(
        &got[45_000..],
        &p0[45_000..],
        "elements outside every group never move"
    );
    assert_close64("exp_avg", &down(opt.exp_avg()), &rm);
    assert_eq!(opt.lr(), 5e-4);
    assert!(opt.set_lr(f32::NAN).is_err());
}

#[test]
fn low_precision_gradients_are_read_as_their_values() {
    let be = CpuBackend;
    let mut rng = StdRng::seed_from_u64(2);
    let n = 40_000;
    let p0 = rand_vec(&mut rng, n, 1.0);
    let g = rand_vec(&mut rng, n, 8.0);
    for dt in [DType::BF16, DType::F16] {
        let gq = be.upload_f32(&g, dt).unwrap();
        let gf = be.upload_f32(&down(&gq), DType::F32).unwrap();
        let mut outs = Vec::new();
        for grads in [&gq, &gf] {
            let mut p = be.upload_f32(&p0, DType::F32).unwrap();
            let mut opt = AdamW::new(&be, n, AdamWConfig::default()).unwrap();
            opt.step(&be, p.view_mut(), grads.view(), None, 0.25)
                .unwrap();
            outs.push(down(&p));
        }
        assert_eq!(outs[0], outs[1], "{dt} gradients = their f32 values");
    }
}

#[test]
fn sgd_follows_the_reference_in_every_mode() {
    let be = CpuBackend;
    let mut rng = StdRng::seed_from_u64(3);
    let n = 33_000;
    for (momentum, dampening, wd, nesterov) in [
        (0.0, 0.0, 0.0, false),
        (0.9, 0.0, 1e-2, false),
        (0.9, 0.1, 0.0, false),
        (0.9, 0.0, 1e-3, true),
    ] {
        let cfg = SgdConfig {
            lr: 0.05,
            momentum,
            dampening,
            weight_decay: wd,
            nesterov,
            ..SgdConfig::default()
        };
        let mut opt = Sgd::new(&be, n, cfg).unwrap();
        let p0 = rand_vec(&mut rng, n, 1.0);
        let mut p = be.upload_f32(&p0, DType::F32).unwrap();
        let mut model = be.zeros(DType::BF16, n).unwrap();
        let mut rp = f64s(&p0);
        let mut rbuf = None;
        for _ in 0..4 {
            let g = rand_vec(&mut rng, n, 0.5);
            let gb = be.upload_f32(&g, DType::F32).unwrap();
            opt.step(&be, p.view_mut(), gb.view(), Some(model.view_mut()), 2.0)
                .unwrap();
            let g64: Vec<f64> = g.iter().map(|&x| 2.0 * f64::from(x)).collect();
            let h = SgdHp {
                lr: 0.05,
                momentum: f64::from(momentum),
                dampening: f64::from(dampening),
                wd: f64::from(wd),
                nesterov,
            };
            reference::sgd(&mut rp, &mut rbuf, &g64, h);
        }
        let got = down(&p);
        assert_close64(
            &format!("sgd m={momentum} d={dampening} wd={wd} nesterov={nesterov}"),
            &got,
            &rp,
        );
        assert_eq!(
            down(&model),
            down(&be.upload_f32(&got, DType::BF16).unwrap())
        );
    }
}

#[test]
fn sgd_by_hand() {
    // p = 1, g = 0.5, lr = 0.1, momentum 0.9 (PyTorch SGD):
    // step 1: buf = g = 0.5,               p = 1 - 0.1 * 0.5 = 0.95
    // step 2: buf = 0.9 * 0.5 + 0.5 = 0.95, p = 0.95 - 0.1 * 0.95 = 0.855
    let be = CpuBackend;
    let cfg = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let mut opt = Sgd::new(&be, 1, cfg).unwrap();
    let mut p = be.upload_f32(&[1.0], DType::F32).unwrap();
    let g = be.upload_f32(&[0.5], DType::F32).unwrap();
    let mut hist = Vec::new();
    for _ in 0..2 {
        opt.step(&be, p.view_mut(), g.view(), None, 1.0).unwrap();
        hist.push((down(&p)[0], down(opt.momentum_buffer())[0]));
    }
    let want = [(0.95f64, 0.5f64), (0.855, 0.95)];
    for ((p, b), (wp, wb)) in hist.into_iter().zip(want) {
        assert!(
            (f64::from(p) - wp).abs() < 1e-6 && (f64::from(b) - wb).abs() < 1e-6,
            "{p} {b}"
        );
    }
}

#[test]
fn adamw_save_load_resumes_bit_for_bit() {
    let be = CpuBackend;
    let mut rng = StdRng::seed_from_u64(4);
    let n = 10_000;
    let groups = ParamGroup::decay_by_ndim([(0..6000, 2), (6000..7000, 1), (7000..n, 2)], 0.1);
    let cfg = AdamWConfig {
        rounding: Rounding::Stochastic { seed: 9 },
        ..AdamWConfig::default()
    };
    let grads: Vec<CpuBuffer> = (0..8)
        .map(|_| {
            be.upload_f32(&rand_vec(&mut rng, n, 0.1), DType::F32)
                .unwrap()
        })
        .collect();
    let p0 = rand_vec(&mut rng, n, 1.0);
    let mut a = AdamW::with_groups(&be, n, cfg, groups.clone()).unwrap();
    let mut pa = be.upload_f32(&p0, DType::F32).unwrap();
    let mut ma = be.zeros(DType::BF16, n).unwrap();
    for g in &grads[..4] {
        a.step(&be, pa.view_mut(), g.view(), Some(ma.view_mut()), 1.0)
            .unwrap();
    }
    a.set_lr(2e-3).unwrap();
    let dir = std::env::temp_dir().join(format!("mp-optim-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stem = dir.join("adamw");
    a.state(&be).unwrap().save(&stem).unwrap();
    let loaded = OptimizerState::load(&stem).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    // A fresh optimizer (other lr, other group settings) takes everything from the state.
    let mut b = AdamW::with_groups(&be, n, AdamWConfig::default(), groups).unwrap();
    b.load_state(&be, &loaded).unwrap();
    assert_eq!(b.step_count(), 4);
    assert_eq!(b.lr(), 2e-3);
    assert_eq!(b.config(), a.config());
    let mut pb = be.upload_f32(&down(&pa), DType::F32).unwrap();
    let mut mb = be.zeros(DType::BF16, n).unwrap();
    for g in &grads[4..] {
        a.step(&be, pa.view_mut(), g.view(), Some(ma.view_mut()), 1.0)
            .unwrap();
        b.step(&be, pb.view_mut(), g.view(), Some(mb.view_mut()), 1.0)
            .unwrap();
    }
    assert_eq!(down(&pa), down(&pb));
    assert_eq!(
        be.download_bytes(ma.view()).unwrap(),
        be.download_bytes(mb.view()).unwrap()
    );
    assert_eq!(down(a.exp_avg_sq()), down(b.exp_avg_sq()));
}

#[test]
fn load_state_mismatches_are_clear_errors_and_change_nothing() {
    let be = CpuBackend;
    let mut adam = AdamW::new(&be, 100, AdamWConfig::default()).unwrap();
    let sgd = Sgd::new(&be, 100, SgdConfig::default()).unwrap();
    let sgd_state = sgd.state(&be).unwrap();
    let e = adam.load_state(&be, &sgd_state).unwrap_err();
    assert!(
        matches!(e, OptimError::StateMismatch { .. }) && e.to_string().contains("saved by \"sgd\""),
        "{e}"
    );

    let other = AdamW::new(&be, 99, AdamWConfig::default())
        .unwrap()
        .state(&be)
        .unwrap();
    let e = adam.load_state(&be, &other).unwrap_err();
    assert!(e.to_string().contains("99 parameters"), "{e}");

    let split = AdamW::with_groups(
        &be,
        100,
        AdamWConfig::default(),
        ParamGroup::decay_by_ndim([(0..50, 2), (50..100, 1)], 0.1),
    )
    .unwrap()
    .state(&be)
    .unwrap();
    let e = adam.load_state(&be, &split).unwrap_err();
    assert!(e.to_string().contains("groups differ"), "{e}");

    let mut broken = adam.state(&be).unwrap();
    broken.tensors.retain(|(n, _)| n != "exp_avg_sq");
    broken.meta.step = 5;
    let e = adam.load_state(&be, &broken).unwrap_err();
    assert!(e.to_string().contains("exp_avg_sq is missing"), "{e}");
    assert_eq!(adam.step_count(), 0, "a failed load changes nothing");

    let mut bad_cfg = adam.state(&be).unwrap();
    bad_cfg.meta.config["beta1"] = serde_json::json!(1.5);
    let e = adam.load_state(&be, &bad_cfg).unwrap_err();
    assert!(e.to_string().contains("beta1"), "{e}");
}

#[test]
fn step_argument_errors() {
    let be = CpuBackend;
    let mut opt = AdamW::new(&be, 10, AdamWConfig::default()).unwrap();
    let mut p = be.zeros(DType::F32, 10).unwrap();
    let short = be.zeros(DType::F32, 9).unwrap();
    let e = opt
        .step(&be, p.view_mut(), short.view(), None, 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("grads has 9 elements"), "{e}");
    let g = be.zeros(DType::F32, 10).unwrap();
    let mut m = be.zeros(DType::BF16, 9).unwrap();
    let e = opt
        .step(&be, p.view_mut(), g.view(), Some(m.view_mut()), 1.0)
        .unwrap_err();
    assert!(e.to_string().contains("model has 9"), "{e}");
    let e = opt
        .step(&be, p.view_mut(), g.view(), None, f32::INFINITY)
        .unwrap_err();
    assert!(e.to_string().contains("grad_mult"), "{e}");
    let mut q = be.zeros(DType::F8E4M3, 10).unwrap();
    let e = opt
        .step(&be, q.view_mut(), g.view(), None, 1.0)
        .unwrap_err();
    assert!(matches!(e, OptimError::DType { .. }), "{e}");
    assert_eq!(opt.step_count(), 0, "failed steps do not count");

    let bad = AdamWConfig {
        beta2: 1.0,
        ..AdamWConfig::default()
    };
    assert!(AdamW::new(&be, 10, bad).is_err());
    let nest = SgdConfig {
        nesterov: true,
        ..SgdConfig::default()
    };
    let e = Sgd::new(&be, 10, nest).unwrap_err();
    assert!(e.to_string().contains("Nesterov"), "{e}");
    let e = AdamW::with_groups(
        &be,
        10,
        AdamWConfig::default(),
        vec![ParamGroup::new(0..11, 0.0)],
    )
    .unwrap_err();
    assert!(e.to_string().contains("not inside"), "{e}");
}
