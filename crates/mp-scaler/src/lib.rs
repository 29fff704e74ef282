//! # mp-scaler: loss scaling
//!
//! Will hold: dynamic loss scaling with `torch.amp.GradScaler` semantics (scale, unscale_,
//! step, update, state_dict with PyTorch's field names), static scaling, DeepSpeed-style
//! hysteresis, min and max scale, and the fused non-finite check + gradient norm pass.
