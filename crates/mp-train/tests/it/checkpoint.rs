//! Checkpoints: weights load back with identical logits, the HF config, rotation.

use crate::common::{scratch, tiny};
use mp_kernels::CpuBackend;
use mp_train::checkpoint::{self, HfGpt2Config};
use mp_train::config::Precision;
use mp_train::data::Dataset;
use mp_train::train::Trainer;

fn logits(tr: &Trainer<CpuBackend>, ds: &Dataset) -> Vec<u32> {
    let b = ds.val_batch(0, 1, 2, 32).unwrap();
    let batch = tr.model.batch(&tr.be, &b.inputs, None, 2, 32).unwrap();
    let (l, _) = tr.model.evaluate(&tr.be, &batch, tr.autocast()).unwrap();
    l.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn checkpoint_loads_back_with_identical_logits() {
    for precision in [
        Precision::Fp32,
        Precision::Bf16,
        Precision::Fp16,
        Precision::Bf16Sr,
    ] {
        let dir = scratch(&format!("ckpt-logits-{precision}"));
        let mut cfg = tiny(3);
        cfg.precision = precision;
        let ds = Dataset::from_config(&cfg.data, cfg.seed, 32).unwrap();
        let mut tr = Trainer::new(CpuBackend::new(), cfg.clone(), ds.clone()).unwrap();
        for _ in 0..3 {
            tr.step().unwrap();
        }
        let before = logits(&tr, &ds);
        let path = tr.save_checkpoint(&dir, None).unwrap();
        assert_eq!(path.file_name().unwrap(), "checkpoint-3");
        let state = checkpoint::verify(&path).unwrap();
        assert_eq!(state.global_step, 3);
        let mut fresh = Trainer::new(CpuBackend::new(), cfg.clone(), ds.clone()).unwrap();
        assert_ne!(
            logits(&fresh, &ds),
            before,
            "{precision}: training changed nothing"
        );
        fresh.load_weights(&path).unwrap();
        assert_eq!(
            logits(&fresh, &ds),
            before,
            "{precision}: logits differ after reload"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn hf_config_describes_the_model() {
    let dir = scratch("ckpt-hf");
    let cfg = tiny(1);
    let ds = Dataset::from_config(&cfg.data, cfg.seed, 32).unwrap();
    let tr = Trainer::new(CpuBackend::new(), cfg.clone(), ds).unwrap();
    let path = tr.save_checkpoint(&dir, None).unwrap();
    let text = std::fs::read_to_string(path.join("config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (k, v) in [
        ("model_type", serde_json::json!("gpt2")),
        ("n_embd", serde_json::json!(cfg.model.n_embd)),
        ("n_layer", serde_json::json!(cfg.model.n_layer)),
        ("n_head", serde_json::json!(cfg.model.n_head)),
        ("n_positions", serde_json::json!(cfg.model.n_positions)),
        ("vocab_size", serde_json::json!(cfg.model.vocab_size)),
        ("activation_function", serde_json::json!("gelu_new")),
        ("tie_word_embeddings", serde_json::json!(true)),
    ] {
        assert_eq!(json[k], v, "config.json field {k}");
    }
    let hf: HfGpt2Config = serde_json::from_str(&text).unwrap();
    assert_eq!(hf.model(), cfg.model);
    // Every HF GPT-2 tensor name is present with HF's Conv1D [in, out] layout.
    let bytes = std::fs::read(path.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let c = cfg.model.n_embd;
    assert_eq!(
        st.tensor("transformer.h.0.attn.c_attn.weight")
            .unwrap()
            .shape(),
        [c, 3 * c]
    );
    assert_eq!(
        st.tensor("transformer.wte.weight").unwrap().shape(),
        [256, c]
    );
    assert_eq!(
        st.tensor("transformer.ln_f.bias").unwrap().dtype(),
        safetensors::Dtype::F32
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn only_the_last_k_checkpoints_are_kept() {
    let dir = scratch("ckpt-rotate");
    let mut cfg = tiny(1);
    cfg.save_total_limit = 2;
    let ds = Dataset::from_config(&cfg.data, cfg.seed, 32).unwrap();
    let mut tr = Trainer::new(CpuBackend::new(), cfg, ds).unwrap();
    for _ in 0..4 {
        tr.step().unwrap();
        tr.save_checkpoint(&dir, None).unwrap();
    }
    let kept: Vec<u64> = checkpoint::list(&dir)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(kept, [3, 4]);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary folders left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn golden_checkpoint_matches_hf_gpt2_layout() {
    let golden = mp_golden::dir();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden.join("gpt2_tiny.json")).unwrap())
            .unwrap();
    let c = &spec["config"];
    let get = |k: &str| {
        c[k].as_u64()
            .unwrap_or_else(|| panic!("golden config lacks {k}")) as usize
    };
    let mut cfg = tiny(1);
    cfg.model.vocab_size = get("vocab_size");
    cfg.model.n_positions = get("n_positions");
    cfg.model.n_embd = get("n_embd");
    cfg.model.n_layer = get("n_layer");
    cfg.model.n_head = get("n_head");
    let dir = scratch("ckpt-golden");
    let ds = Dataset::from_config(&cfg.data, cfg.seed, cfg.model.n_positions).unwrap();
    let tr = Trainer::new(CpuBackend::new(), cfg, ds).unwrap();
    let path = tr.save_checkpoint(&dir, None).unwrap();
    let describe = |bytes: &[u8]| {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let mut v: Vec<(String, Vec<usize>, String)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec(), format!("{:?}", t.dtype())))
            .collect();
        v.sort();
        v
    };
    let ours = describe(&std::fs::read(path.join("model.safetensors")).unwrap());
    let hf = describe(&std::fs::read(golden.join("gpt2_tiny.safetensors")).unwrap());
    assert_eq!(
        ours, hf,
        "tensor names, shapes and dtypes differ from transformers' GPT2LMHeadModel file"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `Model::from_checkpoint` reads a checkpoint of either architecture (same logits as the
/// trainer that wrote it) after checking its manifest: a flipped byte in the weights is an
/// error naming the file.
#[test]
fn a_model_loads_from_a_verified_checkpoint() {
    for arch in [mp_train::config::Arch::Gpt2, mp_train::config::Arch::Llama] {
        let dir = scratch(&format!("ckpt-model-{}", arch.name()));
        let mut cfg = tiny(2);
        cfg.model.arch = arch;
        let ds = Dataset::from_config(&cfg.data, cfg.seed, 32).unwrap();
        let mut tr = Trainer::new(CpuBackend::new(), cfg.clone(), ds.clone()).unwrap();
        tr.step().unwrap();
        let path = tr.save_checkpoint(&dir, None).unwrap();
        let m = mp_train::model::Model::from_checkpoint(&tr.be, &path).unwrap();
        assert_eq!(m.arch(), arch);
        let b = ds.val_batch(0, 1, 2, 32).unwrap();
        let batch = m.batch(&tr.be, &b.inputs, None, 2, 32).unwrap();
        let (got, _) = m
            .evaluate(&tr.be, &batch, mp_autograd::Autocast::OFF)
            .unwrap();
        let mut fp32 = Trainer::new(CpuBackend::new(), cfg.clone(), ds.clone()).unwrap();
        fp32.load_weights(&path).unwrap();
        let (want, _) = fp32
            .model
            .evaluate(&fp32.be, &batch, mp_autograd::Autocast::OFF)
            .unwrap();
        assert_eq!(got, want, "{}", arch.name());
        let weights = path.join(checkpoint::MODEL_FILE);
        let mut bytes = std::fs::read(&weights).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&weights, bytes).unwrap();
        let err = mp_train::model::Model::from_checkpoint(&tr.be, &path)
            .err()
            .expect("a corrupt checkpoint loads")
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }
}
