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
    // aya-build watches the eBPF package's own files only; the programs
    // also compile monitor-common (shared layouts and constants), and an
    // object left stale by a change there would disagree with userspace.
    let common = package_dir(&packages, "monitor-common")?;
    println!("cargo::rerun-if-changed={common}");
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

/// The directory of the workspace package `name`.
fn package_dir(packages: &[cargo_metadata::Package], name: &str) -> anyhow::Result<String> {
    let package = packages
        .iter()
        .find(|p| p.name.as_str() == name)
        .ok_or_else(|| anyhow!("{name} package not found"))?;
    let dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    Ok(dir.to_string())
}
