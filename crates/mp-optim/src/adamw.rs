//! [`AdamW`]: `torch.optim.AdamW` over a flat arena, one fused backend pass per group.

use crate::common::{check_step, require, step_rounding, sub, sub_mut};
use crate::group::{self, ParamGroup};
use crate::{OptimError, OptimizerState, Result, StateMeta};
use mp_dtype::{DType, Rounding};
use mp_kernels::{Backend, BufferExt, View, ViewMut};
use serde::{Deserialize, Serialize};

const NAME: &str = "adamw";

/// Hyper-parameters of [`AdamW`]; the defaults are `torch.optim.AdamW`'s.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate (default 1e-3).
    pub lr: f32,
    /// First-moment decay (default 0.9).
    pub beta1: f32,
    /// Second-moment decay (default 0.999).
    pub beta2: f32,
    /// Denominator epsilon (default 1e-8).
    pub eps: f32,
    /// Decoupled weight decay of the default group (default 0.01); explicit
    /// [`ParamGroup`]s carry their own.
    pub weight_decay: f32,
    /// Rounding of the model copy, and of the parameters themselves in the pure BF16/F16
    /// mode. A stochastic seed is a base: each step draws from its own stream.
    pub rounding: Rounding,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            rounding: Rounding::NearestEven,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges `torch.optim.AdamW` enforces.
    pub fn validate(&self) -> Result<()> {
        require(
            self.lr.is_finite() && self.lr >= 0.0,
            NAME,
            "lr",
            self.lr,
            "must be finite and >= 0",
        )?;
        require(
            (0.0..1.0).contains(&self.beta1),
            NAME,
            "beta1",
            self.beta1,
            "must be in [0, 1)",
        )?;
        require(
            (0.0..1.0).contains(&self.beta2),
            NAME,
            "beta2",
            self.beta2,
            "must be in [0, 1)",
        )?;
        require(
            self.eps.is_finite() && self.eps >= 0.0,
            NAME,
            "eps",
            self.eps,
            "must be finite and >= 0",
        )?;
        require(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            NAME,
            "weight_decay",
            self.weight_decay,
            "must be finite and >= 0",
        )
    }
}

/// AdamW with FP32 moments over a flat parameter arena of `len` elements.
///
/// The optimizer owns its state (moments `m`, `v` and the step count); the caller owns the
/// parameters and passes them to [`step`](Self::step) with the gradients:
///
/// - **mixed precision**: `params` is the FP32 master arena and `model` the BF16/F16 copy the
///   forward pass reads, rewritten in the same pass (round-to-nearest-even, or stochastic
///   with [`Rounding::Stochastic`]);
/// - **pure BF16 with stochastic rounding**: `params` is itself BF16 (no master copy, 4 bytes
///   a parameter less), `model` is `None` and the config's rounding is stochastic;
/// - **FP32**: `params` FP32, no model copy.
///
/// Gradients may be of any dtype; every gradient is multiplied by `grad_mult` (`clip / scale`,
/// see `mp-scaler`) as it is read. A step the caller skips (overflow) changes nothing: the
/// step count only advances in [`step`](Self::step).
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    groups: Vec<ParamGroup>,
    m: B::Buffer,
    v: B::Buffer,
    step: u64,
    len: usize,
}

