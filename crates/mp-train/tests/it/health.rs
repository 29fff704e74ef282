//! Precision health against NumPy/ml_dtypes (`golden/precision_health.json`): exact counts of
//! the values each format loses, plain, at a loss scale and after per-tensor amax scaling, and
//! of the updates 16-bit weights would lose. Every input and expected count is read from the
//! file.

use mp_dtype::DType;
use mp_golden::num;
use mp_train::health;
use serde_json::Value;

fn dtype(name: &str) -> DType {
    match name {
        "fp16" => DType::F16,
        "bf16" => DType::BF16,
        "e4m3" => DType::F8E4M3,
        "e5m2" => DType::F8E5M2,
        other => panic!("golden format {other:?}"),
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| num(x) as f32)
        .collect()
}

fn check(what: &str, values: &[f32], dt: DType, scale: f32, want: &Value) {
    let (u, s, o) = health::format_counts(values, dt, scale);
    let field = |k: &str| want[k].as_u64().unwrap_or_else(|| panic!("{what}: {k}"));
    assert_eq!(
        (u, s, o),
        (field("underflow"), field("subnormal"), field("overflow")),
        "{what}: (underflow, subnormal, overflow) against ml_dtypes"
    );
}

#[test]
fn golden_health_counts_match_ml_dtypes() {
    let g = mp_golden::load_json("precision_health.json");
    let tensors = g["tensors"].as_array().unwrap();
    assert!(!tensors.is_empty());
    let mut checked = 0;
    for (i, t) in tensors.iter().enumerate() {
        let values = floats(&t["values"]);
        for sc in t["scales"].as_array().unwrap() {
            let scale = num(&sc["scale"]) as f32;
            for (name, want) in sc["counts"].as_object().unwrap() {
                check(
                    &format!("tensor {i} {name} x{scale}"),
                    &values,
                    dtype(name),
                    scale,
                    want,
                );
                checked += 1;
            }
        }
        for (name, want) in t["amax_scaled"].as_object().unwrap() {
            let dt = dtype(name);
            let scale = health::amax_scale(&values, dt);
            check(&format!("tensor {i} {name} amax"), &values, dt, scale, want);
            // and the fractions the records hold are these counts over the elements
            let f = health::tensor_formats(&values)[&format!("{name}_amax")];
            assert_eq!(
                (f.underflow * values.len() as f64).round(),
                want["underflow"].as_u64().unwrap() as f64
            );
            checked += 1;
        }
    }
    let lu = &g["lost_update"];
    let (before, after) = (floats(&lu["before"]), floats(&lu["after"]));
    for (name, want) in lu["lost"].as_object().unwrap() {
        let (updated, lost) = health::lost_update_counts(&before, &after, dtype(name));
        assert_eq!(updated, lu["updated"].as_u64().unwrap(), "non-zero updates");
        assert_eq!(lost, want.as_u64().unwrap(), "{name}: updates lost");
        checked += 1;
    }
    eprintln!("golden_health_counts_match_ml_dtypes: {checked} exact counts");
}

#[test]
fn every_logged_step_has_a_health_record_of_every_tensor() {
    let dir = crate::common::scratch("health-run");
    let mut cfg = crate::common::tiny(6);
    cfg.precision_health = true;
    cfg.logging_steps = 2;
    let out = dir.join("run");
    mp_train::run::train(
        cfg,
        mp_train::run::RunOptions {
            checkpoints: false,
            progress: mp_train::run::Progress::Quiet,
            ..mp_train::run::RunOptions::new(&out)
        },
    )
    .unwrap();
    let recs: Vec<health::HealthRecord> =
        mp_train::metrics::read_jsonl(&out.join(mp_train::run::HEALTH_FILE)).unwrap();
    assert_eq!(recs.iter().map(|r| r.step).collect::<Vec<_>>(), [2, 4, 6]);
    for r in &recs {
        assert_eq!(
            r.tensors.len(),
            16,
            "every parameter tensor of a 1-layer GPT"
        );
        for t in &r.tensors {
            for f in ["fp16", "bf16", "e4m3", "e5m2", "e4m3_amax", "e5m2_amax"] {
                assert!(t.grad.contains_key(f) && t.weight.contains_key(f), "{f}");
            }
            let lost = t
                .lost_update_fraction
                .as_ref()
                .expect("bf16 has master weights");
            assert!((0.0..=1.0).contains(&lost["bf16"]));
        }
    }
    assert!(out.join("precision_health.png").is_file());
}
