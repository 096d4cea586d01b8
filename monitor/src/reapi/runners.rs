//! Runners that were already running when the agent started: their exec
//! happened before the kernel programs attached, so they are found in
//! `/proc` instead (the kernel matches the ones started later).
use std::{fs, path::Path};

/// Pids of processes started by one of `runners`: the executable itself, or
/// a `#!` script (the kernel runs it as `interpreter script args…`, so the
/// script's path is argv[1], and names the process after the script: an
/// editor with the script open is not a runner). A script behind
/// `#!/usr/bin/env` is renamed by the second exec and is not found here.
pub fn running_runners(runners: &[impl AsRef<Path>]) -> Vec<u32> {
    if runners.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let comm = fs::read(format!("/proc/{pid}/comm")).unwrap_or_default();
            is_runner(exe.as_deref(), &cmdline, comm.trim_ascii_end(), runners)
        })
        .collect()
}

fn is_runner(
    exe: Option<&Path>,
    cmdline: &[u8],
    comm: &[u8],
    runners: &[impl AsRef<Path>],
) -> bool {
    let script = cmdline.split(|&b| b == 0).nth(1);
    runners.iter().any(|r| {
        let r = r.as_ref();
        let name = r.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b"");
        // The kernel's comm is the name cut to 15 bytes.
        let named_so = !comm.is_empty() && name.starts_with(comm);
        exe == Some(r) || (script == Some(r.as_os_str().as_encoded_bytes()) && named_so)
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn runners_are_recognised_by_executable_or_script_path() {
        let runners = [PathBuf::from("/farm/bot.py")];
        let python = Some(Path::new("/usr/bin/python3.11"));
        let script = b"/usr/bin/python3\0/farm/bot.py\0--x\0";
        assert!(is_runner(python, script, b"bot.py", &runners));
        assert!(
            !is_runner(python, script, b"python3", &runners),
            "not a #! start"
        );
        let editor = b"/usr/bin/vim\0/farm/bot.py\0";
        assert!(!is_runner(
            Some(Path::new("/usr/bin/vim")),
            editor,
            b"vim",
            &runners
        ));
        assert!(is_runner(
            Some(Path::new("/farm/bot.py")),
            b"bot\0",
            b"bot",
            &runners
        ));
        let other = b"/usr/bin/python3\0/farm/other.py\0";
        assert!(!is_runner(python, other, b"other.py", &runners));
        assert!(running_runners(&[] as &[PathBuf]).is_empty());
    }

    #[test]
    fn this_test_process_is_found_by_its_executable() {
        let me = std::env::current_exe().unwrap();
        assert!(running_runners(&[me]).contains(&std::process::id()));
    }
}
