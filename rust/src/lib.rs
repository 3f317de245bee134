//! gridpilot's hot path. `core` is pure Rust (no pyo3) and is tested with `cargo test --no-default-features`;
//! `py` holds the thin pyo3 bindings and is compiled only with the `python` feature.

pub mod core;

#[cfg(feature = "python")]
mod py;
