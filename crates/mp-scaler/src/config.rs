//! Configuration of a [`GradScaler`](crate::GradScaler): PyTorch's four knobs plus the
//! options other frameworks added (static scale, hysteresis, min and max scale).

use crate::{Result, ScalerError};
use serde::{Deserialize, Serialize};

/// How a [`GradScaler`](crate::GradScaler) is configured.
///
/// [`ScalerConfig::default`] is `torch.amp.GradScaler()`: dynamic, `init_scale` 2^16,
/// `growth_factor` 2, `backoff_factor` 0.5, `growth_interval` 2000, no hysteresis, no bounds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalerConfig {
    /// False makes every method a pass-through, like PyTorch's `enabled=False`: `scale` returns
    /// its input, `get_scale` is 1, `step` always steps, `update` does nothing.
    pub enabled: bool,
    /// False keeps the scale at `init_scale` forever (a static loss scale). Steps with
    /// non-finite gradients are still skipped.
    pub dynamic: bool,
    /// The scale before the first update (stored as f32, like PyTorch's scale tensor).
    pub init_scale: f32,
    /// Factor applied after `growth_interval` consecutive finite steps (> 1).
    pub growth_factor: f64,
    /// Factor applied after a step with non-finite gradients (in (0, 1)).
    pub backoff_factor: f64,
    /// Number of consecutive finite steps before the scale grows (>= 1).
    pub growth_interval: u32,
    /// DeepSpeed's `hysteresis` (`delayed_shift`): the number of overflowing steps tolerated
    /// before the scale backs off; 1 (the default) backs off on every overflow, as PyTorch
    /// does. The steps are skipped either way.
    pub hysteresis: u32,
    /// DeepSpeed's `consecutive_hysteresis`: refill the hysteresis budget after every finite
    /// step (true) or only when the scale grows (false, DeepSpeed's default).
    pub consecutive_hysteresis: bool,
    /// Lower bound of the scale after a backoff (DeepSpeed's `min_loss_scale`); `None` lets it
    /// fall without bound, as PyTorch does.
    pub min_scale: Option<f32>,
    /// Upper bound of the scale after a growth (apex used 2^24); `None` grows it as long as the
    /// result is a finite f32, as PyTorch does.
    pub max_scale: Option<f32>,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            enabled: true,
            dynamic: true,
            init_scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            hysteresis: 1,
            consecutive_hysteresis: false,
            min_scale: None,
            max_scale: None,
        }
    }
}

impl ScalerConfig {
    /// A disabled scaler (PyTorch's `enabled=False`).
    pub fn disabled() -> Self {
        ScalerConfig {
            enabled: false,
            ..Self::default()
        }
    }

    /// A static loss scale: the scale never changes, steps with non-finite gradients are
    /// skipped. `static_scale(1.0)` is the right choice for BF16 training that still wants
    /// overflow protection.
    pub fn static_scale(scale: f32) -> Self {
        ScalerConfig {
            dynamic: false,
            init_scale: scale,
            ..Self::default()
        }
    }

    /// The same config with another initial scale.
    pub fn with_init_scale(self, init_scale: f32) -> Self {
        ScalerConfig { init_scale, ..self }
    }

    /// The same config with another growth interval.
    pub fn with_growth_interval(self, growth_interval: u32) -> Self {
        ScalerConfig {
            growth_interval,
            ..self
        }
    }

    /// The same config with other growth and backoff factors.
    pub fn with_factors(self, growth_factor: f64, backoff_factor: f64) -> Self {
        ScalerConfig {
            growth_factor,
            backoff_factor,
            ..self
        }
    }

    /// The same config tolerating `hysteresis` overflows before backing off.
    pub fn with_hysteresis(self, hysteresis: u32, consecutive: bool) -> Self {
        ScalerConfig {
            hysteresis,
            consecutive_hysteresis: consecutive,
            ..self
        }
    }

