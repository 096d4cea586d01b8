//! Where `cargo xtask setup` installs test tools that are not Debian
//! packages, so that the tests find them without a search.

/// PyPI's kubernetes-validate (offline validation of manifests against the
/// Kubernetes JSON schemas it ships), pinned.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The project's own virtualenv holding it (kept across runs on a machine;
/// the version in the name makes a change of pin a fresh install).
pub fn kubernetes_validate_venv() -> std::path::PathBuf {
    std::path::PathBuf::from(format!(
        "/var/cache/build-monitor/kubernetes-validate-{KUBERNETES_VALIDATE_VERSION}"
    ))
}

/// The `kubernetes-validate` command in that virtualenv.
pub fn kubernetes_validate() -> std::path::PathBuf {
    kubernetes_validate_venv().join("bin/kubernetes-validate")
}
