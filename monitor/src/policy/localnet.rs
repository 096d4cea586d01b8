//! Is a loopback destination a listener of the job itself? (The Bazel
//! client talks to its own server over `[::1]:<port>`: not egress.) Answered
//! from `/proc/net/tcp{,6}` (listening sockets and their inodes) and the
//! socket fds of the processes in the job's cgroup tree; only asked for
//! loopback connects of jobs, which are rare. The same for unix sockets
//! (`/proc/net/unix`): a connect to a listener the job opened is internal.
use std::{collections::HashSet, fs, net::IpAddr, path::Path};

pub fn listener_in_cgroup(addr: IpAddr, port: u16, cgroup: &Path) -> bool {
    let loopback = match addr {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    };
    if !loopback || cgroup.as_os_str().is_empty() {
        return false;
    }
    let inodes: HashSet<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .collect();
    holds_any(cgroup, &inodes)
}

/// Whether `path` is a listening unix socket held open by a process in
/// `cgroup`'s tree.
pub fn unix_listener_in_cgroup(path: &[u8], cgroup: &Path) -> bool {
    if path.is_empty() || cgroup.as_os_str().is_empty() {
        return false;
    }
    let text = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let inodes: HashSet<u64> = unix_listening_inodes(&text, path).into_iter().collect();
    holds_any(cgroup, &inodes)
}

/// Inodes of listening unix sockets bound to `path`, from /proc/net/unix
/// ("Num RefCount Protocol Flags Type St Inode Path"; flag 0x10000 is
/// `__SO_ACCEPTCON`, a listening socket).
fn unix_listening_inodes(table: &str, path: &[u8]) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(f.get(3)?, 16).ok()?;
            (flags & 0x10000 != 0 && f.get(7)?.as_bytes() == path)
                .then(|| f.get(6)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether a process in `cgroup`'s tree holds one of the socket `inodes`.
fn holds_any(cgroup: &Path, inodes: &HashSet<u64>) -> bool {
    if inodes.is_empty() {
        return false;
    }
    crate::actions::cgroup::pids_below(cgroup)
        .into_iter()
        .any(|pid| {
            let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            fds.flatten().any(|fd| {
                fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| socket_inode(&l.to_string_lossy()))
                    .is_some_and(|i| inodes.contains(&i))
            })
        })
}

/// Inodes of sockets in state LISTEN (0A) on `port`, from a /proc/net/tcp
/// table ("sl local_address rem_address st … inode …").
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_sockets_from_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0\n\
           1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0 20 4 30 10 -1\n\
           2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 8080), vec![12345]);
        assert_eq!(listening_inodes(table, 22), vec![999]);
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("/dev/null"), None);
        let unix = "Num       RefCount Protocol Flags    Type St Inode Path\n\
           0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/x.sock\n\
           0000000000000000: 00000003 00000000 00000000 0001 03 4343 /run/x.sock\n\
           0000000000000000: 00000002 00000000 00010000 0001 01 4444 @abstract\n";
        assert_eq!(unix_listening_inodes(unix, b"/run/x.sock"), vec![4242]);
        assert_eq!(unix_listening_inodes(unix, b"@abstract"), vec![4444]);
    }

    #[test]
    fn a_listener_of_this_process_is_found_in_its_cgroup() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let v2 = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .to_string();
        let root = crate::actions::cgroup::v2_root()
            .expect("cgroup v2 is mounted on the project machines");
        let dir = root.join(v2.trim_start_matches('/'));
        assert!(listener_in_cgroup("127.0.0.1".parse().unwrap(), port, &dir));
        assert!(
            !listener_in_cgroup("10.0.0.1".parse().unwrap(), port, &dir),
            "not loopback"
        );
    }
}
