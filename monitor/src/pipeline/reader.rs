//! The ring reader, on a thread of its own: it waits for the kernel's
//! wakeup (or a short timer), reads records in batches, decodes them and
//! hands each batch to the event loop. It never does anything slower: no
//! `/proc`, no file system, no sink. When the event loop falls behind, the
//! hand-over channel fills and the reader waits, so the ring fills and the
//! kernel counts what it cannot deliver (`events_lost_total{reason=
//! "ringbuf_full"}`): losses are counted, never silent.
use std::{
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use tokio::sync::mpsc::Sender;

use crate::{
    events::decode::{self, Event},
    kernel::ring::EventRing,
    output::metrics::Metrics,
};

/// How long the reader sleeps without a wakeup: bounds alert latency while
/// the kernel batches wakeups.
const DRAIN_INTERVAL_MS: i32 = 10;
/// Records per hand-over batch.
const BATCH: usize = 4096;

/// The running reader; [`Reader::finish`] drains what is left and joins.
pub struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Reader {
    /// Starts reading `ring` into `batches`.
    pub fn start(ring: EventRing, batches: Sender<Vec<Event>>, metrics: Arc<Metrics>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("monitor-ring".into())
            .spawn(move || read_loop(ring, &batches, &metrics, &flag))
            .expect("spawning the ring reader thread");
        Reader {
            stop,
            thread: Some(thread),
        }
    }

    /// Asks the reader to drain the ring to the end and stop (call after
    /// the programs are detached). The batch channel closes when it is done;
    /// keep receiving until then.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Release);
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
) {
    let wakeups = Wakeups::new(&ring);
    loop {
        let stopping = stop.load(Ordering::Acquire);
        if !stopping {
            wakeups.wait();
        }
        metrics.fleet.ring_fill_ratio.set(ring.fill_ratio());
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
    }
}

/// The kernel's wakeups of the ring, edge-triggered: the reader sleeps
/// until the kernel wakes it (a batch crossed the threshold, or an urgent
/// event) or the drain interval ends, even while records are waiting. A
/// level-triggered poll would return at once whenever one record is there,
/// turning the reader into a busy loop beside the actions it watches.
struct Wakeups {
    epoll: Option<std::os::fd::OwnedFd>,
}

impl Wakeups {
    fn new(ring: &EventRing) -> Wakeups {
        use std::os::fd::FromRawFd as _;
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
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring.as_raw_fd(),
                &mut event,
            )
        };
        if rc != 0 {
            log::warn!(
                "cannot wait for ring wakeups ({}); draining on a timer",
                std::io::Error::last_os_error()
            );
        }
        Wakeups { epoll: Some(epoll) }
    }

    fn wait(&self) {
        let Some(epoll) = &self.epoll else {
            thread::sleep(std::time::Duration::from_millis(DRAIN_INTERVAL_MS as u64));
            return;
        };
        let mut event = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one valid event slot; EINTR just means drain now.
        unsafe { libc::epoll_wait(epoll.as_raw_fd(), &mut event, 1, DRAIN_INTERVAL_MS) };
    }
}
