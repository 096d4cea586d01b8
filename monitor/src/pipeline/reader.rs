//! The ring reader, on a thread of its own: it waits for the kernel's
//! wakeup (or a short timer), reads records in batches, decodes them and
//! hands each batch to the event loop. It never does anything slower: no
//! `/proc`, no file system, no sink. When the event loop falls behind, the
//! hand-over channel fills and the reader waits, so the ring fills and the
//! kernel counts what it cannot deliver (`events_lost_total{reason=
//! "ringbuf_full"}`): losses are counted, never silent.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use tokio::sync::mpsc::Sender;

use crate::{
    events::decode::{self, Event},
    kernel::ring::EventRing,
    output::metrics::Metrics,
};

/// How long the reader sleeps without a wakeup while records come: bounds
/// alert latency while the kernel batches wakeups.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// The longest sleep without a wakeup: after each drain that found nothing
/// the sleep doubles up to this, so an idle node agent wakes 10 times a
/// second instead of 100 (alerts are written on a 100 ms tick anyway).
const IDLE_INTERVAL: Duration = Duration::from_millis(100);
/// Records per hand-over batch.
const BATCH: usize = 4096;

/// The running reader; [`Reader::finish`] drains what is left and joins.
pub struct Reader {
    stop: Arc<AtomicBool>,
    /// Written by [`Reader::finish`] to wake the reader at once: its timer
    /// runs up to `IDLE_INTERVAL`, which every `monitor exec` waited for
    /// after its command had ended (0.05–0.08 s, measured with strace).
    wake: Option<Arc<OwnedFd>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Reader {
    /// Starts reading `ring` into `batches`, draining at least every
    /// `interval` while records come.
    pub fn start(
        ring: EventRing,
        batches: Sender<Vec<Event>>,
        metrics: Arc<Metrics>,
        interval: Duration,
    ) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let wake = wake_fd().map(Arc::new);
        let wakes = wake.clone();
        let thread = thread::Builder::new()
            .name("monitor-ring".into())
            .spawn(move || {
                let wakeups = Wakeups::new(ring.as_raw_fd(), wakes.as_deref());
                read_loop(ring, &batches, &metrics, &flag, interval, &wakeups)
            })
            .expect("spawning the ring reader thread");
        Reader {
            stop,
            wake,
            thread: Some(thread),
        }
    }

    /// Asks the reader to drain the ring to the end and stop (call after
    /// the programs are detached). The batch channel closes when it is done;
    /// keep receiving until then.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(wake) = &self.wake {
            let one = 1u64.to_ne_bytes();
            // SAFETY: an eventfd takes one 8-byte count; a failed write
            // leaves the reader to its timer.
            unsafe { libc::write(wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }

    /// Waits for the reader thread (after the channel closed).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_loop(
    mut ring: EventRing,
    batches: &Sender<Vec<Event>>,
    metrics: &Metrics,
    stop: &AtomicBool,
    interval: Duration,
    wakeups: &Wakeups,
) {
    let mut sleep = interval;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if !stopping {
            wakeups.wait(sleep);
        }
        metrics.fleet.ring_fill_ratio.set(ring.fill_ratio());
        let mut drained = 0;
        loop {
            let mut batch = Vec::with_capacity(BATCH);
            let n = ring.drain(BATCH, |record| match decode::decode(record) {
                Ok(event) => batch.push(event),
                Err(e) => {
                    log::warn!("undecodable event: {e}");
                    metrics
                        .events_lost_total
                        .with_label_values(&["decode_error"])
                        .inc();
                }
            });
            drained += n;
            if !batch.is_empty() && batches.blocking_send(batch).is_err() {
                return; // the event loop is gone
            }
            if n < BATCH {
                break;
            }
        }
        if stopping {
            return;
        }
        sleep = next_sleep(sleep, drained, interval);
    }
}

