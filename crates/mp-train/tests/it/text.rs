//! Real text: GPT-2's BPE against OpenAI's encoder (`tiktoken-rs`'s `r50k_base`), `tokenize`
//! into llm.c shards, training from shards with a bit-exact resume, checkpoints that carry the
//! tokenizer, decoded samples, bad shards, and the TensorBoard event file.

use crate::common::{scratch, tiny};
use mp_train::checkpoint;
use mp_train::config::TrainConfig;
use mp_train::metrics::{EvalRecord, StepRecord, read_jsonl};
use mp_train::run::{Progress, RunOptions, train};
use mp_train::shards::Shard;
use mp_train::tokenizer::Tokenizer;
use mp_train::tools::{self, SampleOptions, TokenizeOptions};
use std::path::{Path, PathBuf};

/// GPT-2's `vocab.json` + `merges.txt`: OpenAI's `encoder.json` and `vocab.bpe`, which the
/// `tiktoken-rs` dev-dependency ships in its `assets/` (found through `cargo metadata`),
/// copied into a folder under those names.
///
/// The metadata is filtered to the host platform: a build downloads only the host's packages,
/// and an offline `cargo metadata` over every platform would fail on the others (Windows-only
/// crates) on a fresh machine.
pub fn gpt2_tokenizer_dir(name: &str) -> PathBuf {
    let rustc = std::process::Command::new(std::env::var("RUSTC").unwrap_or("rustc".into()))
        .arg("-vV")
        .output()
        .expect("running rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host triple");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "tiktoken-rs")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("tiktoken-rs among the packages");
    let assets = Path::new(manifest).parent().unwrap().join("assets");
    let dir = scratch(name).join("gpt2-tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(assets.join("encoder.json"), dir.join("vocab.json")).unwrap();
    std::fs::copy(assets.join("vocab.bpe"), dir.join("merges.txt")).unwrap();
    dir
}

/// Real English text: this repository's documentation, and a paragraph of the cases
/// byte-level BPE has to get right (contractions, numbers, runs of spaces and newlines,
/// non-ASCII, an end-of-text token inside the text).
fn english_documents(dir: &Path) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut docs: Vec<PathBuf> = [
        "README.md",
        "docs/ARCHITECTURE.md",
        "docs/precision-study.md",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    let tricky = dir.join("tricky.txt");
    std::fs::write(
        &tricky,
        "It's 2026: they'll train 124M-parameter models at 550,000 tokens/s.\n\n\n   \
         Indented   with\ttabs\t\tand  double  spaces.  Naïve café, 東京, émigré — “quotes”.\n\
         I'd've said <|endoftext|> ends a document. 3.14159 + 2.71828 = 5.85987\r\n",
    )
    .unwrap();
    docs.push(tricky);
    docs
}

fn read_shard(p: &Path) -> Vec<u32> {
    let s = Shard::open(p).unwrap();
    let mut out = Vec::new();
    s.read(0, s.len(), usize::MAX, &mut out).unwrap();
    out
}

fn tokenize_docs(dir: &Path, tok: &Path) -> (PathBuf, Vec<PathBuf>, tools::TokenizeSummary) {
    let docs = english_documents(dir);
    let shards = dir.join("shards");
    let summary = tools::tokenize(&TokenizeOptions {
        tokenizer: tok.display().to_string(),
        out: shards.clone(),
        inputs: docs.clone(),
        name: "docs".into(),
        val_fraction: 0.1,
        shard_tokens: 4_000,
        progress: false,
    })
    .unwrap();
    (shards, docs, summary)
}

