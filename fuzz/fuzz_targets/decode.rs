//! Arbitrary ring-buffer records through the event decoder: a record the
//! kernel could never write must be an error, never a panic; a decoded path
//! is absolute and normalised unless the record says its base was unknown.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::events::{
    decode::{Event, decode},
    paths,
};

fn assert_absolute_normal(what: &str, path: &[u8]) {
    assert!(path.starts_with(b"/"), "{what} not absolute: {path:?}");
    assert_eq!(paths::normalize(path), path, "{what} not normalised");
}

fuzz_target!(|record: &[u8]| {
    let Ok(event) = decode(record) else { return };
    match &event {
        // An opened object's path is the kernel's dentry walk, normal only
        // because dentry names never are `.`, `..` or hold `/`.
        Event::File(file) if file.object.is_some() => {
            assert!(file.path.starts_with(b"/"), "object path not absolute");
        }
        Event::File(file) if !file.unresolved => assert_absolute_normal("file path", &file.path),
        Event::Exec(exec) => {
            if let Some(exe) = &exec.exe {
                assert!(exe.starts_with(b"/"), "exe not absolute: {exe:?}");
            }
        }
        Event::Launch(launch) | Event::WorkerLaunch(launch) => {
            if let Some(cwd) = &launch.cwd {
                assert!(cwd.starts_with(b"/"), "cwd not absolute: {cwd:?}");
            }
        }
        _ => {}
    }
    let _ = event.origin().comm_str();
    // It indexes the 7 `events_total` kinds (pipeline/handle.rs).
    assert!(event.metric_index() < 7);
});
