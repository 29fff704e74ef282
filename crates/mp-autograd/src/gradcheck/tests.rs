//! Every built-in op through [`GradCheck`], the autocast behaviour, and misuse.

use mp_dtype::DType;
use mp_kernels::prelude::*;

use super::{Cpu, GradCheck, assert_ok};
use crate::{Autocast, AutogradError, Result, Tape, Tensor, WeightLayout};

type Buf = <Cpu as MemoryOps>::Buffer;

/// Index data the ops under test read (token ids and targets).
#[derive(Default)]
struct Env {
    ids: Vec<u32>,
    targets: Vec<u32>,
}

#[test]
fn small_transformer_block() {
    // ln -> c_attn -> attention -> c_proj -> residual -> ln -> mlp -> residual -> CE on a
    // tied head: every op composed, gradients through shared parameters.
    let (b, tt, c, v) = (2, 4, 8, 6);
    let mut chk = GradCheck::new(
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
        12,
    );
    let env = Env {
        ids: vec![1, 2, 3, 4, 5, 0, 1, 2],
        targets: vec![2, 3, 4, 5, 0, 1, 2, 3],
    };
    chk.values_mut()[v * c..v * c + c]
        .iter_mut()
        .for_each(|x| *x = 1.0 + *x * 0.1);
    assert_ok(chk.run_with("block", &env, move |t, p, env| {
        let x = t.embedding(p[0], &env.ids, b * tt)?;
        let h = t.layer_norm(x, p[1], p[2], 1e-5)?;
        let qkv = t.linear(h, p[3], Some(p[4]), WeightLayout::InOut)?;
        let s = t.shape(qkv)?.to_vec();
        let qkv = t.reshape(qkv, &[b, tt, s[1]])?;
        let a = t.attention(qkv, 2)?;
        let a = t.reshape(a, &[b * tt, c])?;
        let a = t.linear(a, p[5], None, WeightLayout::InOut)?;
        let x = t.add(x, a)?;
        let h = t.rms_norm(x, p[1], 1e-5)?;
        let h = t.linear(h, p[6], None, WeightLayout::InOut)?;
        let h = t.silu(h)?;
        let h = t.linear(h, p[7], None, WeightLayout::InOut)?;
        let x = t.add(x, h)?;
        let logits = t.linear(x, p[0], None, WeightLayout::OutIn)?;
        t.cross_entropy(logits, &env.targets)
    }));
}

/// `a + b` and `a - b` hand the output's gradient over to `a` (`TapeOp::passes_dy_to`):
/// right when `a` is also `b`, when `a` is an activation with other consumers (before and
/// after), when `a` already has a gradient, and when `a` is a parameter (arena gradient).
#[test]
fn add_and_sub_hand_their_gradient_over() {
    let chk = GradCheck::new(&[("w", &[3, 4]), ("v", &[3, 4])], 5);
    assert_ok(chk.run_with("pass-through", &Env::default(), |t, p, _| {
        let x = t.tanh(p[0])?;
        let y = t.silu(p[1])?;
        let twice = t.add(x, x)?;
        let d = t.sub(twice, y)?;
        let e = t.add(p[0], d)?;
        let f = t.mul(e, x)?;
        let g = t.add(f, d)?;
        let h = t.add(g, f)?;
        t.sum(h)
    }));
}

/// Runs `build` once under `autocast` and returns (loss, grads).
fn loss_and_grads(
    values: &[f32],
    n: usize,
    autocast: Autocast,
    model_copy: Option<&Buf>,
    targets: &[u32],
) -> (f32, Vec<f32>) {
    let be = Cpu::new();
    let master = be.upload_f32(values, DType::F32).unwrap();
    let mut grads = be.zeros(DType::F32, n).unwrap();
    let targets = targets.to_vec();
    let mut tape = Tape::new(&be).with_params(&master).with_autocast(autocast);
    if let Some(m) = model_copy {
        tape = tape.with_model_copy(m).unwrap();
    }
    let p = mlp_params(&mut tape);
    let loss = mlp_ce(&mut tape, &p, &targets).unwrap();
    let l = tape.to_vec_f32(loss).unwrap()[0];
    tape.backward(loss, 1.0, &mut grads).unwrap();
    (l, be.download_f32(grads.view()).unwrap())
}