#[test]
fn gpt2_bpe_tokenize_matches_openai_encoder() {
    let dir = scratch("bpe-openai");
    let tok = gpt2_tokenizer_dir("bpe-openai");
    let (_, docs, summary) = tokenize_docs(&dir, &tok);
    let bpe = tiktoken_rs::r50k_base().unwrap();
    let eot = 50256u32;
    let mut want: Vec<u32> = Vec::new();
    for d in &docs {
        let text = std::fs::read_to_string(d).unwrap();
        want.push(eot);
        // the text's own "<|endoftext|>" is the special token, as GPT-2's encoder with
        // allowed_special="all" gives it
        want.extend(bpe.encode_with_special_tokens(&text));
    }
    let got: Vec<u32> = summary
        .val_shards
        .iter()
        .chain(&summary.train_shards)
        .flat_map(|p| read_shard(p))
        .collect();
    assert_eq!(summary.documents, docs.len());
    assert_eq!(summary.tokens, want.len());
    assert!(summary.train_shards.len() >= 2, "{summary:?}");
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        first_diff, None,
        "token {first_diff:?} differs from OpenAI's encoder"
    );
    assert_eq!(got, want);
    // the validation shards hold the first tenth
    let val: usize = summary.val_shards.iter().map(|p| read_shard(p).len()).sum();
    assert_eq!(val, (want.len() as f64 * 0.1).round() as usize);
    // and the tokenizer decodes them back to the text
    let t = Tokenizer::load(&tok).unwrap();
    let text = std::fs::read_to_string(&docs[3]).unwrap();
    assert_eq!(t.decode(&t.encode(&text).unwrap()).unwrap(), text);
    // tokenize never overwrites
    let again = tools::tokenize(&TokenizeOptions {
        tokenizer: tok.display().to_string(),
        out: dir.join("shards"),
        inputs: docs,
        name: "docs".into(),
        val_fraction: 0.1,
        shard_tokens: 4_000,
        progress: false,
    });
    assert!(again.unwrap_err().to_string().contains("never overwrites"));
}

/// A small GPT-2-vocabulary run on the shards of `shards` with tokenizer `tok`.
fn shard_config(shards: &Path, tok: &Path, steps: u64) -> TrainConfig {
    let mut cfg = tiny(steps);
    cfg.data.path = Some(shards.to_path_buf());
    cfg.tokenizer = tok.display().to_string();
    cfg.eval_steps = 4;
    cfg.save_steps = 4;
    cfg
}

fn quiet(out: &Path) -> RunOptions {
    RunOptions {
        plots: false,
        progress: Progress::Quiet,
        ..RunOptions::new(out)
    }
}

#[test]
fn training_from_shards_resumes_bit_exact_and_checkpoints_carry_the_tokenizer() {
    let dir = scratch("shard-train");
    let tok = gpt2_tokenizer_dir("shard-train");
    let (shards, _, _) = tokenize_docs(&dir, &tok);
    let cfg = shard_config(&shards, &tok, 8);
    let full = dir.join("full");
    let s = train(cfg.clone(), quiet(&full)).unwrap();
    assert!(s.final_val_loss.is_finite());
    let resumed = dir.join("resumed");
    train(
        cfg,
        RunOptions {
            resume: Some(full.join("checkpoint-4")),
            ..quiet(&resumed)
        },
    )
    .unwrap();
    let bits = |p: &Path| -> Vec<(u64, u32)> {
        read_jsonl::<StepRecord>(&p.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter(|r| r.step > 4)
            .map(|r| (r.step, r.loss.to_bits()))
            .collect()
    };
    assert_eq!(bits(&resumed), bits(&full), "resumed shard losses differ");
    assert_eq!(bits(&full).len(), 4);

    // the checkpoint: GPT-2's vocabulary (HF sees 50257), the tokenizer inside
    let ckpt = full.join("checkpoint-8");
    assert_eq!(checkpoint::hf_config(&ckpt).unwrap().vocab_size, 50257);
    let own = Tokenizer::load(&ckpt).unwrap();
    let reference = Tokenizer::load(&tok).unwrap();
    let text = "Mixed precision keeps FP32 master weights.";
    assert_eq!(own.encode(text).unwrap(), reference.encode(text).unwrap());
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["eos_token"], "<|endoftext|>");

    // sampling decodes with it, and eval reads the shards again
    let out = tools::sample(
        &ckpt,
        SampleOptions {
            prompt: text.into(),
            tokens: 6,
            temperature: 0.0,
            seed: 0,
        },
    )
    .unwrap();
    assert_eq!(out.tokens.len(), 6);
    assert_eq!(out.text, own.decode(&out.tokens).unwrap());
    let e = tools::evaluate(&ckpt, &[]).unwrap();
    let last: Vec<EvalRecord> = read_jsonl(&full.join("eval.jsonl")).unwrap();
    assert_eq!(
        e.val_loss.to_bits(),
        last.last().unwrap().val_loss.to_bits()
    );
}

