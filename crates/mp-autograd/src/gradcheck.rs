//! Finite-difference gradient checks of every tape op, and the autocast behaviour.
//!
//! Each check puts the op's inputs in a parameter arena, takes the analytic gradient of
//! `sum(op(inputs) * r)` (random `r`) through the tape, and compares it element by element
//! with central differences of the same objective evaluated in f64 on the host from FP32
//! forward passes (step 1e-2), within `1e-3 + 5e-3 |numeric|` per element.

use mp_dtype::DType;
use mp_kernels::cpu::CpuBackend;
use mp_kernels::prelude::*;

use crate::{Autocast, ParamLayout, Result, Tape, Tensor, WeightLayout};

type B = CpuBackend;
type Buf = <CpuBackend as MemoryOps>::Buffer;

/// SplitMix64 values, approximately standard normal (sum of uniforms).
fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| ((0..4).map(|_| next()).sum::<f64>() - 2.0) as f32 * 1.7)
        .collect()
}

/// Index data the ops under test read (token ids and targets).
struct Env {
    ids: Vec<u32>,
    targets: Vec<u32>,
}

/// The op under test: builds its output from the parameters (in layout order).
type Build = dyn for<'a> Fn(&mut Tape<'a, B>, &[Tensor], &'a Env) -> Result<Tensor>;

struct Check {
    layout: ParamLayout,
    values: Vec<f32>,
    env: Env,
}

impl Check {
    fn new(params: &[(&str, &[usize])], seed: u64) -> Self {
        let mut layout = ParamLayout::new();
        for (name, shape) in params {
            layout.push(*name, shape);
        }
        let values = randn(seed, layout.numel());
        Check {
            layout,
            values,
            env: Env {
                ids: vec![],
                targets: vec![],
            },
        }
    }

    fn params<'a>(&self, tape: &mut Tape<'a, B>) -> Vec<Tensor> {
        let entries = self.layout.entries();
        entries.iter().map(|e| tape.param(e).unwrap()).collect()
    }

    /// The objective `sum(y * r)` in f64 from an FP32 forward pass with `values`.
    fn objective(&self, values: &[f32], build: &Build) -> f64 {
        let be = B::new();
        let master = be.upload_f32(values, DType::F32).unwrap();
        let mut tape = Tape::new(&be).with_params(&master);
        tape.no_grad(|tape| {
            let ps = self.params(tape);
            let y = build(tape, &ps, &self.env).unwrap();
            let y = tape.to_vec_f32(y).unwrap();
            let r = randn(99, y.len());
            let r = if y.len() == 1 { vec![1.0] } else { r };
            y.iter().zip(&r).map(|(&y, &r)| y as f64 * r as f64).sum()
        })
    }

    /// The analytic gradient of the objective through the tape.
    fn analytic(&self, build: &Build) -> Vec<f32> {
        let be = B::new();
        let master = be.upload_f32(&self.values, DType::F32).unwrap();
        let mut grads = be.zeros(DType::F32, self.layout.numel()).unwrap();
        let mut tape = Tape::new(&be).with_params(&master);
        let ps = self.params(&mut tape);
        let y = build(&mut tape, &ps, &self.env).unwrap();
        let n: usize = tape.shape(y).iter().product();
        let loss = if tape.shape(y).is_empty() {
            y
        } else {
            let r = be.upload_f32(&randn(99, n), DType::F32).unwrap();
            let shape = tape.shape(y).to_vec();
            let r = tape.input(r, &shape).unwrap();
            let yr = tape.mul(y, r).unwrap();
            tape.sum(yr).unwrap()
        };
        tape.backward(loss, 1.0, &mut grads).unwrap();
        be.download_f32(grads.view()).unwrap()
    }

    /// Compares analytic and central-difference gradients on every element (or a strided
    /// sample of large parameters).
    fn run(&self, what: &str, build: &Build) {
        let h = 1e-2f32;
        let analytic = self.analytic(build);
        let mut worst = 0.0f64;
        for e in self.layout.entries() {
            let stride = (e.numel() / 24).max(1);
            for i in (e.offset..e.offset + e.numel()).step_by(stride) {
                let mut v = self.values.clone();
                v[i] += h;
                let up = self.objective(&v, build);
                v[i] -= 2.0 * h;
                let down = self.objective(&v, build);
                let numeric = (up - down) / (2.0 * h as f64);
                let a = analytic[i] as f64;
                let err = (a - numeric).abs() / (1e-3 + 5e-3 * numeric.abs());
                worst = worst.max(err);
                assert!(
                    err <= 1.0,
                    "{what}: d/d {}[{}]: analytic {a}, numeric {numeric}",
                    e.name,
                    i - e.offset
                );
            }
        }
        assert!(
            analytic.iter().any(|&g| g != 0.0),
            "{what}: all-zero gradient"
        );
        eprintln!("{what}: worst error / tolerance = {worst:.3}");
    }
}