/// x [6, 16], ln_w, ln_b [16], w [16, 12], b [12] at their arena offsets.
fn mlp_params(t: &mut Tape<'_, Cpu>) -> Vec<Tensor> {
    let shapes: [&[usize]; 5] = [&[6, 16], &[16], &[16], &[16, 12], &[12]];
    let mut off = 0;
    shapes
        .iter()
        .map(|s| {
            let p = t.param_at(off, s).unwrap();
            off += s.iter().product::<usize>();
            p
        })
        .collect()
}

const MLP_LEN: usize = 6 * 16 + 16 + 16 + 16 * 12 + 12;

fn mlp_ce<'a>(t: &mut Tape<'a, Cpu>, p: &[Tensor], targets: &'a Vec<u32>) -> Result<Tensor> {
    let h = t.layer_norm(p[0], p[1], p[2], 1e-5)?;
    let h = t.linear(h, p[3], Some(p[4]), WeightLayout::InOut)?;
    let h = t.gelu(h)?;
    t.cross_entropy(h, targets)
}

const TARGETS: [u32; 6] = [0, 3, 11, 7, 7, 2];

#[test]
fn autocast_follows_each_ops_category() {
    let values = super::randn(9, MLP_LEN);
    let be = Cpu::new();
    let master = be.upload_f32(&values, DType::F32).unwrap();
    let targets = TARGETS.to_vec();
    let mut tape = Tape::new(&be)
        .with_params(&master)
        .with_autocast(Autocast::to(DType::BF16));
    let p = mlp_params(&mut tape);
    let dt = |t: &Tape<'_, Cpu>, x: Tensor| t.dtype(x).unwrap();
    let h = tape.layer_norm(p[0], p[1], p[2], 1e-5).unwrap();
    assert_eq!(
        dt(&tape, h),
        DType::BF16,
        "layer_norm: FP32 compute, low output"
    );
    let r = tape.rms_norm(p[0], p[1], 1e-5).unwrap();
    assert_eq!(
        dt(&tape, r),
        DType::BF16,
        "rms_norm: FP32 compute, low output"
    );
    let y = tape
        .linear(h, p[3], Some(p[4]), WeightLayout::InOut)
        .unwrap();
    assert_eq!(dt(&tape, y), DType::BF16, "linear is lowered");
    for (name, x) in [
        ("gelu", tape.gelu(y).unwrap()),
        ("relu", tape.relu(y).unwrap()),
        ("silu", tape.silu(y).unwrap()),
        ("transpose", tape.transpose(y).unwrap()),
    ] {
        assert_eq!(dt(&tape, x), DType::BF16, "{name} keeps its input dtype");
    }
    let s = tape.softmax(y).unwrap();
    assert_eq!(dt(&tape, s), DType::F32, "softmax is FP32");
    let e = tape.exp(y).unwrap();
    assert_eq!(dt(&tape, e), DType::F32, "exp is FP32");
    let mm = tape.matmul(p[0], p[3]).unwrap();
    assert_eq!(dt(&tape, mm), DType::BF16, "matmul is lowered");
    let wide = tape
        .autocast(Autocast::OFF, |t| {
            let h = t.layer_norm(p[0], p[1], p[2], 1e-5)?;
            t.linear(h, p[3], None, WeightLayout::InOut)
        })
        .unwrap();
    assert_eq!(dt(&tape, wide), DType::F32, "no autocast: FP32");
    let mixed = tape.add(wide, y).unwrap();
    assert_eq!(
        dt(&tape, mixed),
        DType::F32,
        "add promotes to the widest input"
    );
    let loss = tape.cross_entropy(y, &targets).unwrap();
    assert_eq!(dt(&tape, loss), DType::F32, "losses are FP32");
    // The weight cast is cached: a second use returns the same tensor.
    let w1 = tape.cast(p[3], DType::BF16).unwrap();
    let w2 = tape.cast(p[3], DType::BF16).unwrap();
    assert_eq!(w1, w2);
    let r = tape.no_grad(|t| t.add(p[0], p[0])).unwrap();
    assert!(tape.add(r, r).is_ok());
}

