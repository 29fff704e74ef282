//! [`GradScaler`]: dynamic loss scaling with `torch.amp.GradScaler` semantics.
//!
//! The scale lives on the host as an `f32` (PyTorch keeps a one-element f32 tensor); the only
//! device work is the fused gradient check [`OptimOps::grad_stats`], one read pass that finds
//! non-finite gradients and the global norm of the unscaled gradients. Unscaling itself is
//! never a pass of its own: [`GradCheck::grad_mult`] is handed to the optimizer, which
//! multiplies each gradient by it as it reads it.

use crate::{Result, ScalerConfig, ScalerError, ScalerState};
use mp_kernels::{Backend, GradStats, View};
use std::collections::BTreeMap;

/// Names one optimizer driven by a scaler (PyTorch keys its per-optimizer state by
/// `id(optimizer)`). A loop with one optimizer uses [`OptimizerId::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct OptimizerId(pub usize);

impl OptimizerId {
    /// The optimizer of the single-optimizer API ([`GradScaler::check`]).
    pub const DEFAULT: OptimizerId = OptimizerId(0);
}

/// Where one optimizer is in the `unscale_` -> `step` -> `update` cycle (PyTorch's `OptState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OptStage {
    /// Nothing recorded since the last `update`.
    #[default]
    Ready,
    /// Gradients checked (`unscale_`), not stepped yet.
    Unscaled,
    /// `step` called (whether or not the optimizer actually stepped).
    Stepped,
}

#[derive(Clone, Copy, Debug, Default)]
struct PerOptimizer {
    stage: OptStage,
    found_inf: Option<bool>,
}

/// The result of checking one flat gradient buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradCheck {
    /// True when any gradient is +-inf or NaN: the step must be skipped.
    pub found_inf: bool,
    /// L2 norm of all unscaled gradients (meaningless when `found_inf`).
    pub grad_norm: f64,
    /// `1 / scale` as PyTorch computes it (`scale.double().reciprocal().float()`): the factor
    /// that unscales the gradients (1 for a disabled scaler).
    pub inv_scale: f32,
}

impl GradCheck {
    /// PyTorch's `clip_grad_norm_` coefficient for `max_norm`: `min(1, max_norm / (norm + 1e-6))`
    /// (1 when `max_norm` is not positive, i.e. clipping is off).
    pub fn clip_factor(&self, max_norm: f64) -> f32 {
        if max_norm > 0.0 && self.grad_norm.is_finite() {
            (max_norm / (self.grad_norm + 1e-6)).min(1.0) as f32
        } else {
            1.0
        }
    }

    /// The factor the optimizer multiplies every raw gradient by: `clip / scale`.
    pub fn grad_mult(&self, clip: f32) -> f32 {
        self.inv_scale * clip
    }
}

/// Loss scaling with PyTorch `torch.amp.GradScaler` semantics, plus static scaling,
/// hysteresis and scale bounds (see [`ScalerConfig`]).
///
/// Single-optimizer loop (the scale is applied to the loss before backward):
/// ```
/// use mp_kernels::prelude::*;
/// use mp_kernels::{CpuBackend, DType};
/// use mp_optim::{AdamW, AdamWConfig};
/// use mp_scaler::GradScaler;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend = CpuBackend;
/// let mut params = backend.upload_f32(&[1.0, -2.0], DType::F32)?; // FP32 master
/// let mut model = backend.upload_f32(&[1.0, -2.0], DType::F16)?; // what forward reads
/// let mut opt = AdamW::new(&backend, 2, AdamWConfig::default())?;
/// let mut scaler = GradScaler::default();
///
/// let seed = scaler.scale(1.0); // d(loss * S) / d(loss): seeds the backward pass
/// let grads = backend.upload_f32(&[0.5 * seed, -0.25 * seed], DType::F16)?; // "backward"
/// let check = scaler.check(&backend, grads.view())?;
/// if scaler.should_step() {
///     let clip = check.clip_factor(1.0);
///     opt.step(&backend, params.view_mut(), grads.view(), Some(model.view_mut()), check.grad_mult(clip))?;
/// }
/// scaler.update(None)?;
/// assert_eq!(opt.step_count(), 1);
/// # Ok(())
/// # }
/// ```
/// PyTorch-shaped, per optimizer: [`GradScaler::unscale_`], [`GradScaler::step`],
/// [`GradScaler::update`].
#[derive(Clone, Debug)]
pub struct GradScaler {
    config: ScalerConfig,
    scale: f32,
    growth_tracker: u32,
    hysteresis_left: u32,
    per_optimizer: BTreeMap<OptimizerId, PerOptimizer>,
}

