//! The training loop, generic over the backend.
//!
//! [`Trainer`] owns the model, optimizer, loss scaler and data of a run; [`Trainer::step`] is
//! one optimizer step (llm.c's loop body):
//!
//! ```text
//! zero grads
//! for each micro-batch: forward, loss * (scale / accum), backward (the first into the
//!     arena, each later one into a zeroed buffer that is then added to it)
//! data-parallel: the ranks agree, the gradients are summed over ranks (see [`crate::dist`])
//! one read pass over the gradients: non-finite? global norm of the unscaled gradients
//! overflow: skip (nothing changes but the scale) | else one fused AdamW pass with
//!     grad_mult = clip / scale, writing the low-precision model copy
//! scaler update
//! ```

use crate::checkpoint::{self, TrainerState};
use crate::config::{DistEngine, Precision, ScalingMode, StorageDtype, TrainConfig};
use crate::data::Dataset;
use crate::dist::{BucketReducer, DataParallel};
use crate::error::{Result, TrainError};
use crate::fault::StepSet;
use crate::memory::{self, MemoryBreakdown};
use crate::metrics::EvalRecord;
use crate::model::{Backprop, Model};
use crate::schedule;
use mp_autograd::{Autocast, GradHook};
use mp_dist::World;
use mp_dtype::{DType, RangeStats, Rounding};
use mp_kernels::{Backend, BufferExt, DeviceBuffer};
use mp_optim::{AdamW, AdamWConfig, OptimizerState, ParamGroup, StateMeta};
use mp_scaler::{GradScaler, ScalerConfig};
use std::path::{Path, PathBuf};

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Mean loss of the step's micro-batches (unscaled).
    pub loss: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Loss scale used by the backward pass.
    pub scale: f32,
    /// Global norm of the unscaled gradients before clipping (`None` when skipped).
    pub grad_norm: Option<f64>,
    /// True when the update was skipped (non-finite gradients).
    pub skipped: bool,
}

/// What the gradients look like in FP16 (the Micikevicius et al. 2018 histogram).
#[derive(Clone, Debug, PartialEq)]
pub struct GradProbe {
    /// Fraction of non-zero unscaled gradient values that round to zero in FP16 at scale 1.
    pub underflow_at_1: f64,
    /// The same fraction at the step's loss scale.
    pub underflow_at_scale: f64,
    /// Fraction of gradient values that are exactly zero in the arena.
    pub zero_fraction: f64,
    /// Histogram of `floor(log2 |g|)` of the unscaled gradients (see [`RangeStats`]).
    pub histogram: Vec<u64>,
}

/// The loss scaler a config asks for. `none` is a static scale of 1, so steps with
/// non-finite gradients are still skipped.
pub fn scaler_config(cfg: &TrainConfig) -> ScalerConfig {
    let s = &cfg.loss_scaling;
    match cfg.scaling_mode() {
        ScalingMode::Dynamic | ScalingMode::Auto => ScalerConfig {
            enabled: true,
            dynamic: true,
            init_scale: s.init_scale,
            growth_factor: f64::from(s.growth_factor),
            backoff_factor: f64::from(s.backoff_factor),
            growth_interval: s.growth_interval,
            hysteresis: s.hysteresis,
            consecutive_hysteresis: false,
            min_scale: Some(s.min_scale),
            max_scale: Some(s.max_scale),
        },
        ScalingMode::Static => ScalerConfig::static_scale(s.init_scale),
        ScalingMode::None => ScalerConfig::static_scale(1.0),
    }
}

