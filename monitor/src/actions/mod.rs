//! Which action an event belongs to and what that action declared: the
//! registry, the cgroup tree and declaration files.
//! Must not judge events or write output.
pub mod cgroup;
pub mod declarations;
pub mod registry;