impl Default for GradScaler {
    fn default() -> Self {
        Self::new(ScalerConfig::default()).expect("the default config is valid")
    }
}

impl GradScaler {
    /// A scaler with `config` (checked with [`ScalerConfig::validate`]).
    pub fn new(config: ScalerConfig) -> Result<Self> {
        config.validate()?;
        Ok(GradScaler {
            config,
            scale: config.init_scale,
            growth_tracker: 0,
            hysteresis_left: config.hysteresis,
            per_optimizer: BTreeMap::new(),
        })
    }

    /// The configuration (growth/backoff factors and interval as last loaded).
    pub fn config(&self) -> &ScalerConfig {
        &self.config
    }

    /// False for a pass-through scaler.
    pub fn is_enabled(&self) -> bool {
        self.config.enabled
    }

    /// `loss * scale` in f32 (the loss itself when disabled). Backpropagate from the result,
    /// or seed the backward pass with `scale(1.0)`.
    pub fn scale(&self, loss: f32) -> f32 {
        if self.config.enabled {
            loss * self.scale
        } else {
            loss
        }
    }

    /// The current scale (1.0 when disabled).
    pub fn get_scale(&self) -> f32 {
        if self.config.enabled { self.scale } else { 1.0 }
    }

    /// `1 / scale` rounded as PyTorch does (via f64); 1.0 when disabled.
    pub fn inv_scale(&self) -> f32 {
        if self.config.enabled {
            (1.0 / f64::from(self.scale)) as f32
        } else {
            1.0
        }
    }

    /// Consecutive finite steps since the last growth or overflow (PyTorch's
    /// `_growth_tracker`).
    pub fn growth_tracker(&self) -> u32 {
        self.growth_tracker
    }

    /// Overflows still tolerated before the next backoff (always 1 without hysteresis).
    pub fn hysteresis_left(&self) -> u32 {
        self.hysteresis_left
    }

    /// Where optimizer `opt` is in the current iteration.
    pub fn stage(&self, opt: OptimizerId) -> OptStage {
        self.per_optimizer
            .get(&opt)
            .map(|s| s.stage)
            .unwrap_or_default()
    }

    /// Runs the fused check over `grads` with `grad_mult` and returns it as a [`GradCheck`].
    fn run_check<B: Backend>(
        backend: &B,
        grads: View<'_, B::Buffer>,
        inv_scale: f32,
    ) -> Result<GradCheck> {
        let stats = backend.grad_stats(grads, inv_scale)?;
        Ok(GradCheck {
            // A scale that underflowed to 0 has an infinite inverse: the unscaled gradients
            // are not finite (PyTorch's unscale gives inf or NaN there and skips the step).
            found_inf: stats.non_finite || !inv_scale.is_finite(),
            grad_norm: stats.sum_sq.sqrt(),
            inv_scale,
        })
    }

    /// PyTorch's `unscale_(optimizer)`: checks the flat gradient buffer of optimizer `opt` for
    /// non-finite values and computes the norm of the unscaled gradients, in one read pass.
    /// The gradients are not modified: pass [`GradCheck::grad_mult`] to the optimizer.
    ///
    /// Errors as PyTorch: [`ScalerError::UnscaleTwice`] when already called for `opt` since the
    /// last [`update`](Self::update), [`ScalerError::UnscaleAfterStep`] after
    /// [`step`](Self::step). A disabled scaler only computes the norm (factor 1) and records
    /// nothing.
    pub fn unscale_<B: Backend>(
        &mut self,
        opt: OptimizerId,
        backend: &B,
        grads: View<'_, B::Buffer>,
    ) -> Result<GradCheck> {
        if !self.config.enabled {
            return Self::run_check(backend, grads, 1.0);
        }
        match self.stage(opt) {
            OptStage::Unscaled => return Err(ScalerError::UnscaleTwice { optimizer: opt.0 }),
            OptStage::Stepped => return Err(ScalerError::UnscaleAfterStep { optimizer: opt.0 }),
            OptStage::Ready => {}
        }
        let check = Self::run_check(backend, grads, self.inv_scale())?;
        self.per_optimizer.insert(
            opt,
            PerOptimizer {
                stage: OptStage::Unscaled,
                found_inf: Some(check.found_inf),
            },
        );
        Ok(check)
    }

