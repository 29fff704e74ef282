//! What every model of this crate shares: the device batch, the seeded initialiser, the tape
//! over the weight arenas, and HF safetensors files read into and written from a layout.

use std::collections::HashMap;
use std::path::Path;

use mp_autograd::{Autocast, GradHook, ParamLayout, Tape, Tensor};
use mp_dtype::DType;
use mp_kernels::{Backend, BufferExt, DeviceBuffer, Rounding, ViewMut};

use crate::{Result, TrainError};

/// One batch of token ids (and next-token targets) on the device.
pub struct Batch<B: Backend> {
    /// `b * t` token ids, row-major `[b, t]`.
    pub ids: B::Index,
    /// `b * t` target ids, when a loss is wanted.
    pub targets: Option<B::Index>,
    /// The position of every token (`0..t`, `b` times).
    pub positions: B::Index,
    /// Sequences.
    pub b: usize,
    /// Tokens per sequence.
    pub t: usize,
}

impl<B: Backend> Batch<B> {
    /// Uploads `b` sequences of `t` tokens (`ids` and optional next-token `targets` row-major
    /// `[b, t]`), checking the ids against `vocab` and `t` against the context `n_positions`.
    pub fn upload(
        be: &B,
        ids: &[u32],
        targets: Option<&[u32]>,
        b: usize,
        t: usize,
        vocab: usize,
        n_positions: usize,
    ) -> Result<Self> {
        if b == 0 || t == 0 || t > n_positions {
            return Err(TrainError::invalid(
                "batch sequence length",
                t,
                format!("must be in 1..={n_positions} (n_positions), with b = {b} > 0"),
            ));
        }
        for (what, v) in [("ids", Some(ids)), ("targets", targets)] {
            let Some(v) = v else { continue };
            if v.len() != b * t {
                return Err(TrainError::invalid(
                    format!("batch {what}"),
                    v.len(),
                    format!("expected b * t = {} token ids", b * t),
                ));
            }
            if let Some(bad) = v.iter().find(|&&x| x as usize >= vocab) {
                return Err(TrainError::invalid(
                    format!("batch {what}"),
                    bad,
                    format!("token id out of the vocabulary of {vocab}"),
                ));
            }
        }
        let positions: Vec<u32> = (0..b).flat_map(|_| 0..t as u32).collect();
        Ok(Batch {
            ids: be.upload_index(ids)?,
            targets: targets.map(|v| be.upload_index(v)).transpose()?,
            positions: be.upload_index(&positions)?,
            b,
            t,
        })
    }

    /// The targets, or an error saying a loss needs them.
    pub fn targets(&self) -> Result<&B::Index> {
        self.targets.as_ref().ok_or_else(|| {
            TrainError::invalid("batch targets", "none", "a loss needs next-token targets")
        })
    }
}

/// SplitMix64: a tiny, portable, seedable generator (the same stream on every platform).
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub(crate) fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// A tape over `params` (and `copy` when it holds the autocast dtype).
pub(crate) fn tape_for<'a, B: Backend>(
    be: &'a B,
    params: &'a B::Buffer,
    copy: Option<&'a B::Buffer>,
    autocast: Autocast,
) -> Result<Tape<'a, B>> {
    let tape = Tape::new(be).with_params(params).with_autocast(autocast);
    match copy {
        Some(c) if autocast.dtype == Some(c.dtype()) => Ok(tape.with_model_copy(c)?),
        _ => Ok(tape),
    }
}

/// The logits `[b, t, vocab]` of `forward` on a gradient-free `tape` (row-major, widened to
/// f32) and, when the batch has targets, the mean cross-entropy: a model's `evaluate`.
pub(crate) fn evaluate_with<'a, B: Backend>(
    mut tape: Tape<'a, B>,
    batch: &'a Batch<B>,
    forward: impl FnOnce(&mut Tape<'a, B>, &'a Batch<B>) -> Result<Tensor>,
) -> Result<(Vec<f32>, Option<f32>)> {
    tape.no_grad(|tape| {
        let logits = forward(tape, batch)?;
        let loss = match &batch.targets {
            Some(tg) => {
                let loss = tape.cross_entropy(logits, tg)?;
                Some(tape.to_vec_f32(loss)?[0])
            }
            None => None,
        };
        Ok((tape.to_vec_f32(logits)?, loss))
    })
}

