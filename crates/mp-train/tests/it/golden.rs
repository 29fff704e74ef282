//! The golden-test harness shared by the GPT (`gpt.rs`, HF GPT-2) and Llama (`llama.rs`, HF
//! `LlamaForCausalLM`) tests: `golden/{stem}.*` made by PyTorch on the CPU.
//!
//! Everything (model config, inputs, targets, expected logits, loss, gradients, AdamW
//! hyper-parameters, training losses, PyTorch's own autocast errors) is read from the files,
//! so another golden file of the same format tests the same code.
//!
//! Each check is one function generic over the model ([`GoldenModel`]) and the backend; the
//! CPU tests call it with the CPU backend, the `*_wgpu` tests (feature `wgpu`) and `*_cuda`
//! tests (feature `cuda`) with a GPU backend, against the same golden values and bounds.

use std::path::{Path, PathBuf};

use mp_autograd::{Autocast, ParamLayout};
use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, Rounding};
use mp_optim::{AdamW, AdamWConfig};
use mp_train::model::Batch;
use serde_json::Value;

/// What the checks need of a model.
pub trait GoldenModel<B: Backend>: Sized {
    /// The golden files' stem (`gpt2_tiny`).
    const STEM: &'static str;
    /// The model of the golden folder `dir` (whose `{STEM}.json` is `json`).
    fn load(be: &B, dir: &Path, json: &Value) -> Self;
    /// Vocabulary size.
    fn vocab(&self) -> usize;
    /// Uploads a batch.
    fn batch(&self, be: &B, ids: &[u32], targets: &[u32], b: usize, t: usize) -> Batch<B>;
    /// Logits (the vocabulary's columns, padding dropped) and loss without gradients.
    fn evaluate(&self, be: &B, batch: &Batch<B>, ac: Autocast) -> (Vec<f32>, Option<f32>);
    /// Forward, loss and backward into the gradient arena.
    fn forward_backward(&mut self, be: &B, batch: &Batch<B>, ac: Autocast) -> f32;
    /// Zeroes the gradient arena.
    fn zero_grads(&mut self, be: &B);
    /// (name, values) of every gradient.
    fn named_grads(&self, be: &B) -> Vec<(String, Vec<f32>)>;
    /// The parameter layout.
    fn layout(&self) -> &ParamLayout;
    /// Adds the low-precision model copy.
    fn enable_model_copy(&mut self, be: &B, dtype: DType);
    /// The master weights and the gradients.
    fn arenas(&mut self) -> (&mut B::Buffer, &B::Buffer);
}

/// The golden model, its batch and the json record.
struct Golden<B: Backend, M> {
    dir: PathBuf,
    json: Value,
    gpt: M,
    batch: Batch<B>,
}

fn ids(v: &Value) -> (Vec<u32>, usize, usize) {
    let rows = v.as_array().expect("[b, t] ids");
    let flat: Vec<u32> = rows
        .iter()
        .flat_map(|r| {
            r.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
        })
        .collect();
    let b = rows.len();
    (flat.clone(), b, flat.len() / b)
}

fn load<B: Backend, M: GoldenModel<B>>(be: &B) -> Golden<B, M> {
    let json = mp_golden::load_json(&format!("{}.json", M::STEM));
    let dir = mp_golden::dir();
    let gpt = M::load(be, &dir, &json);
    let (input, b, t) = ids(&json["input_ids"]);
    let (targets, tb, tt) = ids(&json["targets"]);
    assert_eq!((b, t), (tb, tt));
    let batch = gpt.batch(be, &input, &targets, b, t);
    Golden {
        dir,
        json,
        gpt,
        batch,
    }
}

/// Every tensor of a safetensors file as (name, shape, f32 values).
fn read_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, v.shape().to_vec(), vals)
        })
        .collect()
}

/// ||got - want|| / ||want||, in f64.
fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn reference_logits<B: Backend, M: GoldenModel<B>>(g: &Golden<B, M>) -> Vec<f32> {
    let mut t = read_tensors(&g.dir.join(format!("{}.logits.safetensors", M::STEM)));
    let (_, shape, logits) = t.remove(t.iter().position(|(n, ..)| n == "logits").unwrap());
    let v = g.gpt.vocab();
    assert_eq!(shape, [g.batch.b, g.batch.t, v]);
    logits
}

