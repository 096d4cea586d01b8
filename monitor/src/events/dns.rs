//! DNS answers the job received, read for the names they give addresses:
//! each A/AAAA record's address with the name the job asked for (the
//! question name, reached through any CNAME chain).
//!
//! Parsed with `simple-dns`: a small, maintained parser with one dependency
//! (bitflags) that builds on rustc 1.95 and returns errors, never panics,
//! on bad input; `hickory-proto` would do too but brings a full DNS stack
//! (rand, url, tracing) for reading three record types.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use simple_dns::{Packet, PacketFlag, rdata::RData};

/// Why an answer gave no names.
#[derive(Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Not a DNS message (or cut short).
    Malformed,
    /// A query, not an answer (something sent from port 53 to the job).
    NotAnAnswer,
}

/// How many CNAME hops are followed from the question name.
const MAX_CHAIN: usize = 16;

/// (address, question name) for every A and AAAA record of the answer
/// that the question name leads to. A record no chain leads to keeps its
/// own name.
pub fn names_in_answer(payload: &[u8]) -> Result<Vec<(IpAddr, String)>, Unreadable> {
    let packet = Packet::parse(payload).map_err(|_| Unreadable::Malformed)?;
    if !packet.has_flags(PacketFlag::RESPONSE) {
        return Err(Unreadable::NotAnAnswer);
    }
    let Some(question) = packet.questions.first() else {
        return Ok(Vec::new());
    };
    let asked = normal(&question.qname.to_string());
    let chain = chain_from(&asked, &packet);
    let mut out = Vec::new();
    for record in &packet.answers {
        let address = match &record.rdata {
            RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
            RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(a.address)),
            _ => continue,
        };
        let owner = normal(&record.name.to_string());
        let name = if chain.contains(&owner) {
            asked.clone()
        } else {
            owner
        };
        out.push((address, name));
    }
    Ok(out)
}

/// The question name and every name its CNAME records lead to.
fn chain_from(asked: &str, packet: &Packet<'_>) -> BTreeSet<String> {
    let mut chain = BTreeSet::from([asked.to_string()]);
    for _ in 0..MAX_CHAIN {
        let before = chain.len();
        for record in &packet.answers {
            if let RData::CNAME(target) = &record.rdata
                && chain.contains(&normal(&record.name.to_string()))
            {
                chain.insert(normal(&target.0.to_string()));
            }
        }
        if chain.len() == before {
            break;
        }
    }
    chain
}

/// Names compare without case and without the root's dot.
fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use simple_dns::{
        CLASS, Name, Question, ResourceRecord, TYPE,
        rdata::{A, AAAA, CNAME},
    };

    use super::*;

    fn answer(question: &str, records: Vec<ResourceRecord<'static>>) -> Vec<u8> {
        let mut packet = Packet::new_reply(7);
        packet.questions.push(Question::new(
            Name::new_unchecked(question).into_owned(),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        packet.answers = records;
        packet.build_bytes_vec_compressed().unwrap()
    }

    fn record(name: &'static str, rdata: RData<'static>) -> ResourceRecord<'static> {
        ResourceRecord::new(Name::new_unchecked(name), CLASS::IN, 60, rdata)
    }

    #[test]
    fn a_and_aaaa_records_name_their_addresses() {
        let bytes = answer(
            "Registry.Example.TEST.",
            vec![
                record(
                    "registry.example.test",
                    RData::A(A {
                        address: 0x0a000001,
                    }),
                ),
                record("registry.example.test", RData::AAAA(AAAA { address: 1 })),
            ],
        );
        let names = names_in_answer(&bytes).unwrap();
        assert_eq!(
            names,
            vec![
                ("10.0.0.1".parse().unwrap(), "registry.example.test".into()),
                ("::1".parse().unwrap(), "registry.example.test".into()),
            ]
        );
    }

    #[test]
    fn a_cname_chain_gives_the_address_the_name_asked_for() {
        let bytes = answer(
            "pkg.example.test",
            vec![
                record(
                    "pkg.example.test",
                    RData::CNAME(CNAME(Name::new_unchecked("edge.cdn.test"))),
                ),
                record(
                    "edge.cdn.test",
                    RData::CNAME(CNAME(Name::new_unchecked("a1.cdn.test"))),
                ),
                record(
                    "a1.cdn.test",
                    RData::A(A {
                        address: 0x0a000002,
                    }),
                ),
                record(
                    "stray.test",
                    RData::A(A {
                        address: 0x0a000003,
                    }),
                ),
            ],
        );
        let names = names_in_answer(&bytes).unwrap();
        assert_eq!(
            names,
            vec![
                ("10.0.0.2".parse().unwrap(), "pkg.example.test".into()),
                ("10.0.0.3".parse().unwrap(), "stray.test".into()),
            ]
        );
    }

    #[test]
    fn garbage_truncated_and_queries_are_refused_not_panics() {
        let bytes = answer(
            "a.test",
            vec![record(
                "a.test",
                RData::A(A {
                    address: 0x7f000001,
                }),
            )],
        );
        assert_eq!(
            names_in_answer(&bytes[..bytes.len() - 3]),
            Err(Unreadable::Malformed)
        );
        assert_eq!(
            names_in_answer(b"\x00\x01garbage"),
            Err(Unreadable::Malformed)
        );
        assert_eq!(names_in_answer(&[]), Err(Unreadable::Malformed));
        let mut query = Packet::new_query(9);
        query.questions.push(Question::new(
            Name::new_unchecked("a.test"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        let query = query.build_bytes_vec().unwrap();
        assert_eq!(names_in_answer(&query), Err(Unreadable::NotAnAnswer));
        // Positive control: the whole answer reads.
        assert_eq!(names_in_answer(&bytes).unwrap().len(), 1);
    }
}
