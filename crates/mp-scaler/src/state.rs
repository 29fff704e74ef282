//! The serializable state of a scaler, with PyTorch's `GradScaler.state_dict()` field names.

use crate::{Result, ScalerError};
use serde::{Deserialize, Serialize};

/// `GradScaler.state_dict()` of an enabled scaler: PyTorch's five fields, plus the hysteresis
/// budget when hysteresis is configured (absent from PyTorch's states, and optional on load).
///
/// Serialized as JSON this is exactly PyTorch's dict (`{"scale": 65536.0, "growth_factor": 2.0,
/// "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 0}`), so a state dumped
/// from PyTorch loads here and the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerState {
    /// The current scale.
    pub scale: f64,
    /// The growth factor.
    pub growth_factor: f64,
    /// The backoff factor.
    pub backoff_factor: f64,
    /// The growth interval.
    pub growth_interval: u32,
    /// Consecutive finite steps since the last growth or overflow.
    #[serde(rename = "_growth_tracker")]
    pub growth_tracker: u32,
    /// Overflows still tolerated before the next backoff (only with hysteresis).
    #[serde(
        rename = "_hysteresis_left",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub hysteresis_left: Option<u32>,
}

impl ScalerState {
    /// The state as a JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a struct of numbers always serializes")
    }

    /// Parses a JSON object; `{}` (what a disabled scaler saves) is [`ScalerError::EmptyState`].
    pub fn from_json(json: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ScalerError::BadState(e.to_string()))?;
        if value.as_object().is_some_and(|o| o.is_empty()) {
            return Err(ScalerError::EmptyState);
        }
        serde_json::from_value(value).map_err(|e| ScalerError::BadState(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_dict_round_trips() {
        let py = r#"{"scale": 16384.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3, "_growth_tracker": 2}"#;
        let s = ScalerState::from_json(py).unwrap();
        assert_eq!(s.scale, 16384.0);
        assert_eq!(s.growth_tracker, 2);
        assert_eq!(s.hysteresis_left, None);
        let back: serde_json::Value = serde_json::from_str(&s.to_json()).unwrap();
        let orig: serde_json::Value = serde_json::from_str(py).unwrap();
        assert_eq!(back, orig);
    }

    #[test]
    fn empty_and_broken_states_are_errors() {
        assert!(matches!(
            ScalerState::from_json("{}"),
            Err(ScalerError::EmptyState)
        ));
        let missing =
            r#"{"scale": 1.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3}"#;
        let e = ScalerState::from_json(missing).unwrap_err();
        assert!(e.to_string().contains("_growth_tracker"), "{e}");
        assert!(matches!(
            ScalerState::from_json("[1"),
            Err(ScalerError::BadState(_))
        ));
    }
}
