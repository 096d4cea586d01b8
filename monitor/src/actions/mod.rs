//! Which action an event belongs to and what that action declared: the
//! registry (pure state), the cgroup tree, declaration files and the
//! watcher that reads them off the event path, and the listeners actions
//! bound before the monitor attached.
//! Must not judge events or write output.
pub mod cgroup;
pub mod declarations;
pub mod identities;
pub mod links;
pub mod listeners;
pub mod registry;
pub mod shared_paths;
pub mod trust;
pub mod watch;