/// How a training micro-batch's loss goes back: the seed gradient (the loss scale), the
/// device scalar that collects `weight * loss`, and who is told when each range of the
/// gradient arena is final.
pub struct Backprop<'a, B: Backend> {
    /// The seed gradient: the loss scale (times the micro-batch's weight), 1 without scaling.
    pub scale: f32,
    /// The one-element FP32 device scalar that `weight * loss` is added into.
    pub loss_sum: ViewMut<'a, B::Buffer>,
    /// The loss's weight in `loss_sum`.
    pub weight: f32,
    /// Told as the backward pass finishes ranges of the gradient arena (see
    /// [`Tape::backward_with`]); a data-parallel run's bucket reducer.
    pub hook: Option<&'a mut dyn GradHook<B>>,
    /// Where the precision health of the activations saved for this backward pass goes
    /// (see [`crate::health::activations`]); `None`: not looked at.
    pub activations: Option<&'a mut Vec<crate::health::ActivationHealth>>,
}

impl<'a, B: Backend> Backprop<'a, B> {
    /// Seed `scale`, `weight * loss` into `loss_sum`, no hook.
    pub fn new(scale: f32, loss_sum: ViewMut<'a, B::Buffer>, weight: f32) -> Self {
        Backprop {
            scale,
            loss_sum,
            weight,
            hook: None,
            activations: None,
        }
    }
}

/// The end of a training forward: the mean cross-entropy of `logits` against the batch's
/// targets, `weight * loss` added into the device scalar `loss_sum`, and the backward pass from
/// it (seed `scale`) into the gradient arena `grads`, telling the hook.
pub(crate) fn loss_and_backward<'a, B: Backend>(
    mut tape: Tape<'a, B>,
    logits: Tensor,
    batch: &'a Batch<B>,
    bp: Backprop<'_, B>,
    grads: &mut B::Buffer,
) -> Result<()> {
    let loss = tape.cross_entropy(logits, batch.targets()?)?;
    tape.backend()
        .axpy(bp.weight, tape.view(loss)?, bp.loss_sum)?;
    if let Some(out) = bp.activations {
        *out = crate::health::activations(&tape)?;
    }
    tape.backward_with(loss, bp.scale, grads, bp.hook)?;
    Ok(())
}

/// Overwrites the master arena `params` (and the model copy, if any) with the tensors of an
/// HF safetensors file for `layout` (see [`read_safetensors`]): a model's `load_safetensors`.
pub(crate) fn load_into<B: Backend>(
    be: &B,
    layout: &ParamLayout,
    params: &mut B::Buffer,
    copy: Option<&mut B::Buffer>,
    path: &Path,
    stored: StoredRows<'_>,
) -> Result<()> {
    let host = read_safetensors(layout, path, stored)?;
    *params = be.upload_f32(&host, DType::F32)?;
    if let Some(copy) = copy {
        be.cast(params.view(), copy.view_mut(), Rounding::NearestEven)?;
    }
    Ok(())
}

/// The multiple the vocabulary-sized tensors are padded to in the arena (as llm.c pads GPT-2's
/// 50257 to 50304), so the head's GEMM has aligned shapes. The padded rows are zero, their
/// logits are masked to -inf (out of the loss, never sampled), and files store only the
/// vocabulary's rows.
pub const VOCAB_MULTIPLE: usize = 128;

/// `vocab` rounded up to [`VOCAB_MULTIPLE`].
pub fn padded_vocab(vocab: usize) -> usize {
    vocab.div_ceil(VOCAB_MULTIPLE) * VOCAB_MULTIPLE
}

/// The tensors a file stores with fewer rows than the arena: `names` (those of the layout)
/// hold `rows` rows in the file, the arena's further rows are padding.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoredRows<'a> {
    /// The vocabulary-sized tensors.
    pub names: &'a [&'a str],
    /// The rows a file holds (the vocabulary).
    pub rows: usize,
}

impl StoredRows<'_> {
    /// The shape `e` has in a file.
    fn shape(&self, e: &mp_autograd::ParamEntry) -> Vec<usize> {
        let mut shape = e.shape.clone();
        if self.names.contains(&e.name.as_str()) && !shape.is_empty() {
            shape[0] = self.rows.min(shape[0]);
        }
        shape
    }
}

/// The head: `h · wᵀ` over the padded vocabulary, the padding's logits masked to -inf (a
/// constant bias input), so they take no probability and get no gradient.
pub(crate) fn vocab_head<'a, B: Backend>(
    tape: &mut Tape<'a, B>,
    h: Tensor,
    w: Tensor,
    vocab: usize,
) -> Result<Tensor> {
    let padded = padded_vocab(vocab);
    let mask = if padded == vocab {
        None
    } else {
        let mut m = vec![0.0f32; padded];
        m[vocab..].fill(f32::NEG_INFINITY);
        let buf = tape.backend().upload_f32(&m, DType::F32)?;
        Some(tape.input(buf, &[padded])?)
    };
    Ok(tape.linear(h, w, mask, mp_autograd::WeightLayout::OutIn)?)
}

