//! Bazel-specific attribution: sandbox trees and launcher command lines, the
//! execution log (labels and mnemonics) or the trace profile (labels, and
//! mnemonics where the Bazel writes them there).
//! Must not judge events or write output; generic attribution lives in `actions`.
pub mod execlog;
/// Repository fetches from Bazel's workspace rules log, joined with connects.
pub mod fetches;
pub mod isolation;
pub mod labels;
pub mod log_flags;
pub mod report;
pub mod sandbox;
pub mod spawns;
pub mod trace_profile;
pub mod unsandboxed;
/// The Bazel release `monitor exec` runs (`CMD --version`).
pub mod version;
pub mod workers;
