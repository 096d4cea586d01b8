//! Remote-execution (REAPI) worker actions: what a worker runner's record
//! says about an action (digest, outputs, Bazel's RequestMetadata), what
//! its input root declares (the cache-poisoning verdict when it ends is
//! policy's: `policy/cache_risk.rs`).
//! Sits beside `actions` and `bazel` as an attribution source.

pub mod records;
pub mod runners;
