//! Folding repeats and capping storms.
//!
//! Identical violations (same action, kind and target) within one window
//! become one alert with a `count`. Past an action's alert budget (new
//! alerts per budget window), further violations of that action are not
//! written one by one but summed per kind into one summary alert per batch,
//! with the common directory (or address block) of their targets. Every
//! event still lands in exactly one alert's `count`, so counts stay exact,
//! and what is kept per action is bounded: at most `budget` alerts and one
//! summary per kind.
use std::{
    hash::BuildHasher as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    hashing::HashMap,
    output::alert::{Alert, AlertKind, SummaryInfo},
    policy::judge::Target,
};

/// New alerts an action may raise per window before it is summarised.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// 0: no budget (every distinct violation is an alert).
    pub per_action: u32,
    pub window: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            per_action: 0,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
pub struct Folder {
    /// By action id (unique; spawns of one job share its cgroup id) and target.
    index: HashMap<(String, Target), usize>,
    pending: Vec<Alert>,
    budget: Budget,
    /// Alerts each action raised in its current budget window.
    spent: HashMap<String, Spent>,
    /// Summaries of this batch, by action and kind, in first-seen order.
    summaries: Vec<Pending>,
    summary_index: HashMap<(String, AlertKind), usize>,
}

struct Spent {
    since: Instant,
    alerts: u32,
}

/// A summary being built: the first suppressed alert carries the counts.
struct Pending {
    alert: Alert,
    scope: Scope,
    /// Targets already counted as distinct, up to a bound.
    distinct: std::collections::HashSet<u64>,
    distinct_overflow: u64,
}

/// At most this many target hashes are kept per summary to count distinct
/// targets; past it every new event counts as distinct (an upper bound).
const DISTINCT_TRACKED: usize = 4096;

/// The common part of the suppressed targets.
enum Scope {
    /// Common directory, without trailing `/` (`""` is the root).
    Dir(Vec<u8>),
    /// Common address block.
    Block(IpAddr, u8),
    /// Nothing in common (IPv4 and IPv6 mixed).
    Any,
}

impl Folder {
    pub fn with_budget(budget: Budget) -> Folder {
        Folder {
            budget,
            ..Default::default()
        }
    }

    pub fn add(&mut self, target: Target, alert: Alert) {
        self.add_at(target, alert, Instant::now());
    }

    pub fn add_at(&mut self, target: Target, alert: Alert, now: Instant) {
        let key = (alert.action.id.clone(), target);
        if let Some(&i) = self.index.get(&key) {
            self.pending[i].count += alert.count;
            return;
        }
        if self.within_budget(&key.0, now) {
            self.index.insert(key, self.pending.len());
            self.pending.push(alert);
        } else {
            self.suppress(key.1, alert);
        }
    }

    /// Spends one alert of the action's budget if any is left.
    fn within_budget(&mut self, action: &str, now: Instant) -> bool {
        if self.budget.per_action == 0 {
            return true;
        }
        let spent = match self.spent.get_mut(action) {
            Some(s) => s,
            None => self.spent.entry(action.to_string()).or_insert(Spent {
                since: now,
                alerts: 0,
            }),
        };
        if now.duration_since(spent.since) >= self.budget.window {
            *spent = Spent {
                since: now,
                alerts: 0,
            };
        }
        if spent.alerts < self.budget.per_action {
            spent.alerts += 1;
            true
        } else {
            false
        }
    }

    fn suppress(&mut self, target: Target, alert: Alert) {
        let key = (alert.action.id.clone(), alert.kind);
        let hash = FIXED.hash_one(&target);
        let Some(&i) = self.summary_index.get(&key) else {
            self.summary_index.insert(key, self.summaries.len());
            let scope = Scope::of(&target);
            let mut distinct = std::collections::HashSet::new();
            distinct.insert(hash);
            self.summaries.push(Pending {
                alert,
                scope,
                distinct,
                distinct_overflow: 0,
            });
            return;
        };
        let p = &mut self.summaries[i];
        p.alert.count += alert.count;
        p.scope.widen(&target);
        if p.distinct.len() < DISTINCT_TRACKED {
            p.distinct.insert(hash);
        } else if !p.distinct.contains(&hash) {
            p.distinct_overflow += 1;
        }
    }

    /// An alert that is never folded nor counted against the budget (one
    /// per action, e.g. `cache_risk`).
    pub fn push(&mut self, alert: Alert) {
        self.pending.push(alert);
    }

