//! Host names in the egress inventory, end to end under `monitor exec`: a
//! tiny DNS server on a free loopback address's port 53 (the kernel program
//! reads UDP answers *from port 53*) answers every A query with 127.0.0.1;
//! the job asks it for `registry.example.test`, then connects to the
//! answered address and a loopback listener's port. The report's inventory
//! entry for that destination carries the name.
use std::{
    fs,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    process::Command,
    sync::mpsc,
    thread,
    time::Duration,
};

use monitor_integration_tests::*;
use serde_json::Value;
use simple_dns::{CLASS, Packet, PacketFlag, ResourceRecord, TYPE, rdata};

/// Sends an A query (AAAA when the server is IPv6) for `sys.argv[3]` to
/// `sys.argv[1]`:53, connects to the answer's address (the last record's
/// data) at port `sys.argv[2]`.
const JOB: &str = r#"
import socket, struct, sys
server, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
family, qtype, size = (socket.AF_INET6, 28, 16) if ':' in server else (socket.AF_INET, 1, 4)
qname = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0'
query = struct.pack('!HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack('!HH', qtype, 1)
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(10)
s.sendto(query, (server, 53))
answer = s.recv(1500)
addr = socket.inet_ntop(family, answer[-size:])
c = socket.create_connection((addr, port), 10)
c.sendall(b'hello')
c.close()
print('connected', addr, flush=True)
"#;

/// The reply to one query: A questions answered with 127.0.0.1, others
/// (AAAA) with ::1.
fn reply(query: &[u8]) -> Option<Vec<u8>> {
    let query = Packet::parse(query).ok()?;
    let mut reply = Packet::new_reply(query.id());
    reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
    for q in &query.questions {
        reply.answers.push(ResourceRecord::new(
            q.qname.clone(),
            CLASS::IN,
            60,
            if q.qtype == TYPE::A.into() {
                rdata::RData::A(rdata::A::from(Ipv4Addr::LOCALHOST))
            } else {
                rdata::RData::AAAA(rdata::AAAA::from(Ipv6Addr::LOCALHOST))
            },
        ));
    }
    reply.questions = query.questions;
    reply.build_bytes_vec().ok()
}

/// A DNS server on port 53 of `candidates`' first free address, answering
/// in the background for as long as the test runs.
fn dns_server(candidates: impl IntoIterator<Item = IpAddr>) -> IpAddr {
    let socket = candidates
        .into_iter()
        .find_map(|ip| UdpSocket::bind(SocketAddr::from((ip, 53))).ok())
        .expect("no free loopback address with port 53 (root needed to bind it)");
    let local = socket.local_addr().unwrap().ip();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            if let Some(answer) = reply(&buf[..n]) {
                let _ = socket.send_to(&answer, from);
            }
        }
    });
    local
}

/// Free 127.0.53.x addresses to try (nothing listens there: systemd-resolved
/// uses 127.0.0.53), from one that depends on the test's pid.
fn ipv4_candidates() -> impl Iterator<Item = IpAddr> {
    let start = std::process::id() % 200;
    (0..200).map(move |i| IpAddr::V4(Ipv4Addr::new(127, 0, 53, 2 + ((start + i) % 200) as u8)))
}

/// A loopback TCP listener outside the job; what it received arrives on
/// the channel.
fn sink(ip: IpAddr) -> (u16, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind(SocketAddr::from((ip, 0))).unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            let mut buf = Vec::new();
            let _ = conn.read_to_end(&mut buf);
            let _ = tx.send(buf);
        }
    });
    (port, rx)
}

fn entry<'a>(egress: &'a [Value], destination: &str) -> Option<&'a Value> {
    egress.iter().find(|d| d["destination"] == destination)
}

/// Runs the job against the DNS server at `server`; the answered address
/// is `answered`. Checks the report and the Markdown summary.
fn resolve_and_connect(server: IpAddr, answered: IpAddr) {
    let (port, received) = sink(answered);
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("monitor.toml");
    fs::write(&config, "[metrics]\nlisten = \"off\"\n").unwrap();
    let report = tmp.path().join("report.json");
    let markdown = tmp.path().join("summary.md");
    let out = Command::new(monitor_bin())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["exec", "--config"])
        .arg(&config)
        .arg("--report")
        .arg(&report)
        .arg("--markdown")
        .arg(&markdown)
        .args(["--", "/usr/bin/python3", "-S", "-c", JOB])
        .args([server.to_string(), port.to_string()])
        .arg("registry.example.test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(&format!("connected {answered}")),
        "{stdout} {stderr}"
    );
    let got = received.recv_timeout(Duration::from_secs(10));
    assert_eq!(got.as_deref().ok(), Some(&b"hello"[..]), "{stderr}");

    let report: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let egress = report["egress"].as_array().cloned().unwrap_or_default();
    // Positive control: the connect itself is in the inventory.
    let dest = SocketAddr::new(answered, port).to_string();
    let connect = entry(&egress, &dest).unwrap_or_else(|| panic!("{dest}: {egress:#?}"));
    assert_eq!(connect["proto"], "tcp");
    assert_eq!(
        connect["names"],
        serde_json::json!(["registry.example.test"]),
        "{egress:#?} {stderr}"
    );
    // The query's own destination is egress too; unnamed unless an answer
    // gave its address (IPv6 loopback is one address: ::1 is both).
    let query = entry(&egress, &SocketAddr::new(server, 53).to_string())
        .unwrap_or_else(|| panic!("the DNS query: {egress:#?}"));
    if server != answered {
        assert_eq!(query["names"], serde_json::json!([]), "{egress:#?}");
    }
    let dns = &report["completeness"]["dns"];
    assert_eq!(dns["answers"], 1, "{dns}");
    assert_eq!(dns["malformed"], 0, "{dns}");
    let md = fs::read_to_string(&markdown).unwrap();
    assert!(
        md.contains(&format!("| `{dest}` | registry.example.test | tcp |")),
        "{md}"
    );
}

#[test]
fn the_inventory_names_a_destination_from_the_dns_answer_the_job_got() {
    require_root();
    let server = dns_server(ipv4_candidates());
    resolve_and_connect(server, IpAddr::V4(Ipv4Addr::LOCALHOST));
}

/// The same over IPv6: the query goes to [::1]:53, the AAAA answer is ::1.
#[test]
fn ipv6_answers_name_destinations_too() {
    require_root();
    let server = dns_server([IpAddr::V6(Ipv6Addr::LOCALHOST)]);
    resolve_and_connect(server, IpAddr::V6(Ipv6Addr::LOCALHOST));
}
