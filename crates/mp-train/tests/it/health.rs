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
        assert!(
            r.activations
                .iter()
                .any(|a| a.name == "transformer.h.0/linear_gelu.0"),
            "the saved activations are recorded"
        );
    }
    assert!(out.join("precision_health.png").is_file());
}

/// The record counted on the backend `be` equals the same statistics of the downloaded arenas
/// counted on the host (and so ml_dtypes', above), after one bf16 step.
fn record_equals_the_host_counts<B: mp_kernels::Backend>(be: B) {
    use mp_train::{data::Dataset, train::Trainer};
    let mut cfg = crate::common::tiny(1);
    // updates small enough that 16-bit weights lose some of them
    cfg.learning_rate = 1e-5;
    let ds = Dataset::from_config(&cfg.data, cfg.seed, cfg.model.n_positions).unwrap();
    let mut tr = Trainer::new(be, cfg.clone(), ds).unwrap();
    let snapshot = tr.weights_snapshot().unwrap();
    let before = tr.weights_host().unwrap();
    let s = tr.step_agreed(false).unwrap().0;
    let (grads, after) = (tr.grads_host().unwrap(), tr.weights_host().unwrap());
    assert_ne!(before, after, "the step moved the weights");
    let rec = tr.health(&grads, s.scale, Some(&snapshot)).unwrap();
    assert_eq!(rec.tensors.len(), tr.model.layout().entries().len());
    let mut lost_any = false;
    for (t, e) in rec.tensors.iter().zip(tr.model.layout().entries()) {
        let r = e.offset..e.offset + e.numel();
        assert_eq!(
            t.grad,
            health::tensor_formats(&grads[r.clone()]),
            "{}",
            t.name
        );
        assert_eq!(
            t.weight,
            health::tensor_formats(&after[r.clone()]),
            "{}",
            t.name
        );
        let lost = t.lost_update_fraction.as_ref().unwrap();
        for (name, dt) in [("bf16", DType::BF16), ("fp16", DType::F16)] {
            let want = health::lost_update_fraction(&before[r.clone()], &after[r.clone()], dt);
            assert_eq!(lost[name], want, "{} {name}", t.name);
            lost_any |= want > 0.0;
        }
    }
    assert!(lost_any, "some update is below half a 16-bit ulp");
}

#[test]
fn the_record_counted_on_the_backend_equals_the_host_counts() {
    record_equals_the_host_counts(mp_kernels::CpuBackend::new());
}

#[cfg(feature = "wgpu")]
#[test]
fn the_record_counted_on_the_backend_equals_the_host_counts_wgpu() {
    let name = "the_record_counted_on_the_backend_equals_the_host_counts_wgpu";
    if crate::common::wgpu_backend(name).is_some() {
        record_equals_the_host_counts(mp_kernels::wgpu::WgpuBackend::new().unwrap());
    }
}

#[cfg(feature = "cuda")]
#[test]
fn the_record_counted_on_the_backend_equals_the_host_counts_cuda() {
    let name = "the_record_counted_on_the_backend_equals_the_host_counts_cuda";
    if crate::common::cuda_backend(name).is_some() {
        record_equals_the_host_counts(mp_kernels::cuda::CudaBackend::new().unwrap());
    }
}

#[test]
fn the_saved_activations_are_named_by_layer_and_counted_exactly() {
    use mp_kernels::CpuBackend;
    use mp_train::{data::Dataset, train::Trainer};
    let cfg = crate::common::tiny(1);
    let ds = Dataset::from_config(&cfg.data, cfg.seed, cfg.model.n_positions).unwrap();
    let mut tr = Trainer::new(CpuBackend::new(), cfg.clone(), ds).unwrap();
    let weights = tr.weights_host().unwrap();
    let t = tr.seq_len();
    let batch = tr.data.train_batch(cfg.seed, 0, cfg.batch_size, t).unwrap();
    tr.activation_health = Some(Vec::new());
    tr.step_agreed(false).unwrap();
    let acts = tr.activation_health.take().unwrap();
    let names: Vec<&str> = acts.iter().map(|a| a.name.as_str()).collect();
    let block = [
        "layer_norm.0",
        "linear.0",
        "attention.0",
        "linear.1",
        "add.0",
        "layer_norm.1",
        "linear_gelu.0/pre",
        "linear_gelu.0",
        "linear.2",
        "add.1",
    ];
    let mut want = vec![
        "transformer.wte/embedding.0".to_string(),
        "transformer.wte/embedding.1".to_string(),
    ];
    want.extend(block.iter().map(|op| format!("transformer.h.0/{op}")));
    want.extend(["lm_head/layer_norm.0".into(), "lm_head/linear.0".into()]);
    assert_eq!(names, want);
    // the token embedding's output is the rows of the batch's tokens: its counts are those of
    // the same values taken from the weights
    let wte = tr.model.layout().get("transformer.wte.weight").unwrap();
    let c = cfg.model.n_embd;
    let rows: Vec<f32> = batch
        .inputs
        .iter()
        .flat_map(|&id| {
            let o = wte.offset + id as usize * c;
            weights[o..o + c].to_vec()
        })
        .collect();
    assert_eq!(acts[0].shape, [rows.len() / c, c]);
    assert_eq!(acts[0].formats, health::tensor_formats(&rows));
    for a in &acts {
        assert_eq!(a.numel, a.shape.iter().product::<usize>(), "{}", a.name);
        for f in a.formats.values() {
            assert!((0.0..=1.0).contains(&(f.underflow + f.subnormal + f.overflow)));
        }
    }
    // the GEMMs' outputs are stored in the autocast dtype, the residual stream in FP32
    assert_eq!(acts[3].dtype, "bf16");
    assert_eq!(acts[6].dtype, "f32");
}
