//! Integration tests of mp-scaler on the CPU backend: PyTorch golden traces, the state
//! machine, fault injection, state round trips.

mod fault;
mod golden_scaler;
mod machine;
