//! # mp-autograd: a tape and autocast
//!
//! Will hold: tensors recorded on a tape with backward and gradient accumulation into
//! parameter gradients, no-grad regions, and autocast: a scope that sets the low-precision
//! dtype and applies PyTorch's per-op precision policy (GEMMs low, reductions/norms/softmax/
//! losses FP32, promote ops to the widest input), kept as data in one place, with weight casts
//! cached within a scope. Built on the `mp-kernels` backend trait; never names a device type.
