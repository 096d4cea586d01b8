//! What `monitor exec` itself cost, for its report: a CI job pays it on
//! every build. The start (loading and verifying the kernel programs, a
//! fixed cost) is told apart from the rest (sandbox reads, events, the
//! report), which grows with the build.
use serde::Serialize;

/// The process's CPU time so far (every thread, user and system) and its
/// peak resident set, from `getrusage(RUSAGE_SELF)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
}

impl Usage {
    pub fn now() -> Usage {
        // SAFETY: a zeroed rusage is a valid out-parameter.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_SELF with a valid out-pointer cannot fail.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Usage {
            cpu_s: seconds(usage.ru_utime) + seconds(usage.ru_stime),
            peak_rss_kib: usage.ru_maxrss.max(0) as u64,
        }
    }
}

/// The report's `monitor` section.
#[derive(Debug, Serialize, PartialEq)]
pub struct SelfCost {
    /// CPU seconds until the programs were loaded, verified and attached,
    /// just before the command starts.
    pub startup_cpu_s: f64,
    /// CPU seconds of the whole run, the start included.
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

impl SelfCost {
    pub fn between(started: Usage, ended: Usage) -> SelfCost {
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        SelfCost {
            startup_cpu_s: round(started.cpu_s),
            cpu_s: round(ended.cpu_s),
            peak_rss_mib: round(ended.peak_rss_kib as f64 / 1024.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_grows_with_work_and_the_section_rounds_to_milliseconds() {
        let before = Usage::now();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let after = Usage::now();
        assert!(after.cpu_s > before.cpu_s, "{before:?} -> {after:?}");
        assert!(after.peak_rss_kib > 0);
        let cost = SelfCost::between(
            Usage {
                cpu_s: 0.123_456,
                peak_rss_kib: 0,
            },
            Usage {
                cpu_s: 2.5,
                peak_rss_kib: 2048,
            },
        );
        assert_eq!(
            cost,
            SelfCost {
                startup_cpu_s: 0.123,
                cpu_s: 2.5,
                peak_rss_mib: 2.0
            }
        );
    }
}