    /// The alerts waiting in this window (e.g. to add labels learnt late).
    pub fn pending_mut(&mut self) -> impl Iterator<Item = &mut Alert> {
        self.pending
            .iter_mut()
            .chain(self.summaries.iter_mut().map(|p| &mut p.alert))
    }

    /// The folded alerts of the window in first-seen order, then the
    /// summaries of what was suppressed.
    pub fn take(&mut self) -> Vec<Alert> {
        self.index.clear();
        self.summary_index.clear();
        let now = Instant::now();
        let window = self.budget.window;
        self.spent
            .retain(|_, s| now.duration_since(s.since) < window);
        let mut out = std::mem::take(&mut self.pending);
        for p in self.summaries.drain(..) {
            let mut alert = p.alert;
            alert.summary = Some(SummaryInfo {
                suppressed: alert.count,
                distinct: p.distinct.len() as u64 + p.distinct_overflow,
                prefix: p.scope.render(),
                budget: self.budget.per_action,
                window_s: window.as_secs(),
            });
            out.push(alert);
        }
        out
    }
}

/// One hasher state for the whole process, so equal targets hash equal.
static FIXED: std::sync::LazyLock<std::collections::hash_map::RandomState> =
    std::sync::LazyLock::new(std::collections::hash_map::RandomState::new);

impl Scope {
    fn of(target: &Target) -> Scope {
        match target {
            Target::File(path) | Target::Write(path) | Target::Exec(path) | Target::Unix(path) => {
                Scope::Dir(parent(path).to_vec())
            }
            Target::Net(addr, ..) => Scope::Block(*addr, max_bits(*addr)),
            Target::Isolation | Target::Fetch(_) => Scope::Any,
        }
    }

    fn widen(&mut self, target: &Target) {
        match (&mut *self, target) {
            (
                Scope::Dir(dir),
                Target::File(path) | Target::Write(path) | Target::Exec(path) | Target::Unix(path),
            ) => {
                while !is_below(path, dir) {
                    let up = parent(dir).len();
                    dir.truncate(up);
                }
            }
            (Scope::Block(addr, bits), Target::Net(other, ..)) => {
                match common_bits(*addr, *other) {
                    Some(common) => *bits = (*bits).min(common),
                    None => *self = Scope::Any,
                }
            }
            _ => {}
        }
    }

    fn render(&self) -> String {
        match self {
            Scope::Dir(dir) => {
                format!("{}/**", crate::events::paths::escape_for_display(dir))
            }
            Scope::Block(addr, bits) => format!("{}/{bits}", mask(*addr, *bits)),
            Scope::Any => "*".into(),
        }
    }
}

/// `/a/b` → `/a`, `/a` → `` (the root), `` → ``.
fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => &path[..0],
    }
}