#[test]
fn autocast_grads_track_fp32_and_fp16_beats_bf16() {
    let values = super::randn(9, MLP_LEN);
    let (l32, g32) = loss_and_grads(&values, MLP_LEN, Autocast::OFF, None, &TARGETS);
    let rel = |g: &[f32]| {
        let num: f64 = g
            .iter()
            .zip(&g32)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = g32.iter().map(|&b| (b as f64).powi(2)).sum();
        (num / den).sqrt()
    };
    let bf = Autocast::to(DType::BF16);
    let (lb, gb) = loss_and_grads(&values, MLP_LEN, bf, None, &TARGETS);
    let (lh, gh) = loss_and_grads(&values, MLP_LEN, Autocast::to(DType::F16), None, &TARGETS);
    let (eb, eh) = (rel(&gb), rel(&gh));
    eprintln!("loss fp32 {l32} bf16 {lb} f16 {lh}; grad rel err bf16 {eb:.2e} f16 {eh:.2e}");
    assert!((lb - l32).abs() < 2e-2 * l32.abs() && (lh - l32).abs() < 4e-3 * l32.abs());
    assert!(eb < 3e-2 && eh < 5e-3 && eh < eb, "bf16 {eb}, f16 {eh}");
}

#[test]
fn forward_from_the_model_copy_equals_cached_casts() {
    let values = super::randn(9, MLP_LEN);
    let be = Cpu::new();
    let master = be.upload_f32(&values, DType::F32).unwrap();
    let mut copy = be.zeros(DType::BF16, MLP_LEN).unwrap();
    be.cast(
        master.view(),
        copy.view_mut(),
        mp_kernels::Rounding::NearestEven,
    )
    .unwrap();
    let ac = Autocast::to(DType::BF16);
    let (l1, g1) = loss_and_grads(&values, MLP_LEN, ac, None, &TARGETS);
    let (l2, g2) = loss_and_grads(&values, MLP_LEN, ac, Some(&copy), &TARGETS);
    assert_eq!(l1.to_bits(), l2.to_bits());
    assert_eq!(g1, g2);
}

#[test]
fn misuse_is_a_typed_error() {
    let be = Cpu::new();
    let up = |n: usize| be.upload_f32(&vec![1.0; n], DType::F32).unwrap();
    let mut tape = Tape::new(&be);
    assert!(tape.param_at(0, &[2]).is_err(), "no arena");
    let x = tape.input(up(6), &[2, 3]).unwrap();
    let w = tape.input(up(6), &[2, 3]).unwrap();
    let err = tape.linear(x, w, None, WeightLayout::InOut).unwrap_err();
    assert!(err.to_string().contains("linear"), "{err}");
    assert!(tape.input(up(5), &[2, 3]).is_err());
    let s = tape.sum(x).unwrap();
    assert!(tape.add(s, s).is_err(), "a loss is not an op input");
    assert!(tape.relu(s).is_err(), "a loss is not an op input");
    // handles of another tape: a typed error, whatever their index
    let mut other = Tape::new(&be);
    let o = other.input(up(6), &[2, 3]).unwrap();
    for r in [tape.add(x, o), tape.relu(o), tape.reshape(o, &[6])] {
        assert!(
            matches!(r, Err(AutogradError::Handle { .. })),
            "another tape's tensor: {r:?}"
        );
    }
    assert!(matches!(tape.shape(o), Err(AutogradError::Handle { .. })));
    // shape errors name the op the user called
    let y = tape.input(up(4), &[2, 2]).unwrap();
    for (op, r) in [
        ("add", tape.add(x, y)),
        ("mse_loss", tape.mse_loss(x, y)),
        ("matmul", tape.matmul(x, x)),
        ("concat", tape.concat(&[x, y], 0)),
        ("rms_norm", tape.rms_norm(x, y, 1e-5)),
    ] {
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with(op), "{op}: {e}");
    }
    assert!(tape.split(x, 1, &[1, 1]).is_err(), "sizes must add up");
    let mut g = be.zeros(DType::F32, 1).unwrap();
    assert!(
        tape.backward(x, 1.0, &mut g).is_err(),
        "root must be a loss"
    );
}

