//! The contracts in docs/ stay in step with the code: every metric and label
//! value the monitor registers, every config key, and every alert key (in
//! the order the code writes them) is documented. Pure, needs no root.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::SystemTime,
};

use monitor::{
    config::Config,
    output::{
        alert::{
            ActionInfo, Alert, AlertKind, CacheRiskInfo, FetchInfo, FileInfo, NetInfo, ProcessInfo,
            Verdict, ViolationRef,
        },
        metrics::Metrics,
    },
};

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `doc` mentions `word` as code: `word`, or inside a code span
/// such as `build_monitor_events_total{kind}`.
fn mentions(doc: &str, word: &str) -> bool {
    doc.contains(&format!("`{word}`"))
        || doc.contains(&format!("`{word}{{"))
        || doc.contains(&format!("{{{word}}}"))
}

#[test]
fn every_registered_metric_and_label_is_documented() {
    let metrics = Metrics::new();
    let doc = doc("metrics.md");
    let families = metrics.registry.gather();
    // Positive control: the registry really lists the contract's metrics.
    assert!(families.len() >= 8, "only {} families", families.len());
    let mut missing = Vec::new();
    for family in &families {
        let name = family.name();
        if !mentions(&doc, name) {
            missing.push(name.to_string());
        }
        for metric in family.get_metric() {
            for pair in metric.get_label() {
                if !mentions(&doc, pair.name()) {
                    missing.push(format!("{name}: label {}", pair.name()));
                }
                if !mentions(&doc, pair.value()) {
                    missing.push(format!("{name}: {}={}", pair.name(), pair.value()));
                }
            }
        }
    }
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
}

/// `section.key` for every key of the TOML text, leaves and tables alike.
fn toml_keys(text: &str) -> Vec<(String, String)> {
    let table: toml::Table = text.parse().expect("to_toml output parses");
    let mut keys = Vec::new();
    for (section, value) in &table {
        let toml::Value::Table(inner) = value else {
            // A top-level key (`node`): documented under `[top level]`.
            keys.push(("top level".to_string(), section.clone()));
            continue;
        };
        for key in inner.keys() {
            keys.push((section.clone(), key.clone()));
        }
    }
    keys
}

#[test]
fn every_config_key_is_documented() {
    let mut config = Config::default();
    // Optional keys are left out of the output when unset: set them.
    config.alerts.file = Some(PathBuf::from("/var/log/monitor/alerts.jsonl"));
    config.node = Some("worker-17".into());
    config.bazel.downloader = Some(Default::default());
    let keys = toml_keys(&config.to_toml());
    assert!(keys.len() >= 10, "only {} keys: {keys:?}", keys.len());
    let doc = doc("config.md");
    let missing: Vec<String> = keys
        .iter()
        .filter(|(section, key)| !doc.contains(&format!("`[{section}]`")) || !mentions(&doc, key))
        .map(|(section, key)| format!("{section}.{key}"))
        .collect();
    assert!(missing.is_empty(), "not in docs/config.md: {missing:?}");
}

fn alert(kind: AlertKind) -> Alert {
    Alert {
        time: SystemTime::UNIX_EPOCH,
        kind,
        action: ActionInfo {
            id: "a".into(),
            cgroup: "/cg/a".into(),
            cgroup_id: 1,
            label: Some("//p:t".into()),
            mnemonic: Some("Genrule".into()),
            // A remote-execution action: every optional key is written.
            worker: Some(std::sync::Arc::new(
                monitor::actions::registry::WorkerIdentity {
                    root_pid: 2,
                    digest: "ab/1".into(),
                    invocation_id: Some("inv".into()),
                },
            )),
        },
        process: ProcessInfo {
            pid: 2,
            ppid: 1,
            comm: "cat".into(),
            exe: Some("/usr/bin/cat".into()),
        },
        file: Some(FileInfo {
            path: b"/etc/shadow".to_vec(),
            op: "open",
            flags: 0,
            result: 3,
            caveat: None,
            requested: Some(b"/src/link".to_vec()),
            dev: Some("254:0".into()),
            ino: Some(131077),
            note: None,
        }),
        net: Some(NetInfo {
            proto: "tcp",
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 9,
            result: Some(-111),
            send: false,
            unix_path: None,
            netns: Some(4026531833),
            private_netns: false,
        }),
        verdict: Verdict::Observed,
        count: 1,
        cache_risk: Some(CacheRiskInfo {
            action_digest: "ab/1".into(),
            exit_code: 0,
            violations: vec![ViolationRef {
                kind: "undeclared_file",
                target: "/etc/shadow".into(),
            }],
            violations_total: 1,
        }),
        fetch: Some(Box::new(FetchInfo {
            repository: Some("@r".into()),
            url: Some("https://example.test/a.tar.gz".into()),
            fetched_url: Some("https://mirror.test/a.tar.gz".into()),
            host: "mirror.test".into(),
            via: "downloader",
        })),
        summary: None,
    }
}

/// The keys of a JSON object in the order they appear in `line`.
fn keys_in_order(line: &str) -> Vec<String> {
    // serde_json without preserve_order sorts maps: read the order from the
    // text instead, one `"key":` at a time at the top level.
    let mut keys = Vec::new();
    let mut depth = 0;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            '"' => {
                let start = i + 1;
                let mut end = start;
                while let Some((j, c)) = chars.next() {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        end = j;
                        break;
                    }
                }
                if depth == 1 && chars.peek().map(|(_, c)| *c) == Some(':') {
                    keys.push(line[start..end].to_string());
                }
            }
            _ => {}
        }
    }
    keys
}

#[test]
fn alert_keys_are_documented_in_the_order_they_are_written() {
    let doc = doc("alerts.md");
    let table = doc
        .split("## Keys, in order")
        .nth(1)
        .expect("a \"Keys, in order\" section");
    let table = table.split("\n\n").nth(2).expect("the key table");
    let documented: Vec<String> = table
        .lines()
        .filter_map(|row| row.strip_prefix("| `"))
        .filter_map(|row| row.split('`').next())
        .map(str::to_string)
        .collect();
    let weak = AlertKind::WeakIsolation {
        ran: "process-wrapper",
        required: "linux-sandbox",
    };
    for kind in [
        AlertKind::UndeclaredFile,
        AlertKind::UndeclaredWrite,
        AlertKind::NetworkEgress,
        AlertKind::CacheRisk,
        weak,
        AlertKind::Fetch { bypass: false },
        AlertKind::Fetch { bypass: true },
    ] {
        let line = alert(kind).to_json_line();
        let written = keys_in_order(&line);
        assert!(written.len() >= 9, "{line}");
        let expected: Vec<&String> = documented.iter().filter(|k| written.contains(k)).collect();
        assert_eq!(
            written.iter().collect::<Vec<_>>(),
            expected,
            "docs/alerts.md key table vs {line}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        for object in [
            "action",
            "process",
            "file",
            "net",
            "cache_risk",
            "isolation",
            "fetch",
        ] {
            let Some(inner) = value.get(object).and_then(|v| v.as_object()) else {
                continue;
            };
            for key in inner.keys() {
                assert!(mentions(&doc, key), "{object}.{key} not in docs/alerts.md");
            }
        }
        assert!(
            mentions(&doc, value["kind"].as_str().unwrap()),
            "kind missing"
        );
    }
}