/// The sleep after a drain of `drained` records: `interval` while records
/// come, doubling (up to `IDLE_INTERVAL`) while none do.
fn next_sleep(last: Duration, drained: usize, interval: Duration) -> Duration {
    if drained > 0 {
        interval
    } else {
        (last * 2).min(IDLE_INTERVAL.max(interval))
    }
}

/// The kernel's wakeups of the ring, edge-triggered: the reader sleeps
/// until the kernel wakes it (the waiting data reached the threshold,
/// seen by a CPU once per 64 KiB it submits, or an urgent event) or the
/// drain interval ends, even while records are waiting. A
/// level-triggered poll would return at once whenever one record is there,
/// turning the reader into a busy loop beside the actions it watches.
struct Wakeups {
    epoll: Option<std::os::fd::OwnedFd>,
}

/// An eventfd for [`Reader::finish`]; `None` (the reader then stops on its
/// timer) when the kernel refuses one.
fn wake_fd() -> Option<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        log::warn!(
            "cannot create an eventfd ({}); the reader stops on its timer",
            std::io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: a fresh fd, owned from here on.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Wakeups {
    /// Waits on the ring (edge-triggered) and on `wake` (level-triggered:
    /// once written, every wait returns at once).
    fn new(ring: std::os::fd::RawFd, wake: Option<&OwnedFd>) -> Wakeups {
        // SAFETY: plain syscall.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            log::warn!(
                "cannot create an epoll instance ({}); draining on a timer",
                std::io::Error::last_os_error()
            );
            return Wakeups { epoll: None };
        }
        // SAFETY: a fresh fd, owned from here on.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: valid fds and event; a failure leaves the timer alone to
        // drive draining (still correct, only later).
        let rc =
            unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, ring, &mut event) };
        if rc != 0 {
            log::warn!(
                "cannot wait for ring wakeups ({}); draining on a timer",
                std::io::Error::last_os_error()
            );
        }
        if let Some(wake) = wake {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 1,
            };
            // SAFETY: valid fds and event; a failure leaves the reader to
            // stop on its timer.
            unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    wake.as_raw_fd(),
                    &mut event,
                )
            };
        }
        Wakeups { epoll: Some(epoll) }
    }

    /// Sleeps until the kernel's wakeup or for `most`.
    fn wait(&self, most: Duration) {
        let Some(epoll) = &self.epoll else {
            thread::sleep(most);
            return;
        };
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        let timeout = i32::try_from(most.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid event slot; EINTR just means drain now.
        unsafe { libc::epoll_wait(epoll.as_raw_fd(), &mut event, 1, timeout) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `finish` wakes a reader asleep on its timer at once (else a command's
    /// end waited up to the idle interval for it).
    #[test]
    fn a_wake_ends_the_wait_at_once() {
        let ring = wake_fd().unwrap(); // a pollable fd that never fires
        let wake = Arc::new(wake_fd().unwrap());
        let wakeups = Wakeups::new(ring.as_raw_fd(), Some(&wake));
        // Control: without a wake, the wait lasts its time.
        let started = std::time::Instant::now();
        wakeups.wait(Duration::from_millis(50));
        assert!(started.elapsed() >= Duration::from_millis(45));
        let mut reader = Reader {
            stop: Arc::new(AtomicBool::new(false)),
            wake: Some(wake),
            thread: None,
        };
        reader.finish();
        let started = std::time::Instant::now();
        wakeups.wait(Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_sleep_doubles_while_idle_and_comes_back_with_records() {
        let ms = Duration::from_millis;
        assert_eq!(next_sleep(ms(10), 0, ms(10)), ms(20));
        assert_eq!(next_sleep(ms(80), 0, ms(10)), ms(100));
        assert_eq!(next_sleep(ms(100), 0, ms(10)), ms(100));
        assert_eq!(next_sleep(ms(100), 3, ms(10)), ms(10));
        // An interval above the idle one stays as it is.
        assert_eq!(next_sleep(ms(200), 0, ms(200)), ms(200));
    }
}
