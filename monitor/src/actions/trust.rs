//! Who may declare what an action may do: declaration files count only
//! from a directory owned by root (or by the monitor's own user) that no
//! one else can write to, and only when the file itself has such an owner
//! and no one else can write to it. Anything else is rejected, never read.
use std::{
    fs,
    io::Read as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Group- and world-writable bits.
const WRITABLE_BY_OTHERS: u32 = 0o022;

fn trusted_owner(uid: u32) -> bool {
    // SAFETY: plain geteuid(2).
    uid == 0 || uid == unsafe { libc::geteuid() }
}

fn check(meta: &fs::Metadata, what: &str) -> Result<(), String> {
    if !trusted_owner(meta.uid()) {
        return Err(format!(
            "{what} is owned by uid {}, not by root or the monitor's user",
            meta.uid()
        ));
    }
    if meta.mode() & WRITABLE_BY_OTHERS != 0 {
        return Err(format!(
            "{what} is writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Whether the declarations directory may be trusted.
pub fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(dir).map_err(|e| e.to_string())?;
    check(&meta, "the directory")
}

/// Reads a declaration file if it may be trusted: opened without following
/// a symlink, checked on the open file (no window to swap it).
pub fn read_file(path: &Path) -> Result<String, String> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "it is a symlink".to_string(),
            _ => e.to_string(),
        })?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    check(&meta, "the file")?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text)
}
