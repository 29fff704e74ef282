//! Integration tests of mp-train.
