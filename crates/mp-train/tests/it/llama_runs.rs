//! The Llama through the trainer: a model folder written by HF transformers (the golden
//! `llama_tiny` files saved as `config.json` + `model.safetensors`) starts a fine-tuning run
//! (`init_from`), is sampled and evaluated as it is, and a checkpoint of ours describes itself
//! as an HF `LlamaForCausalLM`.

use crate::common::{quiet, scratch, tiny};
use mp_train::checkpoint;
use mp_train::config::Arch;
use mp_train::metrics::{StepRecord, read_jsonl};
use mp_train::run::{RunOptions, train};
use mp_train::tools::{self, SampleOptions};
use std::path::{Path, PathBuf};

/// The golden Llama as HF's `save_pretrained` lays it out.
fn hf_folder(name: &str) -> PathBuf {
    let dir = scratch(name).join("hf");
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to) in [
        ("llama_tiny.config.json", checkpoint::HF_CONFIG_FILE),
        ("llama_tiny.safetensors", checkpoint::MODEL_FILE),
    ] {
        std::fs::copy(mp_golden::path(from), dir.join(to)).unwrap();
    }
    dir
}

#[test]
fn an_hf_llama_folder_fine_tunes_samples_and_evaluates() {
    let hf = hf_folder("llama-hf");
    let out = hf.parent().unwrap().join("run");
    let mut cfg = tiny(6);
    cfg.model = Default::default(); // replaced by the folder's config.json
    let summary = train(
        cfg,
        RunOptions {
            init_from: Some(hf.clone()),
            checkpoints: true,
            ..quiet(&out)
        },
    )
    .unwrap();
    assert_eq!(summary.steps, 6);
    let recs: Vec<StepRecord> = read_jsonl(&out.join("metrics.jsonl")).unwrap();
    assert!(recs[5].loss < recs[0].loss, "{recs:?}");
    // the same model from our own initialisation starts elsewhere: the weights were loaded
    let mut fresh = tiny(1);
    fresh.model = checkpoint::hf_model(&hf).unwrap();
    let fresh_out = hf.parent().unwrap().join("fresh");
    train(fresh, quiet(&fresh_out)).unwrap();
    let first: Vec<StepRecord> = read_jsonl(&fresh_out.join("metrics.jsonl")).unwrap();
    assert_ne!(
        first[0].loss.to_bits(),
        recs[0].loss.to_bits(),
        "weights not loaded"
    );
    // the run's checkpoint is an HF Llama with the golden shape
    let ckpt = out.join("checkpoint-6");
    let m = checkpoint::hf_model(&ckpt).unwrap();
    assert_eq!((m.arch, m.n_layer, m.kv_heads()), (Arch::Llama, 2, 2));
    let text = std::fs::read_to_string(ckpt.join(checkpoint::HF_CONFIG_FILE)).unwrap();
    assert!(text.contains("\"LlamaForCausalLM\""), "{text}");
    // the HF folder itself samples (greedy, so twice the same) and evaluates
    let opts = SampleOptions {
        prompt: "12+34=".into(),
        tokens: 5,
        temperature: 0.0,
        seed: 0,
    };
    let a = tools::sample(&hf, opts.clone()).unwrap();
    assert_eq!(a.tokens.len(), 5);
    assert_eq!(tools::sample(&hf, opts).unwrap(), a);
    let eval = tools::evaluate(&hf, &[]).unwrap();
    assert!(eval.val_loss.is_finite() && eval.val_loss > 5.0, "{eval:?}");
}

#[test]
fn init_from_and_resume_together_are_refused() {
    let hf = hf_folder("llama-hf-both");
    let out = hf.parent().unwrap().join("run");
    let err = train(
        tiny(2),
        RunOptions {
            init_from: Some(hf.clone()),
            resume: Some(hf),
            ..quiet(&out)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--init-from") && err.contains("--resume"),
        "{err}"
    );
    assert!(!out.exists(), "a refused run left {}", out.display());
}

/// `configs/llama.toml`, the default Llama of the README, is a valid Llama config of the
/// embedded corpus, and with `n_kv_head` set below `n_head` it is a grouped-query one.
#[test]
fn the_default_llama_config_is_a_valid_llama() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/llama.toml");
    let cfg = mp_train::config::TrainConfig::load(Some(&path), &[]).unwrap();
    assert_eq!(cfg.model.arch, Arch::Llama);
    assert_eq!(cfg.data.path, None, "the embedded arithmetic corpus");
    cfg.model.llama().validate().unwrap();
    let gqa = ["model.n_kv_head=2".to_string()];
    let cfg = mp_train::config::TrainConfig::load(Some(&path), &gqa).unwrap();
    assert!(cfg.model.kv_heads() < cfg.model.n_head, "{:?}", cfg.model);
    cfg.model.llama().validate().unwrap();
}