#[test]
fn zero_sized_batches_work_or_name_the_op() {
    let be = Cpu::new();
    let master = be
        .upload_f32(&super::randn(1, 4 * 3 + 4), DType::F32)
        .unwrap();
    let mut grads = be.zeros(DType::F32, 16).unwrap();
    let mut tape = Tape::new(&be).with_params(&master);
    let w = tape.param_at(0, &[4, 3]).unwrap();
    let g = tape.param_at(12, &[4]).unwrap();
    let x = tape
        .input(be.zeros(DType::F32, 0).unwrap(), &[0, 4])
        .unwrap();
    let h = tape.rms_norm(x, g, 1e-5).unwrap();
    let y = tape.linear(h, w, None, WeightLayout::InOut).unwrap();
    let y = tape.silu(y).unwrap();
    assert_eq!(tape.shape(y).unwrap(), &[0, 3]);
    let s = tape.sum(y).unwrap();
    assert_eq!(tape.to_vec_f32(s).unwrap(), vec![0.0]);
    tape.backward(s, 1.0, &mut grads).unwrap();
    assert!(
        be.download_f32(grads.view())
            .unwrap()
            .iter()
            .all(|&v| v == 0.0)
    );
    let targets = Vec::new();
    let mut tape = Tape::new(&be);
    let x = tape
        .input(be.zeros(DType::F32, 0).unwrap(), &[0, 4])
        .unwrap();
    let e = tape.mean(x).unwrap_err().to_string();
    assert!(e.starts_with("mean"), "{e}");
    let e = tape.cross_entropy(x, &targets).unwrap_err().to_string();
    assert!(e.starts_with("cross_entropy"), "{e}");
}

/// `release` frees activations at their last use without gradients, refuses nothing the
/// backward pass needs while recording, and a released tensor read again is a typed error.
#[test]
fn release_frees_only_what_nothing_reads_again() {
    let be = Cpu::new();
    let master = be.upload_f32(&super::randn(4, 4 * 3), DType::F32).unwrap();
    let x_data = || be.upload_f32(&super::randn(5, 8 * 4), DType::F32).unwrap();
    // without gradients: h goes, y stays readable
    let mut tape = Tape::new(&be).with_params(&master);
    tape.no_grad(|tape| {
        let w = tape.param_at(0, &[4, 3]).unwrap();
        let x = tape.input(x_data(), &[8, 4]).unwrap();
        let h = tape.gelu(x).unwrap();
        let y = tape.linear(h, w, None, WeightLayout::InOut).unwrap();
        let before = tape.activation_bytes();
        tape.release(h).unwrap();
        assert_eq!(tape.activation_bytes(), before - 8 * 4 * 4);
        assert!(matches!(tape.view(h), Err(AutogradError::Backward { .. })));
        assert_eq!(tape.to_vec_f32(y).unwrap().len(), 8 * 3);
    });
    // while recording: h is the linear's saved input, so release keeps it and backward works
    let mut grads = be.zeros(DType::F32, 12).unwrap();
    let mut tape = Tape::new(&be).with_params(&master);
    let w = tape.param_at(0, &[4, 3]).unwrap();
    let x = tape.input(x_data(), &[8, 4]).unwrap();
    let h = tape.gelu(x).unwrap();
    let y = tape.linear(h, w, None, WeightLayout::InOut).unwrap();
    let before = tape.activation_bytes();
    tape.release(h).unwrap();
    assert_eq!(tape.activation_bytes(), before);
    let s = tape.sum(y).unwrap();
    tape.backward(s, 1.0, &mut grads).unwrap();
    assert!(
        be.download_f32(grads.view())
            .unwrap()
            .iter()
            .any(|&g| g != 0.0)
    );
}

/// Records what [`crate::GradHook`] is told: each range with its values at that moment.
#[derive(Default)]
struct Recorder {
    seen: Vec<(std::ops::Range<usize>, Vec<f32>)>,
    progress: usize,
}

impl crate::GradHook<Cpu> for Recorder {
    fn ready(&mut self, grads: &mut Buf, range: std::ops::Range<usize>) -> crate::HookResult {
        let be = Cpu::new();
        let now = be.download_f32(grads.slice(range.start, range.len()))?;
        self.seen.push((range, now));
        Ok(())
    }
    fn progress(&mut self, _: &mut Buf) -> crate::HookResult {
        self.progress += 1;
        Ok(())
    }
}

