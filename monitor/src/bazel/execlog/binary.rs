//! The binary execution log (`--execution_log_binary_file`): the same
//! `tools.protos.SpawnExec` messages as the JSON log, each prefixed by its
//! length (protobuf's delimited stream). `monitor exec` asks for this one:
//! Bazel 4.2.3 renders the JSON log at the end of the build, which took
//! ~1.4 s of wall time more than the binary one on the bench's 300-action
//! workspace (measured), and the binary log is half the size. Only the
//! fields joining and labelling need are declared; prost skips the others.
use prost::Message as _;

use super::{ExecLog, ExecLogError, RawFile, RawSpawnExec, SpawnEntry};

/// `SpawnExec` (src/main/protobuf/spawn.proto), the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct SpawnExecProto {
    #[prost(string, repeated, tag = "1")]
    pub command_args: Vec<String>,
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<FileProto>,
    #[prost(string, repeated, tag = "5")]
    pub listed_outputs: Vec<String>,
    /// Bazel 4.x only (the tag is reserved since).
    #[prost(string, tag = "9")]
    pub progress_message: String,
    #[prost(string, tag = "10")]
    pub mnemonic: String,
    #[prost(message, repeated, tag = "11")]
    pub actual_outputs: Vec<FileProto>,
    #[prost(string, tag = "12")]
    pub runner: String,
    /// `remote_cache_hit` in Bazel 4.x, `cache_hit` since.
    #[prost(bool, tag = "13")]
    pub cache_hit: bool,
    /// Bazel 7+.
    #[prost(string, tag = "18")]
    pub target_label: String,
}

/// `File`: only its path.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct FileProto {
    #[prost(string, tag = "1")]
    pub path: String,
}

impl From<SpawnExecProto> for RawSpawnExec {
    fn from(p: SpawnExecProto) -> RawSpawnExec {
        let files = |files: Vec<FileProto>| {
            Some(
                files
                    .into_iter()
                    .map(|f| RawFile { path: Some(f.path) })
                    .collect(),
            )
        };
        RawSpawnExec {
            command_args: Some(p.command_args),
            inputs: files(p.inputs),
            listed_outputs: Some(p.listed_outputs),
            actual_outputs: files(p.actual_outputs),
            mnemonic: Some(p.mnemonic),
            progress_message: Some(p.progress_message),
            target_label: Some(p.target_label),
            runner: Some(p.runner),
            remote_cache_hit: Some(p.cache_hit),
            cache_hit: None,
        }
    }
}

/// Parses a delimited stream of `SpawnExec`. A malformed or truncated
/// entry ends parsing: the entries before it are returned with the error.
pub(super) fn parse(bytes: &[u8]) -> (ExecLog, Option<ExecLogError>) {
    let mut entries = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let offset = bytes.len() - rest.len();
        match SpawnExecProto::decode_length_delimited(&mut rest) {
            Ok(spawn) => entries.push(SpawnEntry::from(RawSpawnExec::from(spawn))),
            Err(e) => {
                let message = format!("entry {}: {e}", entries.len() + 1);
                log::debug!("execution log: stopped at byte {offset}: {message}");
                return (
                    ExecLog::new(entries),
                    Some(ExecLogError::Malformed { offset, message }),
                );
            }
        }
    }
    (ExecLog::new(entries), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bazel::execlog::LogFormat;

    fn spawn(args: &[&str], outputs: &[&str], progress: &str) -> SpawnExecProto {
        SpawnExecProto {
            command_args: args.iter().map(|s| s.to_string()).collect(),
            inputs: vec![FileProto {
                path: "src/in.txt".into(),
            }],
            listed_outputs: outputs.iter().map(|s| s.to_string()).collect(),
            progress_message: progress.into(),
            mnemonic: "Genrule".into(),
            actual_outputs: vec![FileProto {
                path: "bazel-out/k8-fastbuild/bin/extra.txt".into(),
            }],
            runner: "linux-sandbox".into(),
            cache_hit: false,
            target_label: String::new(),
        }
    }

    fn stream(spawns: &[SpawnExecProto]) -> Vec<u8> {
        spawns
            .iter()
            .flat_map(|s| s.encode_length_delimited_to_vec())
            .collect()
    }

    #[test]
    fn reads_a_delimited_stream_like_the_json_log() {
        let bytes = stream(&[
            spawn(
                &["/bin/bash", "-c", "gen"],
                &["bazel-out/k8-fastbuild/bin/a.txt"],
                "Executing genrule //pkg:a",
            ),
            spawn(&["cc"], &[], ""),
        ]);
        let (log, err) = parse(&bytes);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(log.entries.len(), 2);
        let first = &log.entries[0];
        assert_eq!(first.label.as_deref(), Some("//pkg:a"));
        assert_eq!(first.mnemonic.as_deref(), Some("Genrule"));
        assert_eq!(first.command_args, ["/bin/bash", "-c", "gen"]);
        assert_eq!(first.inputs, ["src/in.txt"]);
        assert_eq!(
            first.outputs,
            [
                "bazel-out/k8-fastbuild/bin/a.txt",
                "bazel-out/k8-fastbuild/bin/extra.txt"
            ]
        );
        assert!(first.ran_sandboxed());
        assert_eq!(log.entries[1].label, None);
        assert_eq!(log.entries[1].progress_message, None);
    }

    #[test]
    fn a_cache_hit_did_not_run() {
        let mut hit = spawn(&["cc"], &[], "");
        hit.cache_hit = true;
        let (log, _) = parse(&stream(&[hit]));
        assert!(!log.entries[0].ran_sandboxed());
    }

    #[test]
    fn a_truncated_or_garbled_log_keeps_the_entries_before_it() {
        let whole = stream(&[spawn(&["a"], &[], ""), spawn(&["b"], &[], "")]);
        let first_len = spawn(&["a"], &[], "")
            .encode_length_delimited_to_vec()
            .len();
        let (log, err) = parse(&whole[..whole.len() - 3]);
        assert_eq!(log.entries.len(), 1);
        match err {
            Some(ExecLogError::Malformed { offset, message }) => {
                assert_eq!(offset, first_len);
                assert!(message.starts_with("entry 2"), "{message}");
            }
            other => panic!("expected a malformed entry, got {other:?}"),
        }
        let mut garbled = whole.clone();
        garbled.extend_from_slice(&[0x05, 0xff, 0xff, 0xff, 0xff, 0xff]);
        let (log, err) = parse(&garbled);
        assert_eq!(log.entries.len(), 2);
        assert!(
            matches!(err, Some(ExecLogError::Malformed { offset, .. }) if offset == whole.len())
        );
    }

    #[test]
    fn load_reads_the_format_it_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("execution_log.bin");
        std::fs::write(&path, stream(&[spawn(&["x"], &[], "")])).unwrap();
        let (log, err) = ExecLog::load(&path, LogFormat::Binary).unwrap();
        assert!(err.is_none());
        assert_eq!(log.entries[0].command_args, ["x"]);
        // The same bytes are no JSON log: an error, not a guess.
        let (json, err) = ExecLog::load(&path, LogFormat::Json).unwrap();
        assert!(json.entries.is_empty());
        assert!(err.is_some());
    }
}
