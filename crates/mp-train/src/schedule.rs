//! The learning-rate schedule: linear warmup, then cosine, linear or constant.

use crate::config::{Schedule, TrainConfig};

/// The learning rate of optimizer step `step` (0-based).
///
/// Warmup is `lr * (step + 1) / warmup_steps` (llm.c; the first step is not wasted at 0);
/// after it the decay runs from the peak at `warmup_steps` to `min_lr_ratio * lr` at
/// `max_steps`.
pub fn learning_rate(cfg: &TrainConfig, step: u64) -> f64 {
    let peak = cfg.learning_rate;
    if step < cfg.warmup_steps {
        return peak * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let decay_steps = cfg.max_steps.saturating_sub(cfg.warmup_steps).max(1);
    let progress = ((step - cfg.warmup_steps) as f64 / decay_steps as f64).min(1.0);
    let min = peak * cfg.min_lr_ratio;
    let frac = match cfg.lr_schedule {
        Schedule::Constant => return peak,
        Schedule::Linear => 1.0 - progress,
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    min + (peak - min) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_to_the_floor() {
        let mut c = TrainConfig {
            learning_rate: 1.0,
            warmup_steps: 10,
            max_steps: 110,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert_eq!(learning_rate(&c, 0), 0.1);
        assert_eq!(learning_rate(&c, 9), 1.0);
        assert_eq!(learning_rate(&c, 10), 1.0);
        assert!((learning_rate(&c, 60) - 0.55).abs() < 1e-12);
        assert!((learning_rate(&c, 110) - 0.1).abs() < 1e-12);
        c.lr_schedule = Schedule::Linear;
        assert!((learning_rate(&c, 35) - (0.1 + 0.9 * 0.75)).abs() < 1e-12);
        c.lr_schedule = Schedule::Constant;
        assert_eq!(learning_rate(&c, 100), 1.0);
    }
}