#[test]
fn gradcheck_linear_conv1d_layout_with_bias() {
    let c = Check::new(&[("x", &[6, 5]), ("w", &[5, 3]), ("b", &[3])], 1);
    c.run("linear InOut", &|t, p, _| {
        t.linear(p[0], p[1], Some(p[2]), WeightLayout::InOut)
    });
}

#[test]
fn gradcheck_linear_torch_layout_without_bias() {
    let c = Check::new(&[("x", &[2, 3, 4]), ("w", &[7, 4])], 2);
    c.run("linear OutIn", &|t, p, _| {
        t.linear(p[0], p[1], None, WeightLayout::OutIn)
    });
}

#[test]
fn gradcheck_layer_norm() {
    let c = Check::new(&[("x", &[5, 8]), ("w", &[8]), ("b", &[8])], 3);
    c.run("layer_norm", &|t, p, _| {
        t.layer_norm(p[0], p[1], p[2], 1e-5)
    });
}

#[test]
fn gradcheck_gelu_add_mul() {
    let c = Check::new(&[("a", &[4, 6]), ("b", &[4, 6])], 4);
    c.run("gelu", &|t, p, _| t.gelu(p[0]));
    c.run("add", &|t, p, _| t.add(p[0], p[1]));
    c.run("mul", &|t, p, _| t.mul(p[0], p[1]));
    // A tensor used twice accumulates both contributions.
    c.run("add(a, a)", &|t, p, _| t.add(p[0], p[0]));
}

#[test]
fn gradcheck_embedding() {
    let mut c = Check::new(&[("table", &[7, 5])], 5);
    c.env.ids = vec![3, 0, 3, 6, 1, 3];
    c.run("embedding", &|t, p, env| {
        t.embedding(p[0], &env.ids, env.ids.len())
    });
}

#[test]
fn gradcheck_attention() {
    // b=2, t=5, c=8, 2 heads.
    let c = Check::new(&[("qkv", &[2, 5, 24])], 6);
    c.run("attention", &|t, p, _| t.attention(p[0], 2));
}

#[test]
fn gradcheck_cross_entropy_and_sum() {
    let mut c = Check::new(&[("logits", &[2, 3, 6])], 7);
    c.env.targets = vec![0, 5, 2, 2, 1, 4];
    c.run("cross_entropy", &|t, p, env| {
        t.cross_entropy(p[0], &env.targets)
    });
    c.run("sum", &|t, p, _| t.sum(p[0]));
}