#[test]
fn a_bad_shard_is_an_error_naming_the_file_and_offset() {
    let dir = scratch("bad-shard");
    let p = dir.join("x_train_000000.bin");
    let mut tokens: Vec<u32> = (0..2000).map(|i| i % 200).collect();
    tokens[1500] = 300; // outside the byte vocabulary, at byte 1024 + 2 * 1500
    mp_train::shards::write(&p, &tokens).unwrap();
    let mut cfg = tiny(40);
    cfg.data.path = Some(dir.clone());
    cfg.batch_size = 8;
    let err = train(cfg.clone(), quiet(&dir.join("run")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x_train_000000.bin") && err.contains("offset 4024") && err.contains("300"),
        "{err}"
    );
    // truncated: named before anything trains
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    let err = train(cfg, quiet(&dir.join("run2")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x_train_000000.bin") && err.contains("truncated"),
        "{err}"
    );
    assert!(
        !dir.join("run2").exists(),
        "a run that cannot start writes nothing"
    );
}

/// The scalar events of a TensorBoard event file: (step, tags), checking the framing.
fn scalar_events(path: &Path) -> Vec<(u64, Vec<String>)> {
    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = b[*at];
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        v
    }
    /// (field, wire type, payload) of each top-level field of a message.
    fn fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < b.len() {
            let key = varint(b, &mut at);
            let (field, wire) = (key >> 3, key & 7);
            let payload = match wire {
                0 => varint(b, &mut at).to_le_bytes().to_vec(),
                1 => {
                    at += 8;
                    b[at - 8..at].to_vec()
                }
                2 => {
                    let n = varint(b, &mut at) as usize;
                    at += n;
                    b[at - n..at].to_vec()
                }
                5 => {
                    at += 4;
                    b[at - 4..at].to_vec()
                }
                w => panic!("wire type {w}"),
            };
            out.push((field, wire, payload));
        }
        out
    }
    let bytes = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let event = &bytes[at + 12..at + 12 + len];
        at += 16 + len;
        let f = fields(event);
        let step = f.iter().find(|(n, _, _)| *n == 2).map_or(0, |(_, _, p)| {
            u64::from_le_bytes(p[..8].try_into().unwrap())
        });
        if let Some((_, _, summary)) = f.iter().find(|(n, _, _)| *n == 5) {
            let tags = fields(summary)
                .into_iter()
                .map(|(_, _, value)| {
                    let (_, _, tag) = fields(&value).into_iter().next().unwrap();
                    String::from_utf8(tag).unwrap()
                })
                .collect();
            out.push((step, tags));
        }
    }
    out
}