/// A run in progress: model, optimizer, scaler, data and counters.
pub struct Trainer<B: Backend> {
    /// The run config.
    pub cfg: TrainConfig,
    /// The device.
    pub be: B,
    /// The model (master weights, gradients, model copy).
    pub model: Model<B>,
    /// AdamW (FP32 moments; weight decay on 2-D parameters only).
    pub opt: AdamW<B>,
    /// The loss scaler.
    pub scaler: GradScaler,
    /// The data.
    pub data: Dataset,
    /// Optimizer steps taken.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Steps skipped for non-finite gradients.
    pub skipped: u64,
    /// The world this trainer is a rank of, and what the ranks share.
    pub dp: DataParallel<B>,
    autocast: Autocast,
    /// The steps whose gradients are poisoned (`poison_grad_steps`, a testing hook).
    poison: StepSet,
    /// The rank and step that fail (`distributed.fail_rank_at`, a testing hook).
    fail_at: Option<(usize, u64)>,
    /// The optimizer's groups over the whole arena (ZeRO-1's optimizer holds its shard's).
    groups: Vec<ParamGroup>,
    /// Where a later micro-batch's gradients go before they are added to the arena.
    micro_grads: Option<B::Buffer>,
    /// `Some` before a step: the step records the health of the activations its first
    /// micro-batch saves here (see [`crate::health::activations`]).
    pub activation_health: Option<Vec<crate::health::ActivationHealth>>,
}

impl<B: Backend> Trainer<B> {
    /// A fresh run: weights initialised from the seed, zero optimizer state.
    pub fn new(be: B, cfg: TrainConfig, data: Dataset) -> Result<Self> {
        Self::with_world(be, cfg, data, World::single())
    }

    /// A fresh run as one rank of `world` (every rank starts from the same weights).
    pub fn with_world(be: B, cfg: TrainConfig, data: Dataset, world: World) -> Result<Self> {
        let mut model = Model::new(&be, &cfg.model, cfg.seed)?;
        let autocast = match cfg.precision {
            Precision::Fp32 => Autocast::OFF,
            p => Autocast::to(p.compute_dtype()),
        };
        match cfg.precision {
            Precision::Fp32 => {}
            Precision::Bf16 | Precision::Fp16 => {
                model.enable_model_copy(&be, cfg.precision.compute_dtype())?
            }
            Precision::Bf16Sr => model.to_pure_bf16(&be)?,
        }
        if cfg.grad_dtype != StorageDtype::Fp32 {
            model.set_grad_dtype(&be, cfg.grad_dtype.dtype())?;
        }
        if let Some(gpt) = model.as_gpt_mut() {
            // GPT-only options (the config refuses them for other architectures)
            gpt.residual_dtype = cfg.residual_dtype.dtype();
            gpt.recompute_gelu = cfg.recompute_gelu;
        }
        let groups = ParamGroup::decay_by_ndim(
            model
                .layout()
                .entries()
                .iter()
                .map(|e| (e.offset..e.offset + e.numel(), e.shape.len())),
            cfg.weight_decay as f32,
        );
        let mut dp = DataParallel::new(world, &cfg.distributed, model.num_params());
        dp.connect(
            &be,
            model.grads(),
            cfg.distributed.engine == DistEngine::Nccl,
        )?;
        let owned = dp.owned();
        let opt = AdamW::with_groups(
            &be,
            owned.len(),
            AdamWConfig {
                lr: cfg.learning_rate as f32,
                beta1: cfg.adam_beta1 as f32,
                beta2: cfg.adam_beta2 as f32,
                eps: cfg.adam_epsilon as f32,
                weight_decay: cfg.weight_decay as f32,
                rounding: match cfg.precision {
                    // A base seed: the optimizer draws a fresh stream every step.
                    Precision::Bf16Sr => Rounding::Stochastic { seed: cfg.seed },
                    _ => Rounding::NearestEven,
                },
            },
            ParamGroup::restrict(&groups, owned),
        )?;
        let scaler = GradScaler::new(scaler_config(&cfg))?;
        let poison = StepSet::parse(&cfg.poison_grad_steps)
            .map_err(|e| TrainError::invalid("poison_grad_steps", &cfg.poison_grad_steps, e))?;
        let fail_at = cfg.distributed.fail_at()?;
        Ok(Trainer {
            cfg,
            be,
            model,
            opt,
            scaler,
            data,
            step: 0,
            tokens: 0,
            skipped: 0,
            dp,
            autocast,
            poison,
            fail_at,
            groups,
            micro_grads: None,
            activation_health: None,
        })
    }