    /// The same config with a lower bound on the scale.
    pub fn with_min_scale(self, min_scale: f32) -> Self {
        ScalerConfig {
            min_scale: Some(min_scale),
            ..self
        }
    }

    /// The same config with an upper bound on the scale.
    pub fn with_max_scale(self, max_scale: f32) -> Self {
        ScalerConfig {
            max_scale: Some(max_scale),
            ..self
        }
    }

    /// Checks every field (PyTorch asserts `growth_factor > 1` and `backoff_factor < 1`; the
    /// other checks keep the scale a positive finite number).
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &'static str, value: impl ToString, msg: &'static str) -> ScalerError {
            ScalerError::InvalidConfig {
                field,
                value: value.to_string(),
                msg,
            }
        }
        if !self.enabled {
            return Ok(());
        }
        if !(self.init_scale.is_finite() && self.init_scale > 0.0) {
            return Err(bad(
                "init_scale",
                self.init_scale,
                "must be positive and finite",
            ));
        }
        if !(self.growth_factor > 1.0 && self.growth_factor.is_finite()) {
            return Err(bad(
                "growth_factor",
                self.growth_factor,
                "must be > 1.0 and finite",
            ));
        }
        if !(self.backoff_factor > 0.0 && self.backoff_factor < 1.0) {
            return Err(bad(
                "backoff_factor",
                self.backoff_factor,
                "must be in (0, 1)",
            ));
        }
        if self.growth_interval == 0 {
            return Err(bad("growth_interval", 0, "must be >= 1"));
        }
        if self.hysteresis == 0 {
            return Err(bad(
                "hysteresis",
                0,
                "must be >= 1 (1 backs off on every overflow)",
            ));
        }
        if let Some(lo) = self.min_scale
            && !(lo.is_finite() && lo > 0.0)
        {
            return Err(bad("min_scale", lo, "must be positive and finite"));
        }
        if let Some(hi) = self.max_scale
            && !(hi.is_finite() && hi > 0.0)
        {
            return Err(bad("max_scale", hi, "must be positive and finite"));
        }
        if let (Some(lo), Some(hi)) = (self.min_scale, self.max_scale)
            && lo > hi
        {
            return Err(bad("min_scale", lo, "must not exceed max_scale"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pytorchs() {
        let c = ScalerConfig::default();
        assert_eq!(c.init_scale, 65536.0);
        assert_eq!(c.growth_factor, 2.0);
        assert_eq!(c.backoff_factor, 0.5);
        assert_eq!(c.growth_interval, 2000);
        assert_eq!(c.hysteresis, 1);
        assert!(c.enabled && c.dynamic);
        c.validate().unwrap();
    }

    #[test]
    fn rejects_bad_values() {
        let d = ScalerConfig::default();
        for c in [
            d.with_factors(1.0, 0.5),
            d.with_factors(2.0, 1.0),
            d.with_factors(2.0, 0.0),
            d.with_init_scale(f32::INFINITY),
            d.with_init_scale(0.0),
            d.with_growth_interval(0),
            d.with_hysteresis(0, false),
            d.with_min_scale(4.0).with_max_scale(2.0),
        ] {
            let e = c.validate().unwrap_err();
            assert!(matches!(e, ScalerError::InvalidConfig { .. }), "{e}");
        }
        // A disabled scaler ignores the other fields, as PyTorch does.
        ScalerConfig {
            growth_factor: 0.5,
            ..ScalerConfig::disabled()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn parses_from_toml_like_json_with_defaults() {
        let c: ScalerConfig =
            serde_json::from_str(r#"{"init_scale": 1024.0, "hysteresis": 2}"#).unwrap();
        assert_eq!(c.init_scale, 1024.0);
        assert_eq!(c.hysteresis, 2);
        assert_eq!(c.growth_interval, 2000);
        assert!(serde_json::from_str::<ScalerConfig>(r#"{"scale": 1.0}"#).is_err());
    }
}