    /// Records a check made elsewhere (another framework's own non-finite check of optimizer
    /// `opt`'s gradients, unscaled with [`inv_scale`](Self::inv_scale)) as
    /// [`unscale_`](Self::unscale_) would: [`should_step`](Self::should_step),
    /// [`step`](Self::step) and [`update`](Self::update) then follow it. A scale that
    /// underflowed to 0 records `true` whatever `found_inf` says. Same errors as `unscale_`;
    /// does nothing when disabled.
    pub fn record_check(&mut self, opt: OptimizerId, found_inf: bool) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        match self.stage(opt) {
            OptStage::Unscaled => return Err(ScalerError::UnscaleTwice { optimizer: opt.0 }),
            OptStage::Stepped => return Err(ScalerError::UnscaleAfterStep { optimizer: opt.0 }),
            OptStage::Ready => {}
        }
        self.per_optimizer.insert(
            opt,
            PerOptimizer {
                stage: OptStage::Unscaled,
                found_inf: Some(found_inf || !self.inv_scale().is_finite()),
            },
        );
        Ok(())
    }

    /// PyTorch's `step(optimizer)`: unscales (checks) `grads` first unless
    /// [`unscale_`](Self::unscale_) already did for `opt`, then calls `optimizer_step` with the
    /// gradient factor `1 / scale` unless a non-finite gradient was found. Returns what the
    /// optimizer returned, or `None` for a skipped step. When the gradients were clipped after
    /// `unscale_`, multiply the factor by the clip coefficient inside `optimizer_step`.
    ///
    /// Errors: [`ScalerError::StepTwice`] when already called for `opt` since the last
    /// [`update`](Self::update). A disabled scaler always steps, with factor 1.
    pub fn step<B, R, E>(
        &mut self,
        opt: OptimizerId,
        backend: &B,
        grads: View<'_, B::Buffer>,
        optimizer_step: impl FnOnce(f32) -> Result<R, E>,
    ) -> Result<Option<R>, E>
    where
        B: Backend,
        E: From<ScalerError>,
    {
        if !self.config.enabled {
            return optimizer_step(1.0).map(Some);
        }
        match self.stage(opt) {
            OptStage::Stepped => return Err(ScalerError::StepTwice { optimizer: opt.0 }.into()),
            OptStage::Ready => {
                self.unscale_(opt, backend, grads)?;
            }
            OptStage::Unscaled => {}
        }
        let state = self.per_optimizer.entry(opt).or_default();
        state.stage = OptStage::Stepped;
        if state.found_inf == Some(false) {
            optimizer_step(self.inv_scale()).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The single-optimizer check: [`unscale_`](Self::unscale_) for
    /// [`OptimizerId::DEFAULT`].
    pub fn check<B: Backend>(
        &mut self,
        backend: &B,
        grads: View<'_, B::Buffer>,
    ) -> Result<GradCheck> {
        self.unscale_(OptimizerId::DEFAULT, backend, grads)
    }

    /// [`check`](Self::check) from gradient statistics computed elsewhere: `stats` of the raw
    /// gradients with `grad_mult =` [`inv_scale`](Self::inv_scale) (for example partial sums
    /// combined across processes). Records the result as `check` does and returns the same
    /// [`GradCheck`].
    pub fn check_stats(&mut self, stats: GradStats) -> Result<GradCheck> {
        let inv_scale = self.inv_scale();
        self.record_check(OptimizerId::DEFAULT, stats.non_finite)?;
        Ok(GradCheck {
            found_inf: stats.non_finite || !inv_scale.is_finite(),
            grad_norm: stats.sum_sq.sqrt(),
            inv_scale,
        })
    }

    /// True unless a check since the last update found a non-finite gradient (always true
    /// when disabled, as PyTorch's disabled `step` always steps).
    pub fn should_step(&self) -> bool {
        !self.found_inf()
    }

    /// True when a check since the last update found a non-finite gradient.
    pub fn found_inf(&self) -> bool {
        self.per_optimizer
            .values()
            .any(|s| s.found_inf == Some(true))
    }

    /// PyTorch's `update(new_scale=None)`: ends the iteration. With `Some(s)` the scale becomes
    /// `s` (the tracker is untouched); with `None` the scale follows the rule over the checks
    /// recorded since the last update (any optimizer overflowed -> back off, reset the
    /// tracker; else count, and grow after `growth_interval` finite steps if the grown scale
    /// is a finite f32). Clears every optimizer's stage.
    ///
    /// Errors: [`ScalerError::NoInfChecks`] for `None` with no check recorded;
    /// [`ScalerError::InvalidScale`] for a non-positive or non-finite `s`. Does nothing when
    /// disabled.
    pub fn update(&mut self, new_scale: Option<f32>) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        match new_scale {
            Some(s) => {
                if !(s.is_finite() && s > 0.0) {
                    return Err(ScalerError::InvalidScale(f64::from(s)));
                }
                self.scale = s;
            }
            None => {
                let mut recorded = self.per_optimizer.values().filter_map(|s| s.found_inf);
                let first = recorded.next().ok_or(ScalerError::NoInfChecks)?;
                let found_inf = first || recorded.any(|f| f);
                self.apply_rule(found_inf);
            }
        }
        self.per_optimizer.clear();
        Ok(())
    }

    /// `torch._amp_update_scale_` with the hysteresis and bounds options. Growth happens when
    /// the incremented tracker *equals* the interval, as in PyTorch (a loaded tracker beyond
    /// the interval keeps counting, as it does there).
    fn apply_rule(&mut self, found_inf: bool) {
        let c = &self.config;
        if !c.dynamic {
            return;
        }
        if found_inf {
            self.growth_tracker = 0;
            if self.hysteresis_left <= 1 {
                let mut s = (f64::from(self.scale) * c.backoff_factor) as f32;
                if let Some(lo) = c.min_scale {
                    s = s.max(lo);
                }
                self.scale = s;
            } else {
                self.hysteresis_left -= 1;
            }
        } else {
            if c.consecutive_hysteresis {
                self.hysteresis_left = c.hysteresis;
            }
            let successful = self.growth_tracker + 1;
            if successful == c.growth_interval {
                let grown = (f64::from(self.scale) * c.growth_factor) as f32;
                if grown.is_finite() {
                    self.scale = match c.max_scale {
                        Some(hi) => grown.min(hi.max(self.scale)),
                        None => grown,
                    };
                }
                if !c.consecutive_hysteresis {
                    self.hysteresis_left = c.hysteresis;
                }
                self.growth_tracker = 0;
            } else {
                self.growth_tracker = successful;
            }
        }
    }

    /// PyTorch's `state_dict()`: `None` for a disabled scaler (PyTorch returns `{}`).
    pub fn state_dict(&self) -> Option<ScalerState> {
        self.config.enabled.then(|| ScalerState {
            scale: f64::from(self.scale),
            growth_factor: self.config.growth_factor,
            backoff_factor: self.config.backoff_factor,
            growth_interval: self.config.growth_interval,
            growth_tracker: self.growth_tracker,
            hysteresis_left: (self.config.hysteresis > 1).then_some(self.hysteresis_left),
        })
    }

    /// The state dict as JSON (`{}` for a disabled scaler).
    pub fn state_dict_json(&self) -> String {
        self.state_dict()
            .map_or_else(|| "{}".to_string(), |s| s.to_json())
    }

    /// PyTorch's `load_state_dict`: takes scale, factors, interval and tracker from `state`
    /// (validated like a config). Does nothing when disabled.
    pub fn load_state_dict(&mut self, state: &ScalerState) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        let scale = state.scale as f32;
        if !(scale.is_finite() && scale >= 0.0) {
            return Err(ScalerError::BadState(format!(
                "scale = {}: must be finite and >= 0",
                state.scale
            )));
        }
        let config = ScalerConfig {
            // a scale that underflowed to 0 is a state to restore, not a config to refuse
            init_scale: if scale > 0.0 {
                scale
            } else {
                self.config.init_scale
            },
            growth_factor: state.growth_factor,
            backoff_factor: state.backoff_factor,
            growth_interval: state.growth_interval,
            ..self.config
        };
        config
            .validate()
            .map_err(|e| ScalerError::BadState(e.to_string()))?;
        self.config = config;
        self.scale = scale;
        self.growth_tracker = state.growth_tracker;
        self.hysteresis_left = state
            .hysteresis_left
            .unwrap_or(config.hysteresis)
            .clamp(1, config.hysteresis);
        Ok(())
    }

    /// [`load_state_dict`](Self::load_state_dict) from JSON; `{}` is
    /// [`ScalerError::EmptyState`] for an enabled scaler.
    pub fn load_state_dict_json(&mut self, json: &str) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
        }
        self.load_state_dict(&ScalerState::from_json(json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_made_elsewhere_drives_the_scale() {
        let mut sc = GradScaler::new(ScalerConfig {
            growth_interval: 2,
            ..ScalerConfig::default()
        })
        .unwrap();
        let s0 = sc.get_scale();
        sc.record_check(OptimizerId::DEFAULT, true).unwrap();
        assert!(!sc.should_step());
        assert!(matches!(
            sc.record_check(OptimizerId::DEFAULT, false),
            Err(ScalerError::UnscaleTwice { .. })
        ));
        sc.update(None).unwrap();
        assert_eq!(sc.get_scale(), s0 / 2.0, "backed off");
        for _ in 0..2 {
            sc.record_check(OptimizerId::DEFAULT, false).unwrap();
            assert!(sc.should_step());
            sc.update(None).unwrap();
        }
        assert_eq!(sc.get_scale(), s0, "grew after the interval");
    }

    #[test]
    fn a_scale_that_underflowed_to_zero_skips_and_round_trips() {
        let be = mp_kernels::CpuBackend::new();
        let cfg = ScalerConfig::default().with_init_scale(f32::from_bits(1)); // 1.4e-45
        let mut sc = GradScaler::new(cfg).unwrap();
        let grads =
            mp_kernels::MemoryOps::upload_f32(&be, &[0.0, 1.0], mp_dtype::DType::F32).unwrap();
        let inf =
            mp_kernels::MemoryOps::upload_f32(&be, &[f32::INFINITY], mp_dtype::DType::F32).unwrap();
        use mp_kernels::BufferExt;
        sc.check(&be, inf.view()).unwrap();
        sc.update(None).unwrap();
        assert_eq!(
            sc.get_scale(),
            0.0,
            "backed off below the smallest subnormal"
        );
        let check = sc.check(&be, grads.view()).unwrap();
        assert!(
            check.found_inf && !sc.should_step(),
            "an infinite 1/scale must skip"
        );
        sc.update(None).unwrap();
        let state = sc.state_dict().unwrap();
        let mut back = GradScaler::new(ScalerConfig::default()).unwrap();
        back.load_state_dict(&state).unwrap();
        assert_eq!(back.get_scale(), 0.0);
        assert_eq!(back.state_dict(), Some(state));
    }

    fn scaler(config: ScalerConfig) -> GradScaler {
        GradScaler::new(config).unwrap()
    }

    /// Records a check result for the default optimizer without a backend.
    fn record(s: &mut GradScaler, found_inf: bool) {
        s.per_optimizer.insert(
            OptimizerId::DEFAULT,
            PerOptimizer {
                stage: OptStage::Unscaled,
                found_inf: Some(found_inf),
            },
        );
    }

    #[test]
    fn grows_after_interval_and_backs_off() {
        let mut s = scaler(ScalerConfig::default().with_growth_interval(3));
        for (inf, scale, tracker) in [
            (false, 65536.0, 1),
            (false, 65536.0, 2),
            (false, 131072.0, 0),
            (false, 131072.0, 1),
            (true, 65536.0, 0),
            (true, 32768.0, 0),
        ] {
            record(&mut s, inf);
            s.update(None).unwrap();
            assert_eq!((s.get_scale(), s.growth_tracker()), (scale, tracker));
        }
    }

    #[test]
    fn growth_stops_at_f32_max_and_tracker_resets() {
        let mut s = scaler(
            ScalerConfig::default()
                .with_init_scale(2f32.powi(127))
                .with_growth_interval(1),
        );
        record(&mut s, false);
        s.update(None).unwrap();
        assert_eq!(s.get_scale(), 2f32.powi(127));
        assert_eq!(s.growth_tracker(), 0);
    }

    #[test]
    fn hysteresis_delays_backoff_and_refills_on_growth() {
        let mut s = scaler(
            ScalerConfig::default()
                .with_growth_interval(2)
                .with_hysteresis(2, false),
        );
        let steps = [
            (true, 65536.0, 1),  // tolerated
            (true, 32768.0, 1),  // backs off, budget stays 1
            (false, 32768.0, 1), // counting
            (false, 65536.0, 2), // grows, budget refilled
            (true, 65536.0, 1),
        ];
        for (inf, scale, left) in steps {
            record(&mut s, inf);
            s.update(None).unwrap();
            assert_eq!((s.get_scale(), s.hysteresis_left()), (scale, left));
        }
        let mut c = scaler(ScalerConfig::default().with_hysteresis(2, true));
        for (inf, left) in [(true, 1), (false, 2), (true, 1)] {
            record(&mut c, inf);
            c.update(None).unwrap();
            assert_eq!(c.hysteresis_left(), left);
            assert_eq!(c.get_scale(), 65536.0);
        }
    }

    #[test]
    fn min_and_max_bound_the_scale() {
        let mut s = scaler(
            ScalerConfig::default()
                .with_init_scale(4.0)
                .with_growth_interval(1)
                .with_min_scale(2.0)
                .with_max_scale(8.0),
        );
        for (inf, scale) in [
            (true, 2.0),
            (true, 2.0),
            (false, 4.0),
            (false, 8.0),
            (false, 8.0),
        ] {
            record(&mut s, inf);
            s.update(None).unwrap();
            assert_eq!(s.get_scale(), scale);
        }
    }

    #[test]
    fn static_scale_never_moves() {
        let mut s = scaler(ScalerConfig::static_scale(128.0).with_growth_interval(1));
        for inf in [true, false, false, true] {
            record(&mut s, inf);
            assert_eq!(s.should_step(), !inf);
            s.update(None).unwrap();
            assert_eq!(s.get_scale(), 128.0);
        }
    }

    #[test]
    fn update_errors_and_explicit_scale() {
        let mut s = GradScaler::default();
        assert!(matches!(s.update(None), Err(ScalerError::NoInfChecks)));
        assert!(matches!(
            s.update(Some(f32::NAN)),
            Err(ScalerError::InvalidScale(_))
        ));
        s.update(Some(8.0)).unwrap();
        assert_eq!(s.get_scale(), 8.0);
        assert_eq!(s.inv_scale(), 0.125);
        assert_eq!(s.scale(3.0), 24.0);
    }

    #[test]
    fn disabled_is_a_pass_through() {
        let mut s = scaler(ScalerConfig::disabled());
        assert_eq!(s.scale(3.5), 3.5);
        assert_eq!(s.get_scale(), 1.0);
        assert_eq!(s.inv_scale(), 1.0);
        s.update(None).unwrap();
        assert!(s.should_step());
        assert_eq!(s.state_dict(), None);
        assert_eq!(s.state_dict_json(), "{}");
        s.load_state_dict_json("{}").unwrap();
    }

    #[test]
    fn state_dict_round_trip_and_load_validation() {
        let mut s = scaler(ScalerConfig::default().with_growth_interval(3));
        record(&mut s, false);
        s.update(None).unwrap();
        let json = s.state_dict_json();
        let mut t = GradScaler::default();
        t.load_state_dict_json(&json).unwrap();
        assert_eq!(t.state_dict(), s.state_dict());
        assert_eq!(t.config().growth_interval, 3);
        assert!(matches!(
            t.load_state_dict_json("{}"),
            Err(ScalerError::EmptyState)
        ));
        let bad = r#"{"scale": 1.0, "growth_factor": 0.5, "backoff_factor": 0.5, "growth_interval": 3, "_growth_tracker": 0}"#;
        assert!(matches!(
            t.load_state_dict_json(bad),
            Err(ScalerError::BadState(_))
        ));
        assert_eq!(
            t.state_dict(),
            s.state_dict(),
            "a failed load changes nothing"
        );
    }

    #[test]
    fn clip_factor_is_pytorchs() {
        let c = GradCheck {
            found_inf: false,
            grad_norm: 4.0,
            inv_scale: 0.5,
        };
        assert_eq!(c.clip_factor(0.0), 1.0);
        assert_eq!(c.clip_factor(10.0), 1.0);
        assert_eq!(c.clip_factor(2.0), (2.0 / (4.0 + 1e-6)) as f32);
        assert_eq!(c.grad_mult(0.5), 0.25);
    }
}