#[test]
fn gradcheck_small_transformer_block() {
    // ln -> c_attn -> attention -> c_proj -> residual -> ln -> mlp -> residual -> CE on a
    // tied head: every op composed, gradients through shared parameters.
    let (b, tt, c, v) = (2, 4, 8, 6);
    let mut chk = Check::new(
        &[
            ("wte", &[v, c]),
            ("ln_w", &[c]),
            ("ln_b", &[c]),
            ("attn_w", &[c, 3 * c]),
            ("attn_b", &[3 * c]),
            ("proj_w", &[c, c]),
            ("fc_w", &[c, 2 * c]),
            ("fc2_w", &[2 * c, c]),
        ],
        8,
    );
    chk.env.ids = vec![1, 2, 3, 4, 5, 0, 1, 2];
    chk.env.targets = vec![2, 3, 4, 5, 0, 1, 2, 3];
    chk.values[v * c..v * c + c]
        .iter_mut()
        .for_each(|x| *x = 1.0 + *x * 0.1);
    chk.run("block", &move |t, p, env| {
        let x = t.embedding(p[0], &env.ids, b * tt)?;
        let h = t.layer_norm(x, p[1], p[2], 1e-5)?;
        let qkv = t.linear(h, p[3], Some(p[4]), WeightLayout::InOut)?;
        let s = t.shape(qkv).to_vec();
        let qkv = reshape(t, qkv, &[b, tt, s[1]])?;
        let a = t.attention(qkv, 2)?;
        let a = reshape(t, a, &[b * tt, c])?;
        let a = t.linear(a, p[5], None, WeightLayout::InOut)?;
        let x = t.add(x, a)?;
        let h = t.layer_norm(x, p[1], p[2], 1e-5)?;
        let h = t.linear(h, p[6], None, WeightLayout::InOut)?;
        let h = t.gelu(h)?;
        let h = t.linear(h, p[7], None, WeightLayout::InOut)?;
        let x = t.add(x, h)?;
        let logits = t.linear(x, p[0], None, WeightLayout::OutIn)?;
        t.cross_entropy(logits, &env.targets)
    });
}

fn reshape<'a>(t: &mut Tape<'a, B>, x: Tensor, shape: &[usize]) -> Result<Tensor> {
    t.reshape(x, shape)
}

/// Runs `build` once under `autocast` and returns (loss, grads).
fn loss_and_grads(
    c: &Check,
    autocast: Autocast,
    model_copy: Option<&Buf>,
    build: &Build,
) -> (f32, Vec<f32>) {
    let be = B::new();
    let master = be.upload_f32(&c.values, DType::F32).unwrap();
    let mut grads = be.zeros(DType::F32, c.layout.numel()).unwrap();
    let mut tape = Tape::new(&be).with_params(&master).with_autocast(autocast);
    if let Some(m) = model_copy {
        tape = tape.with_model_copy(m).unwrap();
    }
    let ps = c.params(&mut tape);
    let loss = build(&mut tape, &ps, &c.env).unwrap();
    let l = tape.to_vec_f32(loss).unwrap()[0];
    tape.backward(loss, 1.0, &mut grads).unwrap();
    (l, be.download_f32(grads.view()).unwrap())
}

fn mlp_ce<'a>(t: &mut Tape<'a, B>, p: &[Tensor], env: &'a Env) -> Result<Tensor> {
    let h = t.layer_norm(p[0], p[1], p[2], 1e-5)?;
    let h = t.linear(h, p[3], Some(p[4]), WeightLayout::InOut)?;
    let h = t.gelu(h)?;
    t.cross_entropy(h, &env.targets)
}

fn mlp_check() -> Check {
    let mut c = Check::new(
        &[
            ("x", &[6, 16]),
            ("ln_w", &[16]),
            ("ln_b", &[16]),
            ("w", &[16, 12]),
            ("b", &[12]),
        ],
        9,
    );
    c.env.targets = vec![0, 3, 11, 7, 7, 2];
    c
}

