//! Arbitrary text through Bazel's execution-log parser: a malformed entry
//! stops parsing at an offset inside the text, and the text before that
//! offset parses to the same entries without error; every parsed entry is
//! found again by its own command line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::bazel::execlog::{ExecLog, ExecLogError, label_from_progress};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (log, error) = ExecLog::parse_json(text);
    if let Some(ExecLogError::Malformed { offset, message }) = &error {
        assert!(
            *offset <= text.len(),
            "offset {offset} past the end: {message}"
        );
        assert!(
            text.is_char_boundary(*offset),
            "offset {offset} inside a character"
        );
        let (before, rest) = ExecLog::parse_json(&text[..*offset]);
        assert!(
            rest.is_none(),
            "the part before offset {offset} is malformed too"
        );
        assert_eq!(
            before.entries, log.entries,
            "entries before offset {offset} differ"
        );
    }
    for entry in log.entries.iter().take(8) {
        let hint = entry.outputs.first().map(String::as_str);
        let found = log
            .find_by_command(&entry.command_args, hint)
            .expect("an entry is found by its own command line");
        assert_eq!(found.command_args, entry.command_args);
        if let Some(label) = entry
            .progress_message
            .as_deref()
            .and_then(label_from_progress)
        {
            assert!(label.contains("//"), "label without //: {label:?}");
        }
    }
});