    /// Restores weights, optimizer, scaler and counters from a verified checkpoint folder.
    pub fn restore(&mut self, dir: &Path, state: &TrainerState) -> Result<()> {
        checkpoint::check_model(dir, &self.cfg.model)?;
        self.model
            .load_safetensors(&self.be, &dir.join(checkpoint::MODEL_FILE))?;
        if self.cfg.precision == Precision::Bf16Sr {
            self.model.to_pure_bf16(&self.be)?;
        }
        let meta_path = dir.join(checkpoint::OPTIMIZER_META_FILE);
        let tensors_path = dir.join(checkpoint::OPTIMIZER_FILE);
        let meta =
            std::fs::read_to_string(&meta_path).map_err(TrainError::io("reading", &meta_path))?;
        let tensors =
            std::fs::read(&tensors_path).map_err(TrainError::io("reading", &tensors_path))?;
        let mut opt_state = OptimizerState::from_parts(&meta, &tensors)
            .map_err(|e| TrainError::checkpoint(&tensors_path, e.to_string()))?;
        if self.dp.sharded() {
            // ZeRO-1: this rank's shard of the whole state (of any world size's run)
            if opt_state.meta.len != self.model.num_params() {
                return Err(TrainError::checkpoint(
                    &tensors_path,
                    format!(
                        "optimizer state of {} elements for a model of {}",
                        opt_state.meta.len,
                        self.model.num_params()
                    ),
                ));
            }
            opt_state = opt_state.shard(self.dp.owned());
        }
        self.opt
            .load_state(&self.be, &opt_state)
            .map_err(|e| TrainError::checkpoint(&tensors_path, e.to_string()))?;
        let scaler_path = dir.join(checkpoint::SCALER_FILE);
        let json = std::fs::read_to_string(&scaler_path)
            .map_err(TrainError::io("reading", &scaler_path))?;
        if json.trim() != "null" {
            self.scaler
                .load_state_dict_json(&json)
                .map_err(|e| TrainError::checkpoint(&scaler_path, e.to_string()))?;
        }
        self.step = state.global_step;
        self.tokens = state.tokens_seen;
        self.skipped = state.skipped_steps;
        Ok(())
    }

    /// Loads only the weights of a checkpoint (for evaluation and sampling).
    pub fn load_weights(&mut self, dir: &Path) -> Result<()> {
        checkpoint::check_model(dir, &self.cfg.model)?;
        self.model
            .load_safetensors(&self.be, &dir.join(checkpoint::MODEL_FILE))?;
        if self.cfg.precision == Precision::Bf16Sr {
            self.model.to_pure_bf16(&self.be)?;
        }
        Ok(())
    }

    /// Sequence length of training batches.
    pub fn seq_len(&self) -> usize {
        self.cfg.model.n_positions
    }

    /// One optimizer step over `grad_accum_steps` micro-batches (of every rank).
    pub fn step(&mut self) -> Result<StepOutcome> {
        self.step_agreed(false).map(|(s, _)| s)
    }

    /// [`Trainer::step`] in which this rank may ask to stop (a signal): the ranks agree after
    /// the backward pass, and the flag says whether any rank asked. A rank's failure ends the
    /// step on every rank with an error naming it.
    pub fn step_agreed(&mut self, stop: bool) -> Result<(StepOutcome, bool)> {
        let lr = schedule::learning_rate(&self.cfg, self.step);
        let scale = self.scaler.get_scale();
        let mut reducer = self.dp.reducer(self.poison.contains(self.step));
        let mut local = self.backward_local(scale, reducer.as_mut());
        if let Some(r) = reducer {
            // after a failure too: every rank runs the same collectives
            let reduced = self.dp.finish_reducer(r, &self.be, self.model.grads_mut());
            local = local.and_then(|l| reduced.map(|()| l));
        }
        let (loss_sum, stop) = self.dp.agree(local, stop)?;
        let be = &self.be;
        self.dp.reduce_grads(be, self.model.grads_mut())?;
        let stats = self
            .dp
            .grad_stats(be, self.model.grads(), self.scaler.inv_scale())?;
        let check = self.scaler.check_stats(stats)?;
        let skipped = check.found_inf;
        if skipped {
            self.skipped += 1;
        } else {
            let clip = check.clip_factor(self.cfg.max_grad_norm);
            self.opt.set_lr(lr as f32)?;
            let r = self.dp.owned();
            let (params, grads, copy) = self.model.arenas_mut();
            self.opt.step(
                be,
                params.slice_mut(r.start, r.len()),
                grads.slice(r.start, r.len()),
                copy.map(|c| c.slice_mut(r.start, r.len())),
                check.grad_mult(clip),
            )?;
            let (params, _, copy) = self.model.arenas_mut();
            self.dp.gather_weights(be, params, copy)?;
        }
        self.scaler.update(None)?;
        // the step's one read of the loss, after the optimizer
        let loss = self.dp.sum_loss(be.download_f32(loss_sum.view())?[0])?;
        let global = self.cfg.grad_accum_steps * self.dp.size();
        self.step += 1;
        self.tokens += (self.cfg.batch_size * self.seq_len() * global) as u64;
        let outcome = StepOutcome {
            loss,
            lr,
            scale,
            grad_norm: (!skipped).then_some(check.grad_norm),
            skipped,
        };
        Ok((outcome, stop))
    }

