//! Which host names the job resolved each address from, learned from the
//! DNS answers its sockets received (`events::dns`), for the egress
//! inventory. Bounded: past `MAX_ADDRESSES` the address learned first is
//! forgotten (counted), and an address keeps at most `MAX_NAMES` names.
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    net::IpAddr,
};

use crate::events::dns::{Unreadable, names_in_answer};

pub const MAX_ADDRESSES: usize = 4096;
pub const MAX_NAMES: usize = 16;

/// What the DNS answers gave, and what could not be read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DnsCounts {
    /// Answers read.
    pub answers: u64,
    /// Packets from port 53 that were not a readable DNS message.
    pub malformed: u64,
    /// Answers longer than the kernel copies (`DNS_CAPTURE`); unreadable
    /// ones among them are counted here, not as malformed.
    pub cut: u64,
    /// Addresses forgotten to keep the map bounded.
    pub evicted: u64,
}

#[derive(Debug, Default)]
pub struct DnsNames {
    by_address: HashMap<IpAddr, BTreeSet<String>>,
    /// Addresses in the order first learned, to evict the oldest.
    order: VecDeque<IpAddr>,
    pub counts: DnsCounts,
}

impl DnsNames {
    /// Learns the names in one answer's payload; `cut` when the kernel
    /// could not copy all of it.
    pub fn answer(&mut self, payload: &[u8], cut: bool) {
        if cut {
            self.counts.cut += 1;
        }
        match names_in_answer(payload) {
            Ok(pairs) => {
                self.counts.answers += 1;
                for (address, name) in pairs {
                    self.learn(address, name);
                }
            }
            Err(Unreadable::Malformed) if !cut => self.counts.malformed += 1,
            Err(_) => {}
        }
    }

    fn learn(&mut self, address: IpAddr, name: String) {
        if !self.by_address.contains_key(&address) {
            if self.order.len() >= MAX_ADDRESSES
                && let Some(oldest) = self.order.pop_front()
            {
                self.by_address.remove(&oldest);
                self.counts.evicted += 1;
            }
            self.order.push_back(address);
        }
        let names = self.by_address.entry(address).or_default();
        if names.len() < MAX_NAMES {
            names.insert(name);
        }
    }

    /// The names `address` was resolved from (empty when unknown). An
    /// IPv4-mapped IPv6 address is looked up as IPv4 too.
    pub fn of(&self, address: IpAddr) -> Vec<String> {
        let canonical = address.to_canonical();
        let mut out: BTreeSet<&String> = BTreeSet::new();
        for a in [address, canonical] {
            out.extend(self.by_address.get(&a).into_iter().flatten());
        }
        out.into_iter().cloned().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use simple_dns::{CLASS, Name, Packet, Question, ResourceRecord, TYPE, rdata::A};

    use super::*;

    /// An answer giving `name` the IPv4 `address`.
    pub fn a_answer(name: &str, address: u32) -> Vec<u8> {
        let mut packet = Packet::new_reply(1);
        packet.questions.push(Question::new(
            Name::new_unchecked(name),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        ));
        packet.answers.push(ResourceRecord::new(
            Name::new_unchecked(name),
            CLASS::IN,
            60,
            simple_dns::rdata::RData::A(A { address }),
        ));
        packet.build_bytes_vec().unwrap()
    }

    #[test]
    fn names_are_kept_per_address_bounded_and_bad_packets_counted() {
        let mut book = DnsNames::default();
        book.answer(&a_answer("a.test", 0x0a000001), false);
        book.answer(&a_answer("b.test", 0x0a000001), false);
        book.answer(b"junk", false);
        book.answer(b"junk", true);
        let ten: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(book.of(ten), vec!["a.test".to_string(), "b.test".into()]);
        assert_eq!(book.of("::ffff:10.0.0.1".parse().unwrap()), book.of(ten));
        assert!(book.of("10.0.0.2".parse().unwrap()).is_empty());
        for i in 0..MAX_ADDRESSES as u32 {
            book.answer(&a_answer("many.test", 0x0b000000 + i), false);
        }
        assert!(book.of(ten).is_empty(), "the oldest address was evicted");
        assert_eq!(
            book.counts,
            DnsCounts {
                answers: 2 + MAX_ADDRESSES as u64,
                malformed: 1,
                cut: 1,
                evicted: 1,
            }
        );
    }
}
