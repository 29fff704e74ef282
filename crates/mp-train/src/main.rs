//! The `mp-train` command line.

fn main() {}