    /// This rank's micro-batches of the step: their gradients (times `scale`) summed into
    /// the arena, and their weighted losses into the returned device scalar. Micro-batch `k`
    /// of rank `r` is global micro-batch `step * A * world + r * A + k`. The last one's
    /// backward pass hands its finished gradients to `reducer` (DDP), which adds them into the
    /// sum and starts their all-reduce; the earlier ones communicate nothing.
    fn backward_local(
        &mut self,
        scale: f32,
        mut reducer: Option<&mut BucketReducer<B>>,
    ) -> Result<B::Buffer> {
        let (cfg, be) = (&self.cfg, &self.be);
        let (rows, t, accum) = (cfg.batch_size, self.seq_len(), cfg.grad_accum_steps);
        let global = accum * self.dp.size();
        if let Some((rank, step)) = self.fail_at
            && rank == self.dp.rank()
            && step == self.step
        {
            return Err(TrainError::invalid(
                "distributed.fail_rank_at",
                &cfg.distributed.fail_rank_at,
                format!("the injected failure of rank {rank} at step {step}"),
            ));
        }
        self.model.zero_grads(be)?;
        let mut loss_sum = be.zeros(DType::F32, 1)?;
        let (s, w) = (scale / global as f32, 1.0 / global as f32);
        for k in 0..accum {
            let micro = self.step * global as u64 + (self.dp.rank() * accum + k) as u64;
            let host = self.data.train_batch(cfg.seed, micro, rows, t)?;
            let batch = self
                .model
                .batch(be, &host.inputs, Some(&host.targets), rows, t)?;
            let reduce = reducer.as_deref_mut().filter(|_| k + 1 == accum);
            if k == 0 {
                let mut hook = reduce.map(|r| r.hook(be, None));
                let mut bp = Backprop::new(s, loss_sum.view_mut(), w);
                bp.hook = hook.as_mut().map(|h| h as &mut dyn GradHook<B>);
                bp.activations = self.activation_health.as_mut();
                self.model
                    .forward_backward_on_device(be, &batch, self.autocast, bp)?;
                continue;
            }
            // a later micro-batch: its gradients into a zeroed buffer, then added, so that
            // the sum is the same bits as an all-reduce over ranks of one micro-batch each
            let grads = self.model.grads();
            let mut micro_grads = match self.micro_grads.take() {
                Some(mut g) => {
                    be.fill(g.view_mut(), 0.0)?;
                    g
                }
                None => be.zeros(grads.dtype(), grads.len())?,
            };
            // the model's arena is now the zeroed one; `micro_grads` holds the sum
            self.model.swap_grads(&mut micro_grads);
            let reducing = reduce.is_some();
            let run = {
                let mut hook = reduce.map(|r| r.hook(be, Some(&mut micro_grads)));
                let mut bp = Backprop::new(s, loss_sum.view_mut(), w);
                bp.hook = hook.as_mut().map(|h| h as &mut dyn GradHook<B>);
                self.model
                    .forward_backward_on_device(be, &batch, self.autocast, bp)
            };
            self.model.swap_grads(&mut micro_grads);
            run?;
            if !reducing {
                be.axpy(1.0, micro_grads.view(), self.model.grads_mut().view_mut())?;
            }
            self.micro_grads = Some(micro_grads);
        }
        if self.poison.contains(self.step) && reducer.is_none() {
            // the testing hook: an overflow in the backward pass, as the check would see it
            // (a reducer poisons the gradients itself, before it sends them)
            be.fill(self.model.grads_mut().slice_mut(0, 1), f32::INFINITY)?;
        }
        Ok(loss_sum)
    }

