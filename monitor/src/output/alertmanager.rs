//! Alert lines as Alertmanager v2 alerts (`POST /api/v2/alerts`).
//!
//! Alertmanager identifies an alert by its label set, so the labels keep
//! distinct violations distinct: `alertname`, `kind`, `node`, `action`,
//! `mnemonic`, `target` (the path, `addr:port/proto`, or a summary's
//! prefix) and `label` when known. The whole alert line is the `alert`
//! annotation, its message the `summary` annotation. Grouping (e.g. by
//! kind, mnemonic and node) is Alertmanager's route config:
//! deploy/alertmanager/alertmanager.yml.
use serde_json::{Map, Value, json};

/// The `alertname` label of every alert.
pub const ALERTNAME: &str = "BuildMonitorViolation";

/// The request body for a batch of alert lines.
pub fn body(lines: &[String]) -> String {
    let alerts: Vec<Value> = lines.iter().map(|line| one(line)).collect();
    Value::Array(alerts).to_string()
}

fn one(line: &str) -> Value {
    let alert: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let text = |v: &Value| v.as_str().map(str::to_string);
    let mut labels = Map::new();
    labels.insert("alertname".into(), ALERTNAME.into());
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            labels.insert(key.into(), v.into());
        }
    };
    put("kind", text(&alert["kind"]));
    put("node", text(&alert["node"]));
    put("action", text(&alert["action"]["id"]));
    put(
        "mnemonic",
        text(&alert["action"]["mnemonic"]).or(Some("unknown".into())),
    );
    put("label", text(&alert["action"]["label"]));
    put("target", target(&alert));
    if alert.get("summary").is_some() {
        put("summary", Some("true".into()));
    }
    let mut annotations = Map::new();
    annotations.insert("summary".into(), alert["message"].clone());
    annotations.insert("alert".into(), line.into());
    if let Some(id) = text(&alert["id"]) {
        annotations.insert("id".into(), id.into());
    }
    let mut out = json!({"labels": labels, "annotations": annotations});
    if let Some(time) = text(&alert["time"]) {
        out["startsAt"] = time.into();
    }
    out
}

/// What the alert is about: a summary's prefix, the path, or the destination.
fn target(alert: &Value) -> Option<String> {
    if let Some(prefix) = alert["summary"]["prefix"].as_str() {
        return Some(prefix.to_string());
    }
    if let Some(path) = alert["file"]["path"].as_str() {
        return Some(path.to_string());
    }
    let net = &alert["net"];
    let addr = net["addr"].as_str()?;
    let port = net["port"].as_u64()?;
    let proto = net["proto"].as_str().unwrap_or("unknown");
    Some(if addr.contains(':') {
        format!("[{addr}]:{port}/{proto}")
    } else {
        format!("{addr}:{port}/{proto}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_tell_violations_apart_and_annotations_carry_the_alert() {
        let file = r#"{"schema":"monitor.alert/v1","time":"2026-11-22T10:00:00.123Z","kind":"undeclared_file","node":"w1","id":"r-1","action":{"id":"a7","cgroup":"/cg","cgroup_id":1,"label":"//p:t","mnemonic":"Genrule"},"file":{"path":"/etc/shadow"},"count":1,"message":"m"}"#;
        let net = r#"{"kind":"network_egress","node":"w1","action":{"id":"a7","mnemonic":null},"net":{"proto":"tcp","addr":"::1","port":9},"message":"n"}"#;
        let body: Value = serde_json::from_str(&body(&[file.into(), net.into()])).unwrap();
        let a = &body[0];
        assert_eq!(a["labels"]["alertname"], ALERTNAME);
        assert_eq!(a["labels"]["kind"], "undeclared_file");
        assert_eq!(a["labels"]["node"], "w1");
        assert_eq!(a["labels"]["action"], "a7");
        assert_eq!(a["labels"]["mnemonic"], "Genrule");
        assert_eq!(a["labels"]["target"], "/etc/shadow");
        assert_eq!(a["annotations"]["alert"], file);
        assert_eq!(a["annotations"]["id"], "r-1");
        assert_eq!(a["startsAt"], "2026-11-22T10:00:00.123Z");
        let b = &body[1];
        assert_eq!(b["labels"]["target"], "[::1]:9/tcp");
        assert_eq!(b["labels"]["mnemonic"], "unknown");
        assert!(b["labels"].get("label").is_none());
    }
}
