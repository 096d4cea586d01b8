//! Arbitrary text through `Config::parse` (what `Config::load` runs on a
//! file's contents): an error names the file and a line inside the text, on
//! one line; an accepted config prints (`monitor check-config`) as TOML that
//! parses back to the same config.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use monitor::config::Config;

const ORIGIN: &str = "/fuzz/monitor.toml";

fuzz_target!(|data: &[u8]| {
    // `Config::load` rejects non-UTF-8 files before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new(ORIGIN)) {
        Ok(config) => {
            let printed = config.to_toml();
            let again = Config::parse(&printed, Path::new(ORIGIN))
                .unwrap_or_else(|e| panic!("printed config rejected: {e}\n{printed}"));
            assert_eq!(again, config, "printed config differs:\n{printed}");
        }
        Err(error) => {
            let shown = error.to_string();
            assert!(
                shown.starts_with(ORIGIN),
                "error does not name the file: {shown}"
            );
            assert!(!shown.contains('\n'), "error is not one line: {shown:?}");
            if let Some(line) = error.line() {
                let lines = text.split('\n').count();
                assert!(
                    (1..=lines).contains(&line),
                    "line {line} of {lines}: {shown}"
                );
            }
        }
    }
});
