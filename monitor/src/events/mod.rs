//! Ring records turned into typed events: decoding, path normalisation and
//! the process facts (exe) that events are enriched with; a hook connect
//! joined with its syscall result.
//! Pure data: must not know about actions, policy or output.
pub mod decode;
pub mod dns;
pub mod netjoin;
pub mod paths;
pub mod processes;
