//! Arbitrary byte paths through the path helpers, checking their invariants:
//! `normalize` is absolute, normal and idempotent; `resolve` does not care
//! whether its base was normalised first; `escape_for_display` keeps UTF-8
//! as it is and round-trips every other byte through `\xNN`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::events::paths::{dir_from_components, escape_for_display, normalize, resolve};

fuzz_target!(|input: (&[u8], &[u8])| {
    let (base, path) = input;
    check_normalize(path);
    check_resolve(base, path);
    let dir = dir_from_components(base);
    assert!(dir.starts_with(b"/"), "directory not absolute: {dir:?}");
    check_escape(path);
});

fn check_normalize(path: &[u8]) {
    let normal = normalize(path);
    assert!(normal.starts_with(b"/"), "not absolute: {normal:?}");
    assert_eq!(normalize(&normal), normal, "not idempotent");
    if normal != b"/" {
        assert!(!normal.ends_with(b"/"), "trailing slash: {normal:?}");
        for component in normal[1..].split(|&b| b == b'/') {
            assert!(
                !matches!(component, b"" | b"." | b".."),
                "component {component:?} left in {normal:?}"
            );
        }
    }
}

fn check_resolve(base: &[u8], path: &[u8]) {
    let resolved = resolve(base, path);
    assert!(resolved.starts_with(b"/"), "not absolute: {resolved:?}");
    assert_eq!(normalize(&resolved), resolved, "not normalised");
    assert_eq!(
        resolve(&normalize(base), path),
        resolved,
        "depends on the base's form"
    );
    if path.starts_with(b"/") {
        assert_eq!(resolved, normalize(path), "absolute path not taken alone");
    }
}

fn check_escape(bytes: &[u8]) {
    let shown = escape_for_display(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        assert_eq!(shown, text, "valid UTF-8 changed");
    }
    // Literal `\x` text in the input is the one documented ambiguity.
    if !bytes.windows(2).any(|w| w == b"\\x") {
        assert_eq!(
            unescape(&shown),
            bytes,
            "escape does not round-trip: {shown:?}"
        );
    }
}

/// The inverse of `escape_for_display` for input without literal `\x`.
fn unescape(shown: &str) -> Vec<u8> {
    let bytes = shown.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 2..i + 4)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], bytes.get(i + 1), hex) {
            (b'\\', Some(b'x'), Some(hex)) if hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                i += 4;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}