    /// Whether any master weight is NaN or infinite (one pass over the arena).
    pub fn weights_non_finite(&self) -> Result<bool> {
        Ok(self
            .be
            .grad_stats(self.model.params().view(), 1.0)?
            .non_finite)
    }

    /// The master weights (the parameter arena) on the host, widened to f32.
    pub fn weights_host(&self) -> Result<Vec<f32>> {
        Ok(self.be.download_f32(self.model.params().view())?)
    }

    /// The gradient arena of the last step (before the next zeroing) on the host, widened
    /// to f32: `g * scale`, summed over ranks. Under ZeRO-1 the shards are gathered: a
    /// collective that every rank calls.
    pub fn grads_host(&self) -> Result<Vec<f32>> {
        if self.dp.sharded() {
            let r = self.dp.owned();
            let mine = self
                .be
                .download_f32(self.model.grads().slice(r.start, r.len()))?;
            return self.dp.gather_f32(&mine);
        }
        Ok(self.be.download_f32(self.model.grads().view())?)
    }

    /// A device copy of the master weights: the weights before a step, for the update its
    /// health record measures ([`Trainer::health`]).
    pub fn weights_snapshot(&self) -> Result<B::Buffer> {
        let p = self.model.params();
        let mut snap = self.be.uninit(p.dtype(), p.len())?;
        self.be
            .cast(p.view(), snap.view_mut(), mp_kernels::Rounding::NearestEven)?;
        Ok(snap)
    }

    /// The precision health of the last step (see [`crate::health`]), counted on the backend:
    /// its gradient arena (at `scale`), the weights, and the update from `before` (a
    /// [`Trainer::weights_snapshot`] taken before the step; `None` for a skipped step).
    /// `grads` is the host arena of [`Trainer::grads_host`]: under ZeRO-1, where no rank holds
    /// the whole reduced arena, the counts are taken over it (uploaded); otherwise over the
    /// device arena itself.
    pub fn health(
        &self,
        grads: &[f32],
        scale: f32,
        before: Option<&B::Buffer>,
    ) -> Result<crate::health::HealthRecord> {
        let gathered;
        let grad_view = if self.dp.sharded() {
            gathered = self.be.upload_f32(grads, mp_kernels::DType::F32)?;
            gathered.view()
        } else {
            self.model.grads().view()
        };
        crate::health::record(
            &self.be,
            self.step,
            scale,
            self.model.layout(),
            grad_view,
            self.model.params().view(),
            before.map(|b| b.view()),
        )
    }

    /// Validation loss over `eval_batches` fixed batches, and exact-match accuracy on
    /// `eval_problems` held-out arithmetic problems (greedy decoding).
    pub fn evaluate(&self) -> Result<EvalRecord> {
        let cfg = &self.cfg;
        let t = self.seq_len();
        let mut sum = 0.0f64;
        for i in 0..cfg.eval_batches {
            let host = self
                .data
                .val_batch(i, cfg.eval_batches, cfg.batch_size, t)?;
            let batch =
                self.model
                    .batch(&self.be, &host.inputs, Some(&host.targets), host.rows, t)?;
            let (_, loss) = self.model.evaluate(&self.be, &batch, self.autocast)?;
            sum += f64::from(loss.unwrap_or(f32::NAN));
        }
        let val_loss = (sum / cfg.eval_batches as f64) as f32;
        let (accuracy, problems) = match self.data.arithmetic_task() {
            Some(task) if cfg.eval_problems > 0 => {
                let prompt_len = self.data.prompt_len(t);
                let probs = self.data.eval_problems(cfg.eval_problems, prompt_len);
                let mut correct = 0usize;
                for chunk in probs.chunks(64) {
                    let prompts: Vec<Vec<u32>> = chunk.iter().map(|(p, _)| p.clone()).collect();
                    let outs = self.generate_greedy(&prompts, task.answer_len())?;
                    correct += chunk
                        .iter()
                        .zip(&outs)
                        .filter(|((_, want), got)| {
                            got.iter().map(|&b| char::from(b as u8)).collect::<String>() == *want
                        })
                        .count();
                }
                (
                    Some(correct as f64 / probs.len().max(1) as f64),
                    probs.len(),
                )
            }
            _ => (None, 0),
        };
        Ok(EvalRecord {
            step: self.step,
            val_loss,
            accuracy,
            problems,
        })
    }

