//! Waiting for a condition with a deadline instead of a fixed sleep.
use std::{
    thread,
    time::{Duration, Instant},
};

/// How often conditions are polled: short against the monitor's few-ms
/// reader and 300 ms fold windows, long enough not to busy the CPU.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `condition` until it yields a value or `timeout` has passed (it is
/// always tried at least once, and once more at the deadline).
pub fn poll_until<T>(timeout: Duration, condition: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(POLL, timeout, condition)
}

/// [`poll_until`], trying every `every`: for a wait someone is waiting on
/// (a command's exit), where 20 ms steps would add their half on average.
pub fn poll_every<T>(
    every: Duration,
    timeout: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(every.min(deadline - now));
    }
}

/// Polls `condition` until it holds or `timeout` has passed; whether it
/// held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    poll_until(timeout, || condition().then_some(())).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut calls = 0;
        let start = Instant::now();
        assert_eq!(
            poll_until(Duration::from_secs(10), || {
                calls += 1;
                (calls == 3).then_some(calls)
            }),
            Some(3)
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn gives_up_at_the_deadline() {
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(100), || false));
        assert!(start.elapsed() >= Duration::from_millis(100));
    }
}
