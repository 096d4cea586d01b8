//! How a `monitor exec` run ends: the exit code, with its documented
//! precedence — the command's own failure, then violations, then
//! incomplete monitoring (`output::completeness`), then success.

/// What `monitor exec` exits with, given how the run ended.
#[derive(Debug, Clone, Copy)]
pub struct ExitPolicy {
    /// Exit code for violations (`--violation-exit-code`, default 1).
    pub violation_code: u8,
    /// `--allow-incomplete`: incomplete monitoring does not fail the job.
    pub allow_incomplete: bool,
}

impl Default for ExitPolicy {
    fn default() -> Self {
        ExitPolicy {
            violation_code: 1,
            allow_incomplete: false,
        }
    }
}

/// The command's own non-zero exit passes through (a failed build is a
/// failed build); otherwise violations; otherwise incomplete monitoring
/// (exit 1) unless allowed; otherwise 0.
pub fn exit_code(command: u8, violations: u64, gaps: &[String], policy: ExitPolicy) -> u8 {
    if command != 0 {
        command
    } else if violations > 0 {
        policy.violation_code
    } else if !gaps.is_empty() && !policy.allow_incomplete {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_command_then_violations_then_incomplete() {
        let p = ExitPolicy::default();
        let gap = vec!["3 event(s) lost".to_string()];
        assert_eq!(exit_code(7, 2, &gap, p), 7, "the command's failure first");
        assert_eq!(exit_code(0, 2, &gap, p), 1, "then violations");
        let p9 = ExitPolicy {
            violation_code: 9,
            ..p
        };
        assert_eq!(exit_code(0, 2, &[], p9), 9);
        assert_eq!(exit_code(0, 0, &gap, p), 1, "then incomplete");
        let allow = ExitPolicy {
            allow_incomplete: true,
            ..p
        };
        assert_eq!(exit_code(0, 0, &gap, allow), 0);
        assert_eq!(exit_code(0, 0, &[], p), 0);
    }
}
