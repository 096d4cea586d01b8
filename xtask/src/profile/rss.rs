//! The daemon's resident memory over one build, sampled from `/proc`: when
//! it grows, and which mappings hold it at the peak.

use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

const EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Timeline {
    /// (seconds since start, RSS in KiB).
    pub samples: Vec<(f64, u64)>,
    /// The largest mappings at the highest sample: (name, RSS KiB).
    pub peak_mappings: Vec<(String, u64)>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Timeline>,
}

/// Samples the processes in the cgroups below `parent` (the daemon's, one
/// per monitored build) until [`Sampler::finish`].
pub fn start(parent: PathBuf) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = thread::spawn(move || {
        let started = Instant::now();
        let mut timeline = Timeline::default();
        let mut peak = 0;
        while !flag.load(Ordering::Relaxed) {
            for pid in pids_below(&parent) {
                let Some(rss) = vm_rss_kib(pid) else { continue };
                timeline
                    .samples
                    .push((started.elapsed().as_secs_f64(), rss));
                if rss > peak {
                    peak = rss;
                    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"));
                    timeline.peak_mappings = largest_mappings(&smaps.unwrap_or_default(), 6);
                }
            }
            thread::sleep(EVERY);
        }
        timeline
    });
    Sampler { stop, handle }
}

impl Sampler {
    pub fn finish(self) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

fn pids_below(parent: &std::path::Path) -> Vec<u32> {
    let Ok(children) = fs::read_dir(parent) else {
        return Vec::new();
    };
    children
        .flatten()
        .filter_map(|c| fs::read_to_string(c.path().join("cgroup.procs")).ok())
        .flat_map(|procs| {
            procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `/proc/<pid>/smaps` summed by mapping name (anonymous ones as
/// `[anon]`), the `n` largest by RSS.
pub fn largest_mappings(smaps: &str, n: usize) -> Vec<(String, u64)> {
    let mut by_name: HashMap<String, u64> = HashMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0);
            *by_name.entry(current.clone()).or_default() += kib;
        } else if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [name].
            current = line
                .split_whitespace()
                .nth(5)
                .unwrap_or("[anon]")
                .to_owned();
        }
    }
    let mut list: Vec<(String, u64)> = by_name.into_iter().filter(|(_, k)| *k > 0).collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(n);
    list
}

/// A few lines: RSS at tenths of the run and the mappings at the peak.
pub fn render(timeline: &Timeline) -> String {
    let Some(&(end, _)) = timeline.samples.last() else {
        return "profile-build: no RSS samples (the daemon was not found)\n".to_owned();
    };
    let mut out = String::from("profile-build: daemon RSS over the run (s: MiB):");
    let mut next = 0.0;
    for &(t, kib) in &timeline.samples {
        if t >= next {
            out.push_str(&format!(" {t:.0}: {:.0}", kib as f64 / 1024.0));
            next = t + end / 10.0;
        }
    }
    out.push_str("\nprofile-build: largest mappings at the peak:");
    for (name, kib) in &timeline.peak_mappings {
        out.push_str(&format!(" {name} {:.0} MiB;", *kib as f64 / 1024.0));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_smaps_by_mapping_name() {
        let smaps = "\
55d0-55e0 r-xp 00000000 fe:01 123 /usr/bin/monitor
Size:                 64 kB
Rss:                  40 kB
7f00-7f10 rw-p 00000000 00:00 0
Rss:                 300 kB
7f20-7f30 rw-p 00000000 00:00 0
Rss:                 100 kB
7f40-7f50 rw-s 00000000 00:0e 9 anon_inode:bpf-map
Rss:                 16 kB
7f60-7f70 rw-p 00000000 00:00 0 [heap]
Rss:                  0 kB
";
        assert_eq!(
            largest_mappings(smaps, 10),
            vec![
                ("[anon]".to_owned(), 400),
                ("/usr/bin/monitor".to_owned(), 40),
                ("anon_inode:bpf-map".to_owned(), 16),
            ]
        );
        assert_eq!(largest_mappings(smaps, 1).len(), 1);
    }
}