/// `backward_with` hands over every range of the arena once, each only after the last op
/// that adds into it (its values then are its final values), an unused range first and a
/// tied weight (read by the first op and the last) last; the gradients are the same bits as
/// `backward`'s.
#[test]
fn the_gradient_hook_sees_each_range_once_when_it_is_final() {
    let (v, c, unused) = (7, 4, 5);
    let (wte, w1, b1) = (0, v * c + unused, v * c + unused + c * c);
    let len = b1 + c;
    let values = super::randn(3, len);
    let ids = vec![1u32, 4, 6, 0, 2];
    let targets = vec![2u32, 0, 5, 6, 1];
    let run = |hook: Option<&mut dyn crate::GradHook<Cpu>>| {
        let be = Cpu::new();
        let master = be.upload_f32(&values, DType::F32).unwrap();
        let mut grads = be.zeros(DType::F32, len).unwrap();
        let mut t = Tape::new(&be).with_params(&master);
        let e = t.param_at(wte, &[v, c]).unwrap();
        let flat = t.param_at(w1, &[c * c]).unwrap();
        let w = t.reshape(flat, &[c, c]).unwrap();
        let b = t.param_at(b1, &[c]).unwrap();
        let x = t.embedding(e, &ids, ids.len()).unwrap();
        let h = t.linear(x, w, Some(b), WeightLayout::InOut).unwrap();
        let h = t.gelu(h).unwrap();
        let logits = t.linear(h, e, None, WeightLayout::OutIn).unwrap();
        let loss = t.cross_entropy(logits, &targets).unwrap();
        t.backward_with(loss, 2.0, &mut grads, hook).unwrap();
        be.download_f32(grads.view()).unwrap()
    };
    let plain = run(None);
    let mut rec = Recorder::default();
    let hooked = run(Some(&mut rec));
    assert_eq!(
        plain.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        hooked.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    );
    let mut covered: Vec<_> = rec.seen.iter().map(|(r, _)| r.clone()).collect();
    covered.sort_by_key(|r| r.start);
    assert_eq!(covered.first().map(|r| r.start), Some(0));
    assert_eq!(covered.last().map(|r| r.end), Some(len));
    assert!(
        covered.windows(2).all(|w| w[0].end == w[1].start),
        "{covered:?}"
    );
    for (r, then) in &rec.seen {
        assert_eq!(
            then[..],
            hooked[r.clone()],
            "range {r:?} changed after it was final"
        );
    }
    let order: Vec<_> = rec.seen.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(
        order.first(),
        Some(&(v * c..w1)),
        "the unused range first: {order:?}"
    );
    assert_eq!(
        order.last(),
        Some(&(wte..v * c)),
        "the tied weight last: {order:?}"
    );
    assert!(rec.progress > 0);
}

#[test]
fn saved_activations_are_what_the_backward_reads_named_by_scope_and_op() {
    let (v, c) = (5, 4);
    let values = super::randn(9, v * c + c * c);
    let be = Cpu::new();
    let master = be.upload_f32(&values, DType::F32).unwrap();
    let (ids, targets) = (vec![1u32, 3, 0], vec![2u32, 4, 1]);
    let mut t = Tape::new(&be)
        .with_params(&master)
        .with_autocast(Autocast::to(DType::BF16));
    let e = t.param_at(0, &[v, c]).unwrap();
    let w = t.param_at(v * c, &[c, c]).unwrap();
    let x = t.embedding(e, &ids, ids.len()).unwrap();
    t.set_scope("layer.0");
    let h = t.linear(x, w, None, WeightLayout::InOut).unwrap();
    let g = t.gelu(h).unwrap();
    let h2 = t.linear(g, w, None, WeightLayout::InOut).unwrap();
    t.set_scope("head");
    let logits = t.linear(h2, e, None, WeightLayout::OutIn).unwrap();
    let loss = t.cross_entropy(logits, &targets).unwrap();
    let saved = t.saved_activations();
    let names: Vec<&str> = saved.iter().map(|s| s.name.as_str()).collect();
    // the embedding's FP32 output (the input of its recorded cast) and that BF16 cast (what
    // the first GEMM's backward reads); the GEMM outputs are BF16 under autocast; the weights
    // and their casts are not activations
    assert_eq!(
        names,
        [
            "embedding.0",
            "layer.0/cast.0",
            "layer.0/linear.0",
            "layer.0/gelu.0",
            "layer.0/linear.1",
            "head/linear.0"
        ],
        "{names:?}"
    );
    assert_eq!(saved[5].shape, [3, v]);
    assert_eq!(saved[2].dtype, DType::BF16);
    assert_eq!(
        be.download_f32(saved[3].view).unwrap(),
        t.to_vec_f32(g).unwrap()
    );
    let mut grads = be.zeros(DType::F32, values.len()).unwrap();
    drop(saved);
    t.backward(loss, 1.0, &mut grads).unwrap();
}
