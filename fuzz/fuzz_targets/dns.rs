//! Arbitrary UDP payloads from port 53 through the DNS answer reader and
//! the names book: never a panic; every packet is counted once, read or
//! malformed (or a query: neither); names come out lower-case without the
//! root's dot.
#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::{events::dns::names_in_answer, output::dns_names::DnsNames};

fuzz_target!(|payload: &[u8]| {
    if let Ok(pairs) = names_in_answer(payload) {
        for (_, name) in &pairs {
            assert!(!name.ends_with('.'), "root dot kept: {name:?}");
            assert_eq!(name, &name.to_ascii_lowercase());
        }
    }
    let mut book = DnsNames::default();
    book.answer(payload, false);
    let c = book.counts;
    assert!(c.answers + c.malformed <= 1, "{c:?}");
});