    /// Greedy continuation of equally long prompts by `n` tokens each (the window slides
    /// when it would exceed the context).
    pub fn generate_greedy(&self, prompts: &[Vec<u32>], n: usize) -> Result<Vec<Vec<u32>>> {
        generate(&self.be, &self.model, self.autocast, prompts, n, |logits| {
            argmax(logits)
        })
    }

    /// The trainer state of a checkpoint of this run now.
    pub fn trainer_state(&self, last_eval: Option<&EvalRecord>) -> TrainerState {
        TrainerState {
            format_version: checkpoint::FORMAT_VERSION,
            global_step: self.step,
            tokens_seen: self.tokens,
            skipped_steps: self.skipped,
            seed: self.cfg.seed,
            micro_batches: self.step * (self.cfg.grad_accum_steps * self.dp.size()) as u64,
            precision: self.cfg.precision.name().into(),
            last_eval: last_eval.map(|e| (e.val_loss, e.accuracy)),
            writer: format!("mp-train {}", env!("CARGO_PKG_VERSION")),
            files: Default::default(),
        }
    }

    /// The whole optimizer state, as one process would hold it: under ZeRO-1 every rank's
    /// shard gathered (a collective: every rank calls it).
    pub fn optimizer_state(&self) -> Result<OptimizerState> {
        let state = self.opt.state(&self.be)?;
        if !self.dp.sharded() {
            return Ok(state);
        }
        let tensors = state
            .tensors
            .iter()
            .map(|(name, t)| Ok((name.clone(), self.dp.gather_f32(t)?)))
            .collect::<Result<_>>()?;
        Ok(OptimizerState {
            meta: StateMeta {
                len: self.model.num_params(),
                groups: self.groups.clone(),
                ..state.meta
            },
            tensors,
        })
    }

    /// Writes `checkpoint-{step}` into `run_dir` and deletes the oldest beyond the limit.
    /// Every rank of a data-parallel run calls it; rank 0 alone writes, and the ranks agree on
    /// whether it succeeded.
    pub fn save_checkpoint(
        &self,
        run_dir: &Path,
        last_eval: Option<&EvalRecord>,
    ) -> Result<PathBuf> {
        let opt_state = self.optimizer_state()?;
        let written = if self.dp.is_lead() {
            self.write_checkpoint(run_dir, last_eval, &opt_state)
        } else {
            Ok(run_dir.join(checkpoint::dir_name(self.step)))
        };
        self.dp.agree(written, false).map(|(p, _)| p)
    }

    fn write_checkpoint(
        &self,
        run_dir: &Path,
        last_eval: Option<&EvalRecord>,
        opt_state: &OptimizerState,
    ) -> Result<PathBuf> {
        let state = self.trainer_state(last_eval);
        let eot = self.data.tokenizer.eot();
        let path = checkpoint::save(run_dir, state, &self.cfg, eot, |dir| {
            self.model
                .save_safetensors(&self.be, &dir.join(checkpoint::MODEL_FILE))?;
            let state = opt_state;
            crate::fsutil::write_synced(
                &dir.join(checkpoint::OPTIMIZER_FILE),
                &state.tensors_safetensors()?,
            )?;
            crate::fsutil::write_synced(
                &dir.join(checkpoint::OPTIMIZER_META_FILE),
                state.meta_json().as_bytes(),
            )?;
            let scaler = self.scaler.state_dict_json();
            crate::fsutil::write_synced(&dir.join(checkpoint::SCALER_FILE), scaler.as_bytes())?;
            self.data.tokenizer.save_into(dir)
        })?;
        checkpoint::rotate(run_dir, self.cfg.save_total_limit)?;
        Ok(path)
    }

