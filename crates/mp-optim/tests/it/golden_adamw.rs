//! `golden_adamw_*`: 20-step `torch.optim.AdamW` trajectories (fp32). Shapes, hyper-parameters
//! (missing ones take `torch.optim.AdamW`'s defaults, as in the generating script), gradients
//! and every expected value are read from the file.

use mp_golden::{self as golden, assert_close, flat, num as f};
use mp_kernels::prelude::*;
use mp_kernels::{CpuBackend, CpuBuffer, DType};
use mp_optim::{AdamW, AdamWConfig, ParamGroup};
use serde_json::Value;

fn config(hyper: &Value) -> AdamWConfig {
    let d = AdamWConfig::default();
    let get = |k: &str, def: f32| hyper.get(k).map_or(def, |v| f(v) as f32);
    AdamWConfig {
        lr: get("lr", d.lr),
        beta1: hyper.get("betas").map_or(d.beta1, |b| f(&b[0]) as f32),
        beta2: hyper.get("betas").map_or(d.beta2, |b| f(&b[1]) as f32),
        eps: get("eps", d.eps),
        weight_decay: get("weight_decay", d.weight_decay),
        ..d
    }
}

/// Element ranges of the tensors of `shapes` in the flat arena.
fn ranges(shapes: &Value) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    shapes
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n: usize = s
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .product();
            start += n;
            start - n..start
        })
        .collect()
}

/// Runs the trajectory with a `model` copy of dtype `copy`, the arena split into one group
/// per tensor when `per_tensor_groups`; returns the final master weights.
fn run(file: &str, copy: DType, per_tensor_groups: bool) -> Vec<f32> {
    let g = golden::load_json(file);
    let be = CpuBackend;
    let cfg = config(&g["hyper"]);
    let init = flat(&g["init_params"]);
    let rs = ranges(&g["shapes"]);
    let n = rs.last().map_or(0, |r| r.end);
    assert_eq!(init.len(), n, "{file}: init_params match the shapes");
    let mut opt = if per_tensor_groups {
        let groups = rs
            .iter()
            .map(|r| ParamGroup::new(r.clone(), cfg.weight_decay))
            .collect();
        AdamW::with_groups(&be, n, cfg, groups).unwrap()
    } else {
        AdamW::new(&be, n, cfg).unwrap()
    };
    let mut params: CpuBuffer = be.upload_f32(&init, DType::F32).unwrap();
    let mut model = be.upload_f32(&init, copy).unwrap();
    let steps = g["grads"].as_array().unwrap();
    let expected = g["params_after"].as_array().unwrap();
    assert_eq!(steps.len(), expected.len());
    let mut master = init;
    let mut worst = 0.0f64;
    for (t, (gr, want)) in steps.iter().zip(expected).enumerate() {
        let grads = be.upload_f32(&flat(gr), DType::F32).unwrap();
        opt.step(
            &be,
            params.view_mut(),
            grads.view(),
            Some(model.view_mut()),
            1.0,
        )
        .unwrap();
        master = be.download_f32(params.view()).unwrap();
        worst = worst.max(assert_close(
            &format!("{file} step {t} params"),
            &master,
            &flat(want),
        ));
        let rne = be.upload_f32(&master, copy).unwrap();
        assert_eq!(
            be.download_bytes(model.view()).unwrap(),
            be.download_bytes(rne.view()).unwrap(),
            "{file} step {t}: the {copy} model copy is the RNE cast of the master"
        );
    }
    assert_eq!(opt.step_count() as usize, steps.len());
    let m = be.download_f32(opt.exp_avg().view()).unwrap();
    let v = be.download_f32(opt.exp_avg_sq().view()).unwrap();
    for (name, ours, key) in [
        ("exp_avg", &m, "exp_avg_after_last"),
        ("exp_avg_sq", &v, "exp_avg_sq_after_last"),
    ] {
        worst = worst.max(assert_close(
            &format!("{file} {name}"),
            ours,
            &flat(&g[key]),
        ));
    }
    println!(
        "{file} ({copy} copy): largest error {:.1}% of the tolerance bound",
        100.0 * worst
    );
    // The BF16 copy also matches an independent RNE cast (the `half` crate).
    if copy == DType::BF16 {
        let got = be.download_bytes(model.view()).unwrap();
        let want: Vec<u8> = master
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes())
            .collect();
        assert_eq!(
            got, want,
            "{file}: bf16 copy = half::bf16::from_f32(master)"
        );
    }
    master
}

#[test]
fn golden_adamw_default() {
    run("adamw_default.json", DType::BF16, false);
}

#[test]
fn golden_adamw_custom() {
    run("adamw_custom.json", DType::BF16, false);
}

#[test]
fn golden_adamw_f16_copy_and_per_tensor_groups() {
    for file in ["adamw_default.json", "adamw_custom.json"] {
        let one = run(file, DType::F16, false);
        let grouped = run(file, DType::F16, true);
        assert_eq!(one, grouped, "{file}: one group per tensor changes nothing");
    }
}
