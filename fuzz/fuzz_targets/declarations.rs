//! Arbitrary text through the declaration-file parser (what the store runs
//! on each `*.json` file): garbage is an error with a reason, never a panic;
//! an accepted declaration names an absolute, normalised cgroup.
#![no_main]

use std::{os::unix::ffi::OsStrExt as _, path::Path};

use libfuzzer_sys::fuzz_target;
use monitor::{actions::declarations, events::paths};

fuzz_target!(|data: &[u8]| {
    // The store reads files with `read_to_string`: non-UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match declarations::parse(text, Path::new("/fuzz/decl.json")) {
        Ok(declaration) => {
            let cgroup = declaration.cgroup.as_os_str().as_bytes();
            assert!(cgroup.starts_with(b"/"), "cgroup not absolute: {cgroup:?}");
            assert_eq!(paths::normalize(cgroup), cgroup, "cgroup not normalised");
            // Matching any path must not panic.
            let _ = declaration.inputs.matches(cgroup);
        }
        Err(reason) => assert!(!reason.is_empty(), "rejected without a reason"),
    }
});
