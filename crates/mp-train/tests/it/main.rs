//! Integration tests of mp-train.
mod gpt;

mod bad_input;
mod checkpoint;
mod common;
mod precisions;
mod resume;
