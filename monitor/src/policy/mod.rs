//! Verdicts: path and network matchers, and the judge that turns an event of
//! a known action into a violation (or nothing).
//! Must not read the ring, attribute events or write output.
pub mod access;
/// The cache-poisoning verdict on remote-execution actions that ended.
pub mod cache_risk;
/// `[bazel.downloader]`: Bazel's downloader rules, per repository fetch.
pub mod downloader;
/// Repository fetches judged: downloader rules, bypasses.
pub mod fetches;
pub mod isolation;
pub mod judge;
/// `files.allow`'s directories for the kernel's fold of failed reads.
pub mod kernel_allowed;
pub mod kernel_rules;
pub mod localnet;
pub mod matchers;
pub mod scoped;