/// Whether `path` lies below directory `dir` (`""` is the root).
fn is_below(path: &[u8], dir: &[u8]) -> bool {
    path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

fn max_bits(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn bits_of(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Leading bits two addresses of one family share; `None` across families.
fn common_bits(a: IpAddr, b: IpAddr) -> Option<u8> {
    if a.is_ipv4() != b.is_ipv4() {
        return None;
    }
    let same = (bits_of(a) ^ bits_of(b)).leading_zeros() as u8;
    Some(same.min(max_bits(a)))
}

fn mask(addr: IpAddr, bits: u8) -> IpAddr {
    let keep = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(bits))
    };
    let masked = bits_of(addr) & keep;
    match addr {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from((masked >> 96) as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(masked)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::output::alert::{ActionInfo, AlertKind, FileInfo, ProcessInfo, Verdict};

    fn alert(action: u64, path: &[u8]) -> Alert {
        Alert {
            time: SystemTime::now(),
            kind: AlertKind::UndeclaredFile,
            action: ActionInfo {
                id: format!("a{action}"),
                cgroup: "/cg".into(),
                // Spawns of one job share the job's cgroup id.
                cgroup_id: 7,
                label: None,
                mnemonic: None,
                worker: None,
            },
            process: ProcessInfo {
                pid: 1,
                ppid: 0,
                comm: "cat".into(),
                exe: None,
            },
            file: Some(FileInfo {
                path: path.to_vec(),
                op: "open",
                flags: 0,
                result: 3,
                caveat: None,
                requested: None,
                dev: None,
                ino: None,
                note: None,
            }),
            net: None,
            verdict: Verdict::Observed,
            count: 1,
            cache_risk: None,
            fetch: None,
            summary: None,
        }
    }

    #[test]
    fn an_exec_is_not_folded_into_opens_of_the_same_file() {
        let mut f = Folder::default();
        f.add(Target::File(b"/x".to_vec()), alert(1, b"/x"));
        f.add(Target::Exec(b"/x".to_vec()), alert(1, b"/x"));
        f.add(Target::File(b"/x".to_vec()), alert(1, b"/x"));
        let counts: Vec<u64> = f.take().iter().map(|a| a.count).collect();
        assert_eq!(counts, vec![2, 1]);
    }

    #[test]
    fn repeats_of_one_action_fold_and_others_do_not() {
        let mut f = Folder::default();
        for _ in 0..3 {
            f.add(Target::File(b"/x".to_vec()), alert(1, b"/x"));
        }
        f.add(Target::File(b"/y".to_vec()), alert(1, b"/y"));
        f.add(Target::File(b"/x".to_vec()), alert(2, b"/x"));
        let out = f.take();
        let counts: Vec<(&str, u64)> = out
            .iter()
            .map(|a| (a.action.id.as_str(), a.count))
            .collect();
        assert_eq!(counts, vec![("a1", 3), ("a1", 1), ("a2", 1)]);
        assert!(f.take().is_empty());
    }

    fn budget(n: u32) -> Budget {
        Budget {
            per_action: n,
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn past_the_budget_violations_are_summarised_with_exact_counts() {
        let mut f = Folder::with_budget(budget(3));
        let t0 = Instant::now();
        let mut events = 0;
        for i in 0..1000 {
            let path = format!("/nonexistent/d{}/f{i}", i % 7);
            f.add_at(
                Target::File(path.clone().into_bytes()),
                alert(1, path.as_bytes()),
                t0,
            );
            events += 1;
        }
        // A repeat of an alerted target folds into its alert, budget or not.
        let first = b"/nonexistent/d0/f0";
        f.add_at(Target::File(first.to_vec()), alert(1, first), t0);
        events += 1;
        // Another action has a budget of its own.
        f.add_at(Target::File(b"/x".to_vec()), alert(2, b"/x"), t0);
        events += 1;
        let out = f.take();
        let plain: Vec<_> = out.iter().filter(|a| a.summary.is_none()).collect();
        let summaries: Vec<_> = out.iter().filter(|a| a.summary.is_some()).collect();
        assert_eq!(plain.len(), 4, "3 for a1, 1 for a2");
        assert_eq!(plain[0].count, 2);
        assert_eq!(summaries.len(), 1);
        let s = summaries[0].summary.as_ref().unwrap();
        assert_eq!(s.suppressed, 997);
        assert_eq!(s.distinct, 997);
        assert_eq!(s.prefix, "/nonexistent/**");
        assert_eq!(summaries[0].count, 997);
        assert!(
            summaries[0]
                .message()
                .contains("997 more undeclared opens under /nonexistent/**")
        );
        assert_eq!(out.iter().map(|a| a.count).sum::<u64>(), events);
        // Still within the window: the next batch is summarised at once.
        f.add_at(
            Target::File(b"/nonexistent/new".to_vec()),
            alert(1, b"/nonexistent/new"),
            t0,
        );
        let next = f.take();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].summary.as_ref().unwrap().prefix, "/nonexistent/**");
        // A new window restores the budget.
        let later = t0 + Duration::from_secs(61);
        f.add_at(Target::File(b"/y".to_vec()), alert(1, b"/y"), later);
        let again = f.take();
        assert_eq!(again.len(), 1);
        assert!(again[0].summary.is_none());
    }

    #[test]
    fn common_prefixes_of_paths_and_addresses() {
        let mut dir = Scope::of(&Target::File(b"/a/b/c/d".to_vec()));
        dir.widen(&Target::File(b"/a/b/cx".to_vec()));
        assert_eq!(dir.render(), "/a/b/**");
        dir.widen(&Target::File(b"/z".to_vec()));
        assert_eq!(dir.render(), "/**");
        let net = |a: &str| Target::Net(a.parse().unwrap(), 80, "tcp");
        let mut block = Scope::of(&net("10.1.2.3"));
        assert_eq!(block.render(), "10.1.2.3/32");
        block.widen(&net("10.200.0.1"));
        assert_eq!(block.render(), "10.0.0.0/8");
        block.widen(&net("::1"));
        assert_eq!(block.render(), "*");
    }
}
