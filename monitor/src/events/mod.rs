//! Ring records turned into typed events: decoding, path normalisation and
//! the process facts (exe) that events are enriched with.
//! Pure data: must not know about actions, policy or output.
pub mod decode;
pub mod paths;
pub mod processes;