/// FP32 logits (rel L2 < 1e-5), loss (1e-5) and every parameter gradient (rel L2 < 1e-4)
/// against PyTorch.
pub fn fp32_logits_loss_and_every_gradient<B: Backend, M: GoldenModel<B>>(be: &B) {
    let mut g = load::<B, M>(be);
    let be_name = be.name();
    let want = reference_logits(&g);
    let (logits, eval_loss) = g.gpt.evaluate(be, &g.batch, Autocast::OFF);
    let err = rel_l2(&logits, &want);
    eprintln!("{be_name}: fp32 logits rel L2 {err:.3e}");
    assert!(err < 1e-5, "{be_name}: fp32 logits rel L2 {err}");

    let want_loss = g.json["loss"].as_f64().unwrap();
    g.gpt.zero_grads(be);
    let loss = g.gpt.forward_backward(be, &g.batch, Autocast::OFF);
    eprintln!("{be_name}: fp32 loss {loss} (reference {want_loss})");
    assert!(
        (loss as f64 - want_loss).abs() < 1e-5,
        "{be_name}: loss {loss} vs {want_loss}"
    );
    assert_eq!(
        eval_loss.unwrap().to_bits(),
        loss.to_bits(),
        "{be_name}: evaluate and forward_backward losses"
    );

    let grads = g.gpt.named_grads(be);
    let reference = read_tensors(&g.dir.join(format!("{}.grads.safetensors", M::STEM)));
    assert_eq!(
        reference.len(),
        grads.len(),
        "{be_name}: one reference gradient per parameter"
    );
    let mut worst = (0.0f64, String::new());
    for (name, shape, want) in &reference {
        let entry = g
            .gpt
            .layout()
            .get(name)
            .unwrap_or_else(|| panic!("{name} not in model"));
        // a vocabulary-sized tensor has padding rows in the arena (zero gradient)
        assert_eq!(&entry.shape[1..], &shape[1..], "{name}");
        assert!(entry.shape[0] >= shape[0], "{name}");
        let got = &grads.iter().find(|(n, _)| n == name).unwrap().1;
        let (got, pad) = got.split_at(want.len());
        assert!(
            pad.iter().all(|&x| x == 0.0),
            "{name}: padding rows' gradient"
        );
        let err = rel_l2(got, want);
        assert!(err < 1e-4, "{be_name}: gradient of {name}: rel L2 {err}");
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    eprintln!(
        "{be_name}: worst gradient rel L2 {:.3e} ({})",
        worst.0, worst.1
    );
}

/// BF16 and FP16 autocast logits within twice PyTorch's own autocast error (its FP16 error
/// where the file records one, else its BF16 error), FP16 more accurate than BF16, and the
/// optimizer's BF16 model copy giving the same logits bit for bit.
pub fn bf16_and_fp16_autocast_logits<B: Backend, M: GoldenModel<B>>(be: &B) {
    let mut g = load::<B, M>(be);
    let be_name = be.name();
    let want = reference_logits(&g);
    let torch_bf16 = g.json["torch_cpu_bf16_autocast_logits_rel_err"]
        .as_f64()
        .unwrap();
    let torch_f16 = g.json["torch_cpu_fp16_autocast_logits_rel_err"]
        .as_f64()
        .unwrap_or(torch_bf16);
    let err = |gpt: &M, dt| {
        let (l, _) = gpt.evaluate(be, &g.batch, Autocast::to(dt));
        (rel_l2(&l, &want), l)
    };
    let (bf16, bf16_logits) = err(&g.gpt, DType::BF16);
    let (f16, _) = err(&g.gpt, DType::F16);
    eprintln!(
        "{be_name}: autocast logits rel L2: bf16 {bf16:.3e}, f16 {f16:.3e}, torch bf16 {torch_bf16:.3e}, torch f16 {torch_f16:.3e}"
    );
    assert!(
        bf16 <= 2.0 * torch_bf16,
        "{be_name}: bf16 {bf16} vs torch {torch_bf16}"
    );
    assert!(
        f16 <= 2.0 * torch_f16,
        "{be_name}: f16 {f16} vs torch {torch_f16}"
    );
    assert!(
        f16 < bf16,
        "{be_name}: fp16 ({f16}) must be more accurate than bf16 ({bf16})"
    );

    // Forward from the optimizer's BF16 model copy: no weight cast, same numbers.
    g.gpt.enable_model_copy(be, DType::BF16);
    let (from_copy, copy_logits) = err(&g.gpt, DType::BF16);
    assert_eq!(
        from_copy, bf16,
        "{be_name}: logits from the BF16 model copy"
    );
    assert!(
        copy_logits
            .iter()
            .zip(&bf16_logits)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{be_name}: logits from the BF16 model copy differ from the cast master's"
    );
}

/// Eight FP32 AdamW steps: every loss within 1e-4 of PyTorch's.
pub fn fp32_adamw_training_losses<B: Backend, M: GoldenModel<B>>(be: &B) {
    let mut g = load::<B, M>(be);
    let be_name = be.name();
    let hp = &g.json["adamw"];
    let f = |v: &Value| v.as_f64().unwrap() as f32;
    let config = AdamWConfig {
        lr: f(&hp["lr"]),
        beta1: f(&hp["betas"][0]),
        beta2: f(&hp["betas"][1]),
        eps: f(&hp["eps"]),
        weight_decay: f(&hp["weight_decay"]),
        rounding: Rounding::NearestEven,
    };
    let want: Vec<f64> = g.json["train_losses_fp32"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    // Weight decay on every parameter, as torch.optim.AdamW(model.parameters()).
    let mut opt = AdamW::new(be, g.gpt.layout().numel(), config).unwrap();
    for (i, &w) in want.iter().enumerate() {
        g.gpt.zero_grads(be);
        let loss = g.gpt.forward_backward(be, &g.batch, Autocast::OFF);
        eprintln!("{be_name}: step {i}: loss {loss} (reference {w})");
        assert!(
            (loss as f64 - w).abs() < 1e-4,
            "{be_name}: step {i}: loss {loss} vs {w}"
        );
        let (params, grads) = g.gpt.arenas();
        opt.step(be, params.view_mut(), grads.view(), None, 1.0)
            .unwrap();
    }
}

/// The vocabulary's columns of logits rows of width `width` (a padded vocabulary's -inf
/// columns dropped, after checking they are -inf).
pub fn unpadded(logits: Vec<f32>, vocab: usize, width: usize) -> Vec<f32> {
    if vocab == width {
        return logits;
    }
    logits
        .chunks_exact(width)
        .flat_map(|row| {
            assert!(row[vocab..].iter().all(|&x| x == f32::NEG_INFINITY));
            row[..vocab].to_vec()
        })
        .collect()
}
