//! One report per connect: the socket hook reports a connect before it
//! happens (with the kernel's verdict), the syscall hook after it returns
//! (with its result). A hook connect waits here, per thread, for the
//! result of the same call; it goes on without one when none comes in
//! time (io_uring and TCP fast open connects never get one, and a connect
//! may block for minutes).
use std::time::{Duration, Instant};

use crate::{
    events::decode::{Connect, Event},
    hashing::HashMap,
};

/// How long a hook connect waits for its syscall result.
pub const RESULT_WAIT: Duration = Duration::from_millis(300);

#[derive(Default)]
pub struct ResultJoin {
    /// Thread id → the hook connect waiting for its result.
    waiting: HashMap<u32, (Instant, Connect)>,
    /// Events released early (a newer connect of the same thread), routed
    /// with the next `expired` call.
    released: Vec<Event>,
}

impl ResultJoin {
    /// Takes an event off the ring. Returns it when it goes on at once;
    /// `None` when it waits here or was merged into a waiting one.
    pub fn offer(&mut self, event: Event, now: Instant) -> Option<Event> {
        match event {
            Event::Connect(c) if c.kernel_verdict.is_some() && !c.send => {
                let tid = c.origin.tid;
                if let Some((_, older)) = self.waiting.insert(tid, (now, c)) {
                    self.released.push(Event::Connect(older));
                }
                None
            }
            Event::ConnectResult(r) => {
                let tid = r.origin.tid;
                match self.waiting.remove(&tid) {
                    Some((_, mut c)) if c.addr == r.addr && c.port == r.port => {
                        c.result = Some(r.result);
                        Some(Event::Connect(c))
                    }
                    Some((_, c)) => {
                        // Not the same call: the waiting one goes on as is.
                        self.released.push(Event::Connect(c));
                        None
                    }
                    // Its connect already went on without a result.
                    None => None,
                }
            }
            Event::Exit(origin) => {
                // Its connects go on before the end of the process does.
                let pid = origin.pid;
                let ended: Vec<u32> = self
                    .waiting
                    .iter()
                    .filter(|(_, (_, c))| c.origin.pid == pid)
                    .map(|(tid, _)| *tid)
                    .collect();
                for tid in ended {
                    if let Some((_, c)) = self.waiting.remove(&tid) {
                        self.released.push(Event::Connect(c));
                    }
                }
                Some(Event::Exit(origin))
            }
            other => Some(other),
        }
    }

    /// Events to route before the one `offer` just returned.
    pub fn take_released(&mut self) -> Option<Vec<Event>> {
        (!self.released.is_empty()).then(|| std::mem::take(&mut self.released))
    }

    /// Connects that waited long enough, and any released early.
    pub fn expired(&mut self, now: Instant) -> Vec<Event> {
        let mut out = std::mem::take(&mut self.released);
        self.waiting.retain(|_, (since, c)| {
            if now.duration_since(*since) < RESULT_WAIT {
                return true;
            }
            out.push(Event::Connect(c.clone()));
            false
        });
        out
    }

    /// Everything still waiting (at shutdown).
    pub fn take_all(&mut self) -> Vec<Event> {
        let mut out = std::mem::take(&mut self.released);
        out.extend(self.waiting.drain().map(|(_, (_, c))| Event::Connect(c)));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::SystemTime};

    use super::*;
    use crate::events::decode::{ConnectResult, Origin};

    fn origin(tid: u32) -> Origin {
        Origin {
            time: SystemTime::now(),
            ktime_ns: 0,
            action_cgroup_id: 1,
            child_cgroup_id: 0,
            grandchild_cgroup_id: 0,
            launcher: 0,
            pid: tid,
            tid,
            ppid: 1,
            scope: 0,
            comm: [0; 16],
        }
    }

    fn hook(tid: u32, port: u16) -> Event {
        Event::Connect(Connect {
            origin: origin(tid),
            addr: IpAddr::from([127, 0, 0, 1]),
            port,
            sock_type: 1,
            protocol: 6,
            send: false,
            result: None,
            netns: 1,
            kernel_verdict: Some(0),
            packet_socket: false,
        })
    }

    fn result(tid: u32, port: u16, r: i64) -> Event {
        Event::ConnectResult(ConnectResult {
            origin: origin(tid),
            addr: IpAddr::from([127, 0, 0, 1]),
            port,
            result: r,
        })
    }

    fn connect(e: &Event) -> &Connect {
        match e {
            Event::Connect(c) => c,
            _ => panic!("not a connect"),
        }
    }

    #[test]
    fn a_hook_connect_gets_the_result_of_the_same_call() {
        let mut j = ResultJoin::default();
        let t = Instant::now();
        assert!(j.offer(hook(7, 80), t).is_none());
        let merged = j.offer(result(7, 80, -111), t).expect("merged");
        assert_eq!(connect(&merged).result, Some(-111));
        assert!(j.take_all().is_empty(), "reported once");
    }

    #[test]
    fn without_a_result_it_goes_on_after_the_wait_and_a_late_result_is_dropped() {
        let mut j = ResultJoin::default();
        let t = Instant::now();
        assert!(j.offer(hook(7, 80), t).is_none());
        assert!(j.expired(t).is_empty());
        let out = j.expired(t + RESULT_WAIT);
        assert_eq!(out.len(), 1);
        assert_eq!(connect(&out[0]).result, None);
        assert!(j.offer(result(7, 80, 0), t + RESULT_WAIT).is_none());
        assert!(j.take_all().is_empty());
    }

    #[test]
    fn a_newer_connect_of_the_thread_releases_the_older_and_sends_pass() {
        let mut j = ResultJoin::default();
        let t = Instant::now();
        j.offer(hook(7, 80), t);
        j.offer(hook(7, 81), t);
        let out = j.expired(t);
        assert_eq!(out.len(), 1);
        assert_eq!(connect(&out[0]).port, 80);
        let Event::Connect(mut send) = hook(8, 53) else {
            unreachable!()
        };
        send.send = true;
        assert!(j.offer(Event::Connect(send), t).is_some(), "sends pass");
        j.offer(hook(9, 82), t);
        assert!(j.offer(Event::Exit(origin(9)), t).is_some());
        let early = j.take_released().expect("released at exit");
        assert_eq!(connect(&early[0]).port, 82);
        assert_eq!(j.take_all().len(), 1);
    }
}
