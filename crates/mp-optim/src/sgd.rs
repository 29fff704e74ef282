//! [`Sgd`]: `torch.optim.SGD` with momentum over a flat arena, one fused backend pass per group.

use crate::common::{check_step, require, step_rounding, sub, sub_mut};
use crate::group::{self, ParamGroup};
use crate::{OptimError, OptimizerState, Result, StateMeta};
use mp_dtype::{DType, Rounding};
use mp_kernels::{Backend, BufferExt, View, ViewMut};
use serde::{Deserialize, Serialize};

const NAME: &str = "sgd";

/// Hyper-parameters of [`Sgd`]; the defaults are `torch.optim.SGD`'s.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Learning rate (default 1e-3).
    pub lr: f32,
    /// Momentum factor (default 0: plain SGD).
    pub momentum: f32,
    /// Dampening of the momentum (default 0).
    pub dampening: f32,
    /// L2 weight decay of the default group, added to the gradient (default 0).
    pub weight_decay: f32,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    /// Rounding of the model copy (and of BF16/F16 parameters in the pure mode).
    pub rounding: Rounding,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            rounding: Rounding::NearestEven,
        }
    }
}

impl SgdConfig {
    /// Checks the ranges `torch.optim.SGD` enforces.
    pub fn validate(&self) -> Result<()> {
        let finite_nonneg = |x: f32| x.is_finite() && x >= 0.0;
        require(
            finite_nonneg(self.lr),
            NAME,
            "lr",
            self.lr,
            "must be finite and >= 0",
        )?;
        require(
            finite_nonneg(self.momentum),
            NAME,
            "momentum",
            self.momentum,
            "must be finite and >= 0",
        )?;
        require(
            self.dampening.is_finite(),
            NAME,
            "dampening",
            self.dampening,
            "must be finite",
        )?;
        require(
            finite_nonneg(self.weight_decay),
            NAME,
            "weight_decay",
            self.weight_decay,
            "must be finite and >= 0",
        )?;
        require(
            !self.nesterov || (self.momentum > 0.0 && self.dampening == 0.0),
            NAME,
            "nesterov",
            self.nesterov,
            "Nesterov momentum requires a momentum and zero dampening",
        )
    }
}

/// SGD with momentum over a flat parameter arena; the momentum buffer is FP32. Parameters,
/// gradients and the model copy are handled as in [`AdamW`](crate::AdamW).
pub struct Sgd<B: Backend> {
    config: SgdConfig,
    groups: Vec<ParamGroup>,
    momentum: B::Buffer,
    step: u64,
    len: usize,
}

impl<B: Backend> std::fmt::Debug for Sgd<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sgd")
            .field("config", &self.config)
            .field("groups", &self.groups)
            .field("step", &self.step)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Sgd<B> {
    /// SGD over `len` parameters in one group with `config.weight_decay`.
    pub fn new(backend: &B, len: usize, config: SgdConfig) -> Result<Self> {
        let groups = vec![ParamGroup::new(0..len, config.weight_decay)];
        Self::with_groups(backend, len, config, groups)
    }

    /// SGD over `len` parameters split into `groups`.
    pub fn with_groups(
        backend: &B,
        len: usize,
        config: SgdConfig,
        groups: Vec<ParamGroup>,
    ) -> Result<Self> {
        config.validate()?;
        group::validate(NAME, &groups, len)?;
        Ok(Sgd {
            config,
            groups,
            momentum: backend.zeros(DType::F32, len)?,
            step: 0,
            len,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &SgdConfig {
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

    /// Sets the base learning rate for the following steps.
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

    /// Real steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The momentum buffer (`momentum_buffer`), FP32.
    pub fn momentum_buffer(&self) -> &B::Buffer {
        &self.momentum
    }

    /// One SGD step over every group (see [`AdamW::step`](crate::AdamW::step) for the
    /// buffers); the first real step initialises the momentum buffer to the gradient.
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
            let c = &self.config;
            let hp = mp_kernels::Sgd {
                lr: c.lr * g.lr_mult,
                momentum: c.momentum,
                dampening: c.dampening,
                weight_decay: g.weight_decay,
                nesterov: c.nesterov,
                first_step: self.step == 0,
                grad_mult,
                rounding: step_rounding(c.rounding, next),
            };
            let r = &g.range;
            backend.sgd(
                sub_mut(&mut params, r),
                sub(&grads, r),
                self.momentum.slice_mut(r.start, r.len()),
                model.as_mut().map(|mv| sub_mut(mv, r)),
                &hp,
            )?;
        }
        self.step = next;
        Ok(())
    }

    /// The state to save: `momentum_buffer` and the scalars.
    pub fn state(&self, backend: &B) -> Result<OptimizerState> {
        Ok(OptimizerState {
            meta: StateMeta {
                optimizer: NAME.to_string(),
                len: self.len,
                step: self.step,
                config: serde_json::to_value(self.config).expect("plain data serializes"),
                groups: self.groups.clone(),
            },
            tensors: vec![(
                "momentum_buffer".to_string(),
                backend.download_f32(self.momentum.view())?,
            )],
        })
    }

    /// Restores a state saved by [`state`](Self::state); on any error nothing changes.
    pub fn load_state(&mut self, backend: &B, state: &OptimizerState) -> Result<()> {
        state.check_meta(NAME, self.len, &self.groups)?;
        let config: SgdConfig = serde_json::from_value(state.meta.config.clone()).map_err(|e| {
            OptimError::StateMismatch {
                optimizer: NAME,
                msg: format!("config: {e}"),
            }
        })?;
        config.validate()?;
        group::validate(NAME, &state.meta.groups, self.len)?;
        let momentum =
            backend.upload_f32(state.tensor(NAME, "momentum_buffer", self.len)?, DType::F32)?;
        self.config = config;
        self.groups = state.meta.groups.clone();
        self.momentum = momentum;
        self.step = state.meta.step;
        Ok(())
    }
}
