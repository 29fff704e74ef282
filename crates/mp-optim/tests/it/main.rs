//! Integration tests of mp-optim on the CPU backend: PyTorch golden trajectories, parameter
//! groups, SGD, the pure-BF16 stochastic-rounding mode, state save/load.

mod golden_adamw;
mod optim;
mod pure_bf16;
mod reference;
