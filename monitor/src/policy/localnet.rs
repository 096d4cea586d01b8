//! Is a loopback destination a listener of the job itself? (The Bazel
//! client talks to its own server over `[::1]:<port>`: not egress.) Answered
//! from `/proc/net/tcp{,6}` (listening sockets and their inodes) and the
//! socket fds of the processes in the job's cgroup tree; only asked for
//! loopback connects of jobs, which are rare. The same for unix sockets
//! (`/proc/net/unix`): a connect to a listener the job opened is internal.
use std::{
    collections::HashSet,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

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
        .flat_map(|text| listening_inodes(&text, addr, port))
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

/// Inodes of sockets in state LISTEN (0A) that accept `addr:port`, from a
/// /proc/net/tcp{,6} table ("sl local_address rem_address st … inode …"):
/// bound to that address or to a wildcard. The port alone is not enough: an
/// action could bind a host service's port on another loopback address.
fn listening_inodes(table: &str, addr: IpAddr, port: u16) -> Vec<u64> {
    let dest = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, local_port) = f.get(1)?.split_once(':')?;
            let local = proc_net_address(local)?;
            let accepts = local == dest
                || local == Ipv6Addr::UNSPECIFIED
                || local == Ipv4Addr::UNSPECIFIED.to_ipv6_mapped()
                    && dest.to_ipv4_mapped().is_some();
            (accepts && u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// An address as /proc/net/tcp{,6} prints it (each 32-bit word as the
/// host reads it: bytes in network order on a little-endian machine),
/// IPv4 as `::ffff:a.b.c.d`.
fn proc_net_address(hex: &str) -> Option<Ipv6Addr> {
    let word = |i: usize| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok();
    match hex.len() {
        8 => Some(Ipv4Addr::from(word(0)?.to_le_bytes()).to_ipv6_mapped()),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_le_bytes());
            }
            Some(Ipv6Addr::from(bytes))
        }
        _ => None,
    }
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
        let lo = "127.0.0.1".parse().unwrap();
        assert_eq!(listening_inodes(table, lo, 8080), vec![12345]);
        assert_eq!(listening_inodes(table, lo, 22), vec![999], "wildcard");
        let other = "127.0.0.2".parse().unwrap();
        assert!(
            listening_inodes(table, other, 8080).is_empty(),
            "other address"
        );
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0 100 0 0 10 0\n\
           1: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 666 1 0 100 0 0 10 0\n";
        assert_eq!(
            listening_inodes(tcp6, "::1".parse().unwrap(), 8080),
            vec![555]
        );
        assert!(
            listening_inodes(tcp6, lo, 8080).is_empty(),
            "::1 is not 127.0.0.1"
        );
        assert_eq!(
            listening_inodes(tcp6, lo, 22),
            vec![666],
            "dual-stack wildcard"
        );
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