    /// Device memory by category for this run's config, on this rank.
    pub fn memory(&self) -> MemoryBreakdown {
        let mut m = memory::estimate(&self.cfg);
        let n = self.model.num_params().max(1) as u64;
        m.optimizer = m.optimizer / n * self.dp.owned().len() as u64;
        m
    }

    /// The autocast setting of the run.
    pub fn autocast(&self) -> Autocast {
        self.autocast
    }
}

/// Looks at the gradients `host` of the last step ([`Trainer::grads_host`], `g * scale`):
/// how many would underflow in FP16 at scale 1 and at `scale`, and their exponent
/// histogram.
pub fn probe_grads(host: &[f32], scale: f32) -> GradProbe {
    let inv = 1.0 / scale;
    let at_1 = mp_dtype::range_stats(host, DType::F16, inv);
    let at_s = mp_dtype::range_stats(host, DType::F16, 1.0);
    let nonzero = (at_1.total - at_1.zero - at_1.non_finite).max(1) as f64;
    GradProbe {
        underflow_at_1: at_1.underflow_to_zero as f64 / nonzero,
        underflow_at_scale: at_s.underflow_to_zero as f64 / nonzero,
        zero_fraction: at_1.zero as f64 / at_1.total.max(1) as f64,
        histogram: at_1.exponent_histogram,
    }
}

/// Index of the largest logit (the first on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Continues each prompt (all of one length) by `n` tokens chosen by `pick` from the
/// last position's logits; the window keeps the last `n_positions` tokens.
pub fn generate<B: Backend>(
    be: &B,
    model: &Model<B>,
    autocast: Autocast,
    prompts: &[Vec<u32>],
    n: usize,
    mut pick: impl FnMut(&[f32]) -> u32,
) -> Result<Vec<Vec<u32>>> {
    let rows = prompts.len();
    if rows == 0 || n == 0 {
        return Ok(vec![Vec::new(); rows]);
    }
    let len = prompts[0].len();
    if len == 0 || prompts.iter().any(|p| p.len() != len) {
        return Err(TrainError::invalid(
            "prompt",
            len,
            "prompts must be non-empty and of one length",
        ));
    }
    let ctx = model.context();
    // logits rows are the padded width; only the vocabulary's ids are offered to `pick`
    let (vocab, width) = (model.vocab(), model.logits_width());
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut out = vec![Vec::with_capacity(n); rows];
    for _ in 0..n {
        let t = seqs[0].len().min(ctx);
        let ids: Vec<u32> = seqs
            .iter()
            .flat_map(|s| s[s.len() - t..].iter().copied())
            .collect();
        let batch = model.batch(be, &ids, None, rows, t)?;
        let (logits, _) = model.evaluate(be, &batch, autocast)?;
        for (r, seq) in seqs.iter_mut().enumerate() {
            let row = (r * t + t - 1) * width;
            let tok = pick(&logits[row..row + vocab]);
            seq.push(tok);
            out[r].push(tok);
        }
    }
    Ok(out)
}

/// Exponent bins of a [`RangeStats`] histogram as `(lowest exponent, counts)` trimmed to the
/// non-empty range (the zero bin and the f32-overflow bin dropped).
pub fn trim_histogram(hist: &[u64]) -> (i32, Vec<u64>) {
    if hist.len() < 3 {
        return (0, Vec::new());
    }
    let exps = &hist[1..hist.len() - 1];
    let first = exps.iter().position(|&c| c > 0);
    let last = exps.iter().rposition(|&c| c > 0);
    match (first, last) {
        (Some(a), Some(b)) => (RangeStats::MIN_EXPONENT + a as i32, exps[a..=b].to_vec()),
        _ => (0, Vec::new()),
    }
}
