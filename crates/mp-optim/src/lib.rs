//! # mp-optim: optimizers with FP32 master weights
//!
//! Will hold: AdamW with `torch.optim.AdamW`'s update order and SGD with momentum, over flat
//! FP32 master arenas with FP32 moments, taking gradients of any dtype multiplied by
//! `clip / scale` inside the pass and writing the BF16/F16 model copy in the same pass
//! (round-to-nearest-even or stochastic); parameter groups; a pure-BF16 stochastic-rounding
//! mode; state save/load. Built on the `mp-kernels` backend trait.
