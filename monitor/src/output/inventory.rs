//! The egress inventory of a `monitor exec` run: every destination the job
//! reached or tried, allowed or not — address and port (or socket path),
//! protocol, which targets and processes, how many times, and the verdict.
//! The job's own internal traffic (its listeners) is not egress and is not
//! listed. Each IP destination is named by the question names of the DNS
//! answers the job received for its address (`dns_names`), when seen.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use serde::Serialize;

/// One destination.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Destination {
    pub proto: &'static str,
    /// `addr:port`, `addr` (no port) or the unix socket path.
    pub destination: String,
    /// `allowed`, `observed` (a violation) or `blocked`; the most severe seen.
    pub verdict: &'static str,
    /// Target labels (`label (mnemonic)`), else action ids.
    pub targets: BTreeSet<String>,
    pub processes: BTreeSet<String>,
    pub count: u64,
    /// Action ids behind `targets`, to relabel from the execution log.
    #[serde(skip)]
    actions: BTreeSet<String>,
}

fn severity(verdict: &str) -> u8 {
    match verdict {
        "blocked" => 2,
        "observed" => 1,
        _ => 0,
    }
}

/// What one event adds to the inventory.
pub struct Seen<'a> {
    pub proto: &'static str,
    pub destination: String,
    pub verdict: &'static str,
    pub action_id: &'a str,
    /// `label (mnemonic)` when known, else the action id.
    pub target: String,
    pub process: &'a str,
}

#[derive(Debug, Default)]
pub struct Inventory {
    by_destination: BTreeMap<(String, &'static str), Destination>,
    /// Host names from the DNS answers the job received.
    pub names: crate::output::dns_names::DnsNames,
}

/// The IP address of a destination (`addr:port` or `addr`); none for a
/// unix socket path.
fn address(destination: &str) -> Option<IpAddr> {
    destination
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| destination.parse::<IpAddr>())
        .ok()
}

impl Inventory {
    pub fn record(&mut self, seen: Seen<'_>) {
        let d = self
            .by_destination
            .entry((seen.destination.clone(), seen.proto))
            .or_default();
        d.proto = seen.proto;
        d.destination = seen.destination;
        if severity(seen.verdict) >= severity(d.verdict) {
            d.verdict = seen.verdict;
        }
        d.targets.insert(seen.target);
        d.actions.insert(seen.action_id.to_string());
        d.processes.insert(seen.process.to_string());
        d.count += 1;
    }

    /// Names the spawns labelled from Bazel's execution log by their target.
    pub fn relabel(&mut self, by_action: &HashMap<String, (Option<String>, Option<String>)>) {
        for d in self.by_destination.values_mut() {
            for id in &d.actions {
                let Some((Some(label), mnemonic)) = by_action.get(id) else {
                    continue;
                };
                d.targets.retain(|t| !t.starts_with(id.as_str()));
                d.targets.insert(match mnemonic {
                    Some(m) => format!("{label} ({m})"),
                    None => label.clone(),
                });
            }
        }
    }

    pub fn destinations(&self) -> impl Iterator<Item = &Destination> {
        self.by_destination.values()
    }

    /// The host names the job resolved the destination's address from
    /// (empty when no DNS answer for it was seen).
    pub fn names_of(&self, d: &Destination) -> Vec<String> {
        address(&d.destination).map_or_else(Vec::new, |a| self.names.of(a))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let entries = self
            .destinations()
            .map(|d| {
                let mut v = serde_json::to_value(d).expect("inventory entries serialise");
                v["names"] = self.names_of(d).into();
                v
            })
            .collect::<Vec<_>>();
        serde_json::Value::Array(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(dest: &str, verdict: &'static str, id: &'static str) -> Seen<'static> {
        Seen {
            proto: "tcp",
            destination: dest.into(),
            verdict,
            action_id: id,
            target: format!("{id} (Genrule)"),
            process: "curl",
        }
    }

    #[test]
    fn destinations_count_every_attempt_keep_the_worst_verdict_and_get_labels() {
        let mut inv = Inventory::default();
        inv.record(seen("10.0.0.1:443", "allowed", "linux-sandbox-1"));
        inv.record(seen("10.0.0.1:443", "blocked", "linux-sandbox-2"));
        inv.record(seen("10.0.0.1:443", "allowed", "linux-sandbox-1"));
        inv.record(seen("10.0.0.2:80", "allowed", "exec-1"));
        let mut labels = HashMap::new();
        labels.insert(
            "linux-sandbox-2".to_string(),
            (Some("//p:t".to_string()), Some("Genrule".to_string())),
        );
        inv.relabel(&labels);
        let json = inv.to_json();
        assert_eq!(json[0]["destination"], "10.0.0.1:443");
        assert_eq!(json[0]["count"], 3);
        assert_eq!(json[0]["verdict"], "blocked");
        let targets = json[0]["targets"].as_array().unwrap();
        assert!(targets.contains(&"//p:t (Genrule)".into()), "{json}");
        assert!(
            targets.contains(&"linux-sandbox-1 (Genrule)".into()),
            "{json}"
        );
        assert_eq!(json[1]["verdict"], "allowed");
        assert_eq!(json[1]["names"], serde_json::json!([]));
    }

    #[test]
    fn destinations_get_the_names_their_address_was_resolved_from() {
        use simple_dns::{CLASS, Name, Packet, Question, ResourceRecord, TYPE, rdata};
        let mut packet = Packet::new_reply(1);
        let name = Name::new_unchecked("registry.example.test");
        packet.questions.push(Question::new(
            name.clone(),
            TYPE::AAAA.into(),
            CLASS::IN.into(),
            false,
        ));
        packet.answers.push(ResourceRecord::new(
            name,
            CLASS::IN,
            60,
            rdata::RData::AAAA(rdata::AAAA { address: 1 }),
        ));
        let mut inv = Inventory::default();
        inv.names.answer(&packet.build_bytes_vec().unwrap(), false);
        inv.record(seen("[::1]:443", "allowed", "exec-1"));
        inv.record(seen("10.0.0.9:80", "allowed", "exec-1"));
        let json = inv.to_json();
        assert_eq!(json[0]["destination"], "10.0.0.9:80");
        assert_eq!(json[0]["names"], serde_json::json!([]));
        assert_eq!(
            json[1]["names"],
            serde_json::json!(["registry.example.test"])
        );
    }
}
