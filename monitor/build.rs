//! Builds the kernel programs (monitor-ebpf) for the BPF target and leaves the
//! object in OUT_DIR, where `loader.rs` embeds it.
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo::rerun-if-env-changed=MONITOR_SKIP_EBPF_BUILD");
    if std::env::var_os("MONITOR_SKIP_EBPF_BUILD").is_some() {
        // Developer shortcut for working on pure userspace modules while the
        // kernel side is being edited: the embedded object is empty and the
        // loader refuses to start with a message saying so.
        let out = std::env::var("OUT_DIR")?;
        std::fs::write(format!("{out}/monitor-ebpf"), b"")?;
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "monitor-ebpf")
        .ok_or_else(|| anyhow!("monitor-ebpf package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::default())
}