#[test]
fn autocast_follows_the_policy_table() {
    let c = mlp_check();
    let be = B::new();
    let master = be.upload_f32(&c.values, DType::F32).unwrap();
    let mut tape = Tape::new(&be)
        .with_params(&master)
        .with_autocast(Autocast::to(DType::BF16));
    let p = c.params(&mut tape);
    let h = tape.layer_norm(p[0], p[1], p[2], 1e-5).unwrap();
    assert_eq!(
        tape.dtype(h),
        DType::BF16,
        "layer_norm: FP32 compute, low output"
    );
    let y = tape
        .linear(h, p[3], Some(p[4]), WeightLayout::InOut)
        .unwrap();
    assert_eq!(tape.dtype(y), DType::BF16, "linear is lowered");
    let g = tape.gelu(y).unwrap();
    assert_eq!(tape.dtype(g), DType::BF16, "gelu keeps its input dtype");
    let s = tape.add(g, y).unwrap();
    assert_eq!(tape.dtype(s), DType::BF16);
    let wide = tape
        .autocast(Autocast::OFF, |t| {
            let h = t.layer_norm(p[0], p[1], p[2], 1e-5)?;
            t.linear(h, p[3], None, WeightLayout::InOut)
        })
        .unwrap();
    assert_eq!(tape.dtype(wide), DType::F32, "no autocast: FP32");
    let mixed = tape.add(wide, y).unwrap();
    assert_eq!(
        tape.dtype(mixed),
        DType::F32,
        "add promotes to the widest input"
    );
    let loss = tape.cross_entropy(y, &c.env.targets).unwrap();
    assert_eq!(tape.dtype(loss), DType::F32, "losses are FP32");
    // The weight cast is cached: a second use returns the same tensor.
    let w1 = tape.cast(p[3], DType::BF16).unwrap();
    let w2 = tape.cast(p[3], DType::BF16).unwrap();
    assert_eq!(w1, w2);
    let r = tape.no_grad(|t| t.add(p[0], p[0])).unwrap();
    assert!(tape.add(r, r).is_ok());
}

#[test]
fn autocast_grads_track_fp32_and_fp16_beats_bf16() {
    let c = mlp_check();
    let (l32, g32) = loss_and_grads(&c, Autocast::OFF, None, &mlp_ce);
    let rel = |g: &[f32]| {
        let num: f64 = g
            .iter()
            .zip(&g32)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = g32.iter().map(|&b| (b as f64).powi(2)).sum();
        (num / den).sqrt()
    };
    let (lb, gb) = loss_and_grads(&c, Autocast::to(DType::BF16), None, &mlp_ce);
    let (lh, gh) = loss_and_grads(&c, Autocast::to(DType::F16), None, &mlp_ce);
    let (eb, eh) = (rel(&gb), rel(&gh));
    eprintln!("loss fp32 {l32} bf16 {lb} f16 {lh}; grad rel err bf16 {eb:.2e} f16 {eh:.2e}");
    assert!((lb - l32).abs() < 2e-2 * l32.abs() && (lh - l32).abs() < 4e-3 * l32.abs());
    assert!(eb < 3e-2 && eh < 5e-3 && eh < eb, "bf16 {eb}, f16 {eh}");
}

#[test]
fn forward_from_the_model_copy_equals_cached_casts() {
    let c = mlp_check();
    let be = B::new();
    let master = be.upload_f32(&c.values, DType::F32).unwrap();
    let mut copy = be.zeros(DType::BF16, c.layout.numel()).unwrap();
    be.cast(
        master.view(),
        copy.view_mut(),
        mp_kernels::Rounding::NearestEven,
    )
    .unwrap();
    let ac = Autocast::to(DType::BF16);
    let (l1, g1) = loss_and_grads(&c, ac, None, &mlp_ce);
    let (l2, g2) = loss_and_grads(&c, ac, Some(&copy), &mlp_ce);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert_eq!(g1, g2);
}

#[test]
fn misuse_is_a_typed_error() {
    let be = B::new();
    let x = be.upload_f32(&[1.0; 6], DType::F32).unwrap();
    let w = be.upload_f32(&[1.0; 6], DType::F32).unwrap();
    let mut tape = Tape::new(&be);
    assert!(tape.param_at(0, &[2]).is_err(), "no arena");
    let x = tape.input(x, &[2, 3]).unwrap();
    let w = tape.input(w, &[2, 3]).unwrap();
    let err = tape.linear(x, w, None, WeightLayout::InOut).unwrap_err();
    assert!(err.to_string().contains("linear"), "{err}");
    assert!(
        tape.input(be.zeros(DType::F32, 5).unwrap(), &[2, 3])
            .is_err()
    );
    let s = tape.sum(x).unwrap();
    assert!(tape.add(s, s).is_err(), "a loss is not an op input");
    let mut g = be.zeros(DType::F32, 1).unwrap();
    assert!(
        tape.backward(x, 1.0, &mut g).is_err(),
        "root must be a loss"
    );
}
