//! The CLI's modes: `monitor run` (node agent), `monitor exec` (CI sidecar)
//! and the start-up they share. Assembles the stages; holds no stage logic.
pub mod exec;
pub mod outcome;
pub mod reload;
pub mod run;
pub mod start;