/// Zeroes, in the host arena `host` of `layout`, the padding rows of the `stored` tensors
/// (those beyond the vocabulary's rows).
pub(crate) fn zero_vocab_padding(host: &mut [f32], layout: &ParamLayout, stored: StoredRows<'_>) {
    for e in layout.entries() {
        if stored.names.contains(&e.name.as_str()) {
            let real: usize = stored.shape(e).iter().product();
            host[e.offset + real..e.offset + e.numel()].fill(0.0);
        }
    }
}

/// The values of every parameter of `layout` (in arena order, widened to f32) from an HF
/// safetensors file (F32, F16 or BF16 tensors). Every parameter must be present with its exact
/// shape; the error names the tensor and both shapes. Other tensors are ignored. A file of
/// the base model (as the hub's `gpt2` is: `h.0.attn.c_attn.weight`, no `transformer.`) is
/// read as HF's `from_pretrained` reads it: a name without its first component matches.
pub(crate) fn read_safetensors(
    layout: &ParamLayout,
    path: &Path,
    stored: StoredRows<'_>,
) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).map_err(TrainError::io("reading", path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let mut host = vec![0.0f32; layout.numel()];
    for e in layout.entries() {
        let base = e.name.split_once('.').map(|(_, rest)| rest);
        let found = st
            .tensor(&e.name)
            .or_else(|err| base.map_or(Err(err), |b| st.tensor(b)));
        let view = found.map_err(|_| {
            TrainError::checkpoint(
                path,
                format!("missing tensor {} (expected shape {:?})", e.name, e.shape),
            )
        })?;
        let want = stored.shape(e);
        if view.shape() != want.as_slice() {
            return Err(TrainError::checkpoint(
                path,
                format!(
                    "tensor {}: expected shape {want:?}, found {:?}",
                    e.name,
                    view.shape()
                ),
            ));
        }
        // a padded tensor's further rows stay zero
        let n: usize = want.iter().product();
        let dst = &mut host[e.offset..e.offset + n];
        decode(view.dtype(), view.data(), dst).map_err(|found| {
            TrainError::checkpoint(
                path,
                format!(
                    "tensor {}: dtype {found} (expected F32, F16 or BF16)",
                    e.name
                ),
            )
        })?;
    }
    Ok(host)
}

/// Writes the FP32 arena `params` of `layout` as an HF safetensors file (F32, the layout's
/// names, the `stored` tensors without their padding rows), atomically.
pub(crate) fn write_safetensors<B: Backend>(
    be: &B,
    layout: &ParamLayout,
    params: &B::Buffer,
    path: &Path,
    stored: StoredRows<'_>,
) -> Result<()> {
    let host = be.download_f32(params.view())?;
    let bytes: Vec<u8> = host.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut views = Vec::with_capacity(layout.entries().len());
    for e in layout.entries() {
        let shape = stored.shape(e);
        let n: usize = shape.iter().product();
        let data = &bytes[4 * e.offset..4 * (e.offset + n)];
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, data)
            .map_err(|err| TrainError::checkpoint(path, format!("tensor {}: {err}", e.name)))?;
        views.push((e.name.clone(), view));
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let out = safetensors::serialize(views, Some(meta))
        .map_err(|e| TrainError::checkpoint(path, format!("serialising: {e}")))?;
    crate::fsutil::write_atomic(path, &out)
}

/// The (name, f32 values) of every entry of `layout` in the arena `grads` (waits for the
/// device).
pub(crate) fn named<B: Backend>(
    be: &B,
    layout: &ParamLayout,
    grads: &B::Buffer,
) -> Result<Vec<(String, Vec<f32>)>> {
    let all = be.download_f32(grads.view())?;
    Ok(layout
        .entries()
        .iter()
        .map(|e| (e.name.clone(), all[e.offset..e.offset + e.numel()].to_vec()))
        .collect())
}

/// Widens little-endian F32/F16/BF16 bytes into `dst`; the unsupported dtype otherwise.
fn decode(
    dtype: safetensors::Dtype,
    data: &[u8],
    dst: &mut [f32],
) -> std::result::Result<(), String> {
    use safetensors::Dtype as D;
    match dtype {
        D::F32 => dst
            .iter_mut()
            .zip(data.chunks_exact(4))
            .for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        D::F16 => dst
            .iter_mut()
            .zip(data.chunks_exact(2))
            .for_each(|(d, b)| *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        D::BF16 => dst
            .iter_mut()
            .zip(data.chunks_exact(2))
            .for_each(|(d, b)| *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => return Err(format!("{other:?}")),
    }
    Ok(())
}