impl<B: Backend> std::fmt::Debug for AdamW<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("groups", &self.groups)
            .field("step", &self.step)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> AdamW<B> {
    /// AdamW over `len` parameters in one group with `config.weight_decay`; zero moments.
    pub fn new(backend: &B, len: usize, config: AdamWConfig) -> Result<Self> {
        let groups = vec![ParamGroup::new(0..len, config.weight_decay)];
        Self::with_groups(backend, len, config, groups)
    }

    /// AdamW over `len` parameters split into `groups` (see [`ParamGroup::decay_by_ndim`]).
    pub fn with_groups(
        backend: &B,
        len: usize,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
    ) -> Result<Self> {
        config.validate()?;
        group::validate(NAME, &groups, len)?;
        Ok(AdamW {
            config,
            groups,
            m: backend.zeros(DType::F32, len)?,
            v: backend.zeros(DType::F32, len)?,
            step: 0,
            len,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The parameter groups.
    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Elements of the parameter arena.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty arena.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base learning rate.
    pub fn lr(&self) -> f32 {
        self.config.lr
    }

    /// Sets the base learning rate for the following steps (schedules call this between
    /// steps; group multipliers still apply).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        require(
            lr.is_finite() && lr >= 0.0,
            NAME,
            "lr",
            lr,
            "must be finite and >= 0",
        )?;
        self.config.lr = lr;
        Ok(())
    }

    /// Real steps taken so far (the bias-correction step count; skipped steps do not count).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The first moments (`exp_avg`), FP32.
    pub fn exp_avg(&self) -> &B::Buffer {
        &self.m
    }

    /// The second moments (`exp_avg_sq`), FP32.
    pub fn exp_avg_sq(&self) -> &B::Buffer {
        &self.v
    }

    /// The kernel hyper-parameters of `group` at 1-based step `step`.
    fn hyper(&self, group: &ParamGroup, step: u64, grad_mult: f32) -> mp_kernels::AdamW {
        mp_kernels::AdamW {
            lr: self.config.lr * group.lr_mult,
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: self.config.eps,
            weight_decay: group.weight_decay,
            step,
            grad_mult,
            rounding: step_rounding(self.config.rounding, step),
        }
    }

    /// One AdamW step: for every group, one fused pass reading `grads * grad_mult`, updating
    /// `m`, `v` and `params`, and writing `model` (when given). All buffers span the whole
    /// arena. Arguments are checked before any pass runs, so an error leaves everything as it
    /// was (a backend failure midway can leave earlier groups updated).
    pub fn step(
        &mut self,
        backend: &B,
        mut params: ViewMut<'_, B::Buffer>,
        grads: View<'_, B::Buffer>,
        mut model: Option<ViewMut<'_, B::Buffer>>,
        grad_mult: f32,
    ) -> Result<()> {
        check_step(NAME, self.len, &params, &grads, model.as_ref(), grad_mult)?;
        let next = self.step + 1;
        for g in &self.groups {
            if g.range.is_empty() {
                continue;
            }
            let hp = self.hyper(g, next, grad_mult);
            let r = &g.range;
            backend.adamw(
                sub_mut(&mut params, r),
                sub(&grads, r),
                self.m.slice_mut(r.start, r.len()),
                self.v.slice_mut(r.start, r.len()),
                model.as_mut().map(|mv| sub_mut(mv, r)),
                &hp,
            )?;
        }
        self.step = next;
        Ok(())
    }

    /// The state to save: `exp_avg`, `exp_avg_sq` (downloaded) and the scalars.
    pub fn state(&self, backend: &B) -> Result<OptimizerState> {
        Ok(OptimizerState {
            meta: StateMeta {
                optimizer: NAME.to_string(),
                len: self.len,
                step: self.step,
                config: serde_json::to_value(self.config).expect("plain data serializes"),
                groups: self.groups.clone(),
            },
            tensors: vec![
                ("exp_avg".to_string(), backend.download_f32(self.m.view())?),
                (
                    "exp_avg_sq".to_string(),
                    backend.download_f32(self.v.view())?,
                ),
            ],
        })
    }

    /// Restores a state saved by [`state`](Self::state): moments, step count,
    /// hyper-parameters and group settings. The arena length and group ranges must match;
    /// on any error nothing changes.
    pub fn load_state(&mut self, backend: &B, state: &OptimizerState) -> Result<()> {
        state.check_meta(NAME, self.len, &self.groups)?;
        let config: AdamWConfig =
            serde_json::from_value(state.meta.config.clone()).map_err(|e| {
                OptimError::StateMismatch {
                    optimizer: NAME,
                    msg: format!("config: {e}"),
                }
            })?;
        config.validate()?;
        group::validate(NAME, &state.meta.groups, self.len)?;
        let m = backend.upload_f32(state.tensor(NAME, "exp_avg", self.len)?, DType::F32)?;
        let v = backend.upload_f32(state.tensor(NAME, "exp_avg_sq", self.len)?, DType::F32)?;
        self.config = config;
        self.groups = state.meta.groups.clone();
        self.m = m;
        self.v = v;
        self.step = state.meta.step;
        Ok(())
    }
}
