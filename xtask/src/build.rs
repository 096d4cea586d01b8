//! `cargo xtask build [--release]`: builds the workspace's default members
//! (everything but the kernel crate, which `monitor`'s build script compiles
//! for the BPF target).

use anyhow::Result;

use crate::util::{cargo, exec};

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn run(Options { release }: Options) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    exec(&mut cmd)
}
