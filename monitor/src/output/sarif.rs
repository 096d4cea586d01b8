//! `monitor exec --sarif FILE`: SARIF 2.1.0, so code-scanning UIs show the
//! findings. One rule per alert kind; each result is located at its
//! target's BUILD file (at the line naming the target) when the label
//! resolves to one in the workspace, else logically by label or action.
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::output::alert::{Alert, AlertKind};

pub const SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";
const RULES: [(AlertKind, &str); 2] = [
    (
        AlertKind::UndeclaredFile,
        "A build action opened a file it did not declare as an input.",
    ),
    (
        AlertKind::NetworkEgress,
        "A build action connected or sent to a destination the network policy does not allow.",
    ),
];

/// The Bazel workspace containing `dir` (a `WORKSPACE`, `WORKSPACE.bazel`
/// or `MODULE.bazel` file), if any.
pub fn workspace_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| {
            ["WORKSPACE", "WORKSPACE.bazel", "MODULE.bazel"]
                .iter()
                .any(|f| d.join(f).is_file())
        })
        .map(Path::to_path_buf)
}

/// `//pkg:name` → (`pkg/BUILD[.bazel]` relative to the workspace, the
/// 1-based line naming `name`, or 1).
pub fn build_file_of(workspace: &Path, label: &str) -> Option<(String, usize)> {
    let rest = label.strip_prefix("//")?;
    let (pkg, name) = match rest.split_once(':') {
        Some((p, n)) => (p, n),
        None => (rest, rest.rsplit('/').next().unwrap_or(rest)),
    };
    let dir = workspace.join(pkg);
    let file = ["BUILD.bazel", "BUILD"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())?;
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let needle = format!("\"{name}\"");
    let line = text
        .lines()
        .position(|l| l.contains("name") && l.contains(&needle))
        .map_or(1, |i| i + 1);
    let rel = file
        .strip_prefix(workspace)
        .ok()?
        .to_string_lossy()
        .into_owned();
    Some((rel, line))
}

fn location(alert: &Alert, workspace: Option<&Path>) -> Value {
    let label = alert.action.label.as_deref();
    if let (Some(ws), Some(label)) = (workspace, label)
        && let Some((uri, line)) = build_file_of(ws, label)
    {
        return json!({
            "physicalLocation": {
                "artifactLocation": {"uri": uri, "uriBaseId": "%SRCROOT%"},
                "region": {"startLine": line}
            },
            "logicalLocations": [{"fullyQualifiedName": label, "kind": "module"}]
        });
    }
    let name = label.unwrap_or(&alert.action.id);
    json!({"logicalLocations": [{"fullyQualifiedName": name, "kind": "module"}]})
}

pub fn render(alerts: &[Alert], workspace: Option<&Path>) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|(kind, text)| {
            json!({
                "id": kind.as_str(),
                "shortDescription": {"text": text},
                "defaultConfiguration": {"level": "error"}
            })
        })
        .collect();
    let results: Vec<Value> = alerts
        .iter()
        .map(|a| {
            let index = RULES.iter().position(|(k, _)| *k == a.kind).unwrap_or(0);
            json!({
                "ruleId": a.kind.as_str(),
                "ruleIndex": index,
                "level": "error",
                "message": {"text": a.message()},
                "locations": [location(a, workspace)],
                "properties": {
                    "verdict": a.verdict.as_str(),
                    "count": a.count,
                    "action": a.action.id,
                }
            })
        })
        .collect();
    let mut run = json!({
        "tool": {"driver": {
            "name": "build-monitor",
            "version": env!("CARGO_PKG_VERSION"),
            "informationUri": "https://github.com/",
            "rules": rules
        }},
        "results": results
    });
    if let Some(ws) = workspace {
        run["originalUriBaseIds"] = json!({
            "%SRCROOT%": {"uri": format!("file://{}/", ws.display())}
        });
    }
    json!({"$schema": SCHEMA, "version": "2.1.0", "runs": [run]})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::markdown::tests::net_alert;

    #[test]
    fn results_are_located_at_the_targets_build_file_line() {
        let ws = tempfile_dir();
        std::fs::write(ws.join("WORKSPACE"), "").unwrap();
        std::fs::create_dir_all(ws.join("pkg/sub")).unwrap();
        std::fs::write(
            ws.join("pkg/sub/BUILD"),
            "genrule(\n    name = \"other\",\n)\ngenrule(\n    name = \"t\",\n)\n",
        )
        .unwrap();
        assert_eq!(workspace_root(&ws.join("pkg/sub")), Some(ws.clone()));
        let alerts = [
            net_alert(Some("//pkg/sub:t"), 9),
            net_alert(Some("@bazel"), 10),
            net_alert(None, 11),
        ];
        let s = render(&alerts, Some(&ws));
        assert_eq!(s["version"], "2.1.0");
        assert_eq!(s["$schema"], SCHEMA);
        let run = &s["runs"][0];
        assert_eq!(run["tool"]["driver"]["rules"][1]["id"], "network_egress");
        let r = &run["results"];
        assert_eq!(r[0]["ruleId"], "network_egress");
        assert_eq!(r[0]["ruleIndex"], 1);
        assert_eq!(r[0]["level"], "error");
        let phys = &r[0]["locations"][0]["physicalLocation"];
        assert_eq!(phys["artifactLocation"]["uri"], "pkg/sub/BUILD");
        assert_eq!(phys["region"]["startLine"], 5);
        assert_eq!(
            r[1]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
            "@bazel"
        );
        assert_eq!(
            r[2]["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
            "a1"
        );
        std::fs::remove_dir_all(&ws).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("monitor-sarif-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
