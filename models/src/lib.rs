//! models — STUB: candle implementations of the LLaMA-style baseline and LIMe (to be written).
pub mod config;
pub use config::{Config, Variant};