#[test]
fn the_event_file_has_every_logged_step_and_evaluation() {
    let dir = scratch("tensorboard");
    let mut cfg = tiny(6);
    cfg.eval_steps = 3;
    let out = dir.join("run");
    train(cfg, quiet(&out)).unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| mp_train::tensorboard::is_event_file(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let events = scalar_events(&files[0]);
    let logged: Vec<u64> = read_jsonl::<StepRecord>(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    let train_steps: Vec<u64> = events
        .iter()
        .filter(|(_, t)| t.iter().any(|t| t == "train/loss"))
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(train_steps, logged);
    for (_, tags) in events
        .iter()
        .filter(|(_, t)| t.contains(&"train/loss".to_string()))
    {
        for want in ["train/learning_rate", "train/loss_scale", "train/grad_norm"] {
            assert!(
                tags.iter().any(|t| t == want),
                "{want} missing from {tags:?}"
            );
        }
    }
    let eval_steps: Vec<u64> = events
        .iter()
        .filter(|(_, t)| t.iter().any(|t| t == "eval/loss"))
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(eval_steps, [3, 6]);
}

/// A folder laid out as the hub's `gpt2` is, made from one of our checkpoints: the base
/// model's tensor names (`h.0.attn.c_attn.weight`, no `transformer.`), a `config.json` without
/// the fields HF defaults, and GPT-2's `vocab.json` + `merges.txt` beside them.
fn hub_style_folder(ckpt: &Path, tok: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes = std::fs::read(ckpt.join(checkpoint::MODEL_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.strip_prefix("transformer.").unwrap_or(&n).to_string(), v))
        .collect();
    safetensors::serialize_to_file(tensors, None, &dir.join(checkpoint::MODEL_FILE)).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ckpt.join(checkpoint::HF_CONFIG_FILE)).unwrap(),
    )
    .unwrap();
    for k in [
        "tie_word_embeddings",
        "torch_dtype",
        "scale_attn_weights",
        "n_inner",
    ] {
        config.as_object_mut().unwrap().remove(k);
    }
    std::fs::write(dir.join(checkpoint::HF_CONFIG_FILE), config.to_string()).unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(tok.join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn a_hub_style_gpt2_folder_fine_tunes_on_text_with_its_own_tokenizer() {
    let dir = scratch("hub-gpt2");
    let tok = gpt2_tokenizer_dir("hub-gpt2");
    let (shards, docs, _) = tokenize_docs(&dir, &tok);
    let base = dir.join("base");
    train(shard_config(&shards, &tok, 4), quiet(&base)).unwrap();
    let hub = dir.join("hub");
    hub_style_folder(&base.join("checkpoint-4"), &tok, &hub);

    // fine-tune on a plain text file: the tokenizer is the folder's own (no --tokenizer)
    let mut cfg = tiny(3);
    cfg.model = Default::default(); // replaced by the folder's config.json
    cfg.data.path = Some(docs[0].clone());
    let out = dir.join("tuned");
    let s = train(
        cfg,
        RunOptions {
            init_from: Some(hub.clone()),
            ..quiet(&out)
        },
    )
    .unwrap();
    assert!(s.final_val_loss.is_finite());
    let tuned = out.join("checkpoint-3");
    assert_eq!(checkpoint::hf_config(&tuned).unwrap().vocab_size, 50257);
    assert!(tuned.join(mp_train::tokenizer::TOKENIZER_FILE).is_file());
    // the folder itself samples too, with its vocab.json + merges.txt
    let out = tools::sample(
        &hub,
        SampleOptions {
            prompt: "Hello".into(),
            tokens: 3,
            temperature: 0.0,
            seed: 0,
        },
    )
    .unwrap();
    assert_eq!(out.tokens.len(), 3);
}

/// A vocabulary that is not a multiple of 128 is padded in the arena (as llm.c pads 50257 to
/// 50304): the padding's logits are -inf, so the loss is the unpadded cross-entropy and the
/// padding rows get no gradient; files hold the vocabulary's rows only.
#[test]
fn a_padded_vocabulary_is_masked_out_of_the_loss_and_stored_unpadded() {
    use mp_autograd::Autocast;
    use mp_kernels::cpu::CpuBackend;
    use mp_kernels::prelude::*;
    use mp_train::model::{Gpt, GptConfig};
    let be = CpuBackend::new();
    let config = GptConfig {
        vocab_size: 200,
        n_positions: 16,
        n_embd: 16,
        n_layer: 1,
        n_head: 2,
        layer_norm_epsilon: 1e-5,
        initializer_range: 0.02,
    };
    let mut gpt = Gpt::new(&be, config, 3).unwrap();
    let (b, t) = (2, 16);
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 37 % 200) as u32).collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 53 % 200) as u32).collect();
    let batch = gpt.batch(&be, &ids, Some(&targets), b, t).unwrap();
    let (logits, loss) = gpt.evaluate(&be, &batch, Autocast::OFF).unwrap();
    assert_eq!(logits.len(), b * t * 256);
    let mut want = 0.0f64;
    for (row, &tg) in logits.chunks_exact(256).zip(&targets) {
        assert!(row[200..].iter().all(|&x| x == f32::NEG_INFINITY));
        let real = &row[..200];
        let max = real.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + real
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        want += lse - real[tg as usize] as f64;
    }
    want /= (b * t) as f64;
    let loss = loss.unwrap() as f64;
    assert!((loss - want).abs() < 1e-5, "loss {loss} vs unpadded {want}");

    gpt.zero_grads(&be).unwrap();
    gpt.forward_backward(&be, &batch, Autocast::OFF, 1.0)
        .unwrap();
    let grads = gpt.named_grads(&be).unwrap();
    let wte = &grads
        .iter()
        .find(|(n, _)| n == "transformer.wte.weight")
        .unwrap()
        .1;
    assert_eq!(wte.len(), 256 * 16);
    assert!(
        wte[200 * 16..].iter().all(|&g| g == 0.0),
        "padding rows' gradient: {:?}",
        &wte[200 * 16..200 * 16 + 8]
    );
    assert!(wte[..200 * 16].iter().any(|&g| g != 0.0));

    let dir = scratch("padded-vocab");
    let file = dir.join("model.safetensors");
    gpt.save_safetensors(&be, &file).unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("transformer.wte.weight").unwrap().shape(),
        [200, 16]
    );
    let back = Gpt::from_safetensors(&be, config, &file).unwrap();
    assert_eq!(
        be.download_f32(back.params.view()).unwrap(),
        be.download_f32(gpt.params.view()).unwrap()
    );
}
