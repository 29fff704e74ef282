//! Integration tests of mp-train.
mod gpt;
