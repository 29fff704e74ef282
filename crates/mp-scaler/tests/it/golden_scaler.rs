//! `golden_scaler_*`: the scaler and AdamW against `torch.amp.GradScaler` + `torch.optim.AdamW`
//! traces. Everything (shapes, scaler config, AdamW hyper-parameters, every expected value) is
//! read from the file.

use mp_golden::{self as golden, assert_close, flat, num as f};
use mp_kernels::prelude::*;
use mp_kernels::{CpuBackend, CpuBuffer, DType};
use mp_optim::{AdamW, AdamWConfig};
use mp_scaler::{GradScaler, OptimizerId, ScalerConfig, ScalerState};

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

fn run_trace(file: &str) {
    let g = golden::load_json(file);
    let be = CpuBackend;

    let c = &g["config"];
    let config = ScalerConfig::default()
        .with_init_scale(f(&c["init_scale"]) as f32)
        .with_factors(f(&c["growth_factor"]), f(&c["backoff_factor"]))
        .with_growth_interval(f(&c["growth_interval"]) as u32);
    let mut scaler = GradScaler::new(config).unwrap();

    let a = &g["adamw"];
    let hp = AdamWConfig {
        lr: f(&a["lr"]) as f32,
        beta1: f(&a["betas"][0]) as f32,
        beta2: f(&a["betas"][1]) as f32,
        eps: f(&a["eps"]) as f32,
        weight_decay: f(&a["weight_decay"]) as f32,
        ..AdamWConfig::default()
    };
    let init = flat(&g["init_params"]);
    let n: usize = g["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .product::<usize>()
        })
        .sum();
    assert_eq!(init.len(), n, "init_params match the shapes");

    let mut params = be.upload_f32(&init, DType::F32).unwrap();
    let mut model = be.upload_f32(&init, DType::BF16).unwrap();
    let mut opt = AdamW::new(&be, n, hp).unwrap();

    let mut worst = 0.0f64;
    for (t, s) in g["steps"].as_array().unwrap().iter().enumerate() {
        let scale = scaler.get_scale();
        assert_eq!(
            f64::from(scale),
            f(&s["scale_used"]),
            "{file} step {t}: scale used"
        );
        let scaled = flat(&s["scaled_grads"]);
        let grads = be.upload_f32(&scaled, DType::F32).unwrap();
        let before = opt.step_count();
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
        let skipped = stepped.is_none();
        assert_eq!(
            skipped,
            s["skipped"].as_bool().unwrap(),
            "{file} step {t}: skipped"
        );
        assert_eq!(opt.step_count(), before + u64::from(!skipped));
        scaler.update(None).unwrap();
        assert_eq!(
            f64::from(scaler.get_scale()),
            f(&s["scale_after"]),
            "{file} step {t}: scale after"
        );
        assert_eq!(
            u64::from(scaler.growth_tracker()),
            s["growth_tracker_after"].as_u64().unwrap(),
            "{file} step {t}: growth tracker"
        );
        let master = be.download_f32(params.view()).unwrap();
        worst = worst.max(assert_close(
            &format!("{file} step {t} params"),
            &master,
            &flat(&s["params_after"]),
        ));
        let copy: Vec<u16> = bytemuck_u16(&be.download_bytes(model.view()).unwrap());
        let rne: Vec<u16> = master
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_bits())
            .collect();
        assert_eq!(copy, rne, "{file} step {t}: bf16 model copy = RNE(master)");
    }

    println!(
        "{file}: largest error {:.1}% of the tolerance bound",
        100.0 * worst
    );
    let ours: serde_json::Value = serde_json::from_str(&scaler.state_dict_json()).unwrap();
    assert_eq!(ours, g["state_dict"], "{file}: final state_dict");
    // And PyTorch's dict loads into a fresh scaler, giving the same state.
    let state = ScalerState::from_json(&g["state_dict"].to_string()).unwrap();
    let mut fresh = GradScaler::default();
    fresh.load_state_dict(&state).unwrap();
    assert_eq!(fresh.state_dict(), scaler.state_dict());
}

fn bytemuck_u16(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn golden_scaler_adamw_trace() {
    run_trace("grad_scaler_adamw_trace.json");
}

#[test]
fn golden_scaler_growth_to_max() {
    run_trace("grad_scaler_growth_to_max.json");
}

/// The same trace driven through the single-optimizer API (`check`, `should_step`, `update`)
/// gives the same parameters bit for bit as the PyTorch-shaped one.
#[test]
fn golden_scaler_check_api_matches_step_api() {
    let file = "grad_scaler_adamw_trace.json";
    let g = golden::load_json(file);
    let be = CpuBackend;
    let c = &g["config"];
    let config = ScalerConfig::default()
        .with_init_scale(f(&c["init_scale"]) as f32)
        .with_factors(f(&c["growth_factor"]), f(&c["backoff_factor"]))
        .with_growth_interval(f(&c["growth_interval"]) as u32);
    let a = &g["adamw"];
    let hp = AdamWConfig {
        lr: f(&a["lr"]) as f32,
        beta1: f(&a["betas"][0]) as f32,
        beta2: f(&a["betas"][1]) as f32,
        eps: f(&a["eps"]) as f32,
        weight_decay: f(&a["weight_decay"]) as f32,
        ..AdamWConfig::default()
    };
    let init = flat(&g["init_params"]);
    let mut scaler = GradScaler::new(config).unwrap();
    let mut params: CpuBuffer = be.upload_f32(&init, DType::F32).unwrap();
    let mut opt = AdamW::new(&be, init.len(), hp).unwrap();
    for (t, s) in g["steps"].as_array().unwrap().iter().enumerate() {
        let grads = be
            .upload_f32(&flat(&s["scaled_grads"]), DType::F32)
            .unwrap();
        let check = scaler.check(&be, grads.view()).unwrap();
        assert_eq!(
            !scaler.should_step(),
            s["skipped"].as_bool().unwrap(),
            "step {t}"
        );
        if scaler.should_step() {
            assert!(check.grad_norm.is_finite());
            opt.step(
                &be,
                params.view_mut(),
                grads.view(),
                None,
                check.grad_mult(1.0),
            )
            .unwrap();
        }
        scaler.update(None).unwrap();
        let master = be.download_f32(params.view()).unwrap();
        assert_close(&format!("step {t}"), &master, &flat(&s["params_after"]));
    }
}
