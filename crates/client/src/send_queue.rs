//! What the kernel still has to send on this process's connections to one service:
//! the evidence that an upload waiting on a full socket is moving, not stalled.
//!
//! An upload's stall clock moves when the HTTP stack takes a piece of its body
//! (stall.rs). Uploads that share a slow link wait on full sockets for long stretches:
//! the kernel buffers of a few dozen connections hold more than a stall timeout's
//! worth of the link, and until they drain no piece of any body to that service is
//! taken, although the link never stops. Each connection's send queue (bytes written
//! and not yet acknowledged by the peer) shrinks whenever the peer takes bytes, so a
//! queue that changed between two looks means the service is moving; queues that
//! stayed the same while nothing was taken mean it is not.
//!
//! The queues are read from `/proc/self/net/tcp` and `tcp6` (Linux), limited to this
//! process's own sockets (`/proc/self/fd`) whose peer is the service's address. Where
//! they cannot be read (another OS, a proxy in between) nothing is seen, and the
//! HTTP-level clock alone decides, as before.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What a look at the send queues found, against the previous look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A queue changed: bytes were acknowledged (or written) since the last look.
    Moved,
    /// No queue changed in at least the look gap.
    Still,
    /// The last look is more recent than the gap (or this was the first): look again
    /// after this long.
    TooSoon(Duration),
    /// The queues cannot be read here.
    Unknown,
}

/// The send queues of the connections to one service (see the module docs).
#[derive(Debug)]
pub(crate) struct SendQueues {
    host: String,
    port: u16,
    peers: tokio::sync::OnceCell<Vec<SocketAddr>>,
    last: Mutex<Option<Look>>,
}

/// One look: when, and each connection's queue by socket inode.
#[derive(Debug)]
struct Look {
    at: Instant,
    queues: HashMap<u64, u64>,
}

impl SendQueues {
    /// The queues of the connections to the service at `url` (`None` when the URL
    /// names no host).
    pub(crate) fn of_url(url: &str) -> Option<SendQueues> {
        let url = reqwest::Url::parse(url).ok()?;
        Some(SendQueues {
            host: url.host_str()?.trim_matches(['[', ']']).to_owned(),
            port: url.port_or_known_default()?,
            peers: tokio::sync::OnceCell::new(),
            last: Mutex::new(None),
        })
    }

    /// Looks at the queues and compares them with the last look, which must be at
    /// least `gap` old to tell anything (several uploads waiting on one service share
    /// the looks).
    pub(crate) async fn look(&self, gap: Duration) -> Seen {
        let now = Instant::now();
        if let Some(last) = self.lock().as_ref() {
            let age = now.saturating_duration_since(last.at);
            if age < gap {
                return Seen::TooSoon(gap - age);
            }
        }
        let peers = self
            .peers
            .get_or_init(|| async {
                match tokio::net::lookup_host((self.host.as_str(), self.port)).await {
                    Ok(addrs) => addrs.collect(),
                    Err(_) => Vec::new(),
                }
            })
            .await
            .clone();
        let read = tokio::task::spawn_blocking(move || read_queues(&peers)).await;
        let Ok(Some(queues)) = read else {
            return Seen::Unknown;
        };
        let mut last = self.lock();
        let seen = match last.as_ref() {
            // No connection to the service is seen (a proxy in between, say).
            _ if queues.is_empty() => Seen::Unknown,
            Some(l) if now.saturating_duration_since(l.at) < gap => {
                // Another upload looked meanwhile; its look stands.
                return Seen::TooSoon(gap - now.saturating_duration_since(l.at));
            }
            Some(l) => compare(&l.queues, &queues).unwrap_or(Seen::TooSoon(gap)),
            None => Seen::TooSoon(gap),
        };
        *last = Some(Look { at: now, queues });
        seen
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Look>> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// [`Seen::Moved`] if a connection seen in both looks has a different queue,
/// [`Seen::Still`] if none has; `None` if no connection is in both (this look is the
/// first of them). Connections that opened or closed in between say nothing: a new
/// one's bytes were taken by the HTTP stack (which its upload's clock saw), and a
/// closed one may have been reset.
fn compare(before: &HashMap<u64, u64>, now: &HashMap<u64, u64>) -> Option<Seen> {
    let mut common = false;
    for (inode, q) in now {
        if let Some(b) = before.get(inode) {
            if b != q {
                return Some(Seen::Moved);
            }
            common = true;
        }
    }
    common.then_some(Seen::Still)
}

/// The send queues of this process's TCP connections to any of `peers`, by socket
/// inode; `None` when `/proc` cannot be read.
fn read_queues(peers: &[SocketAddr]) -> Option<HashMap<u64, u64>> {
    let ours = own_sockets()?;
    let mut out = HashMap::new();
    let mut any = false;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            any = true;
            out.extend(parse_table(&text, peers, &ours));
        }
    }
    any.then_some(out)
}

/// Inodes of this process's sockets (`/proc/self/fd/N -> socket:[inode]`).
fn own_sockets() -> Option<HashSet<u64>> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        dir.filter_map(|e| {
            let link = std::fs::read_link(e.ok()?.path()).ok()?;
            let link = link.to_str()?;
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect(),
    )
}

/// The `(inode, send queue)` of each line of a `/proc/net/tcp` or `tcp6` table whose
/// remote address is one of `peers` and whose socket is one of `ours`.
fn parse_table(text: &str, peers: &[SocketAddr], ours: &HashSet<u64>) -> Vec<(u64, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt
            // uid timeout inode ...
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote = parse_address(f.get(2)?)?;
            let tx = u64::from_str_radix(f.get(4)?.split(':').next()?, 16).ok()?;
            let inode: u64 = f.get(9)?.parse().ok()?;
            (peers.contains(&remote) && ours.contains(&inode)).then_some((inode, tx))
        })
        .collect()
}

/// An address as the kernel prints it: the IP's 32-bit words in hex, each in host
/// byte order, then `:` and the port in hex.
fn parse_address(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            // A v4 peer reached through a v6 socket is listed as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from this kernel (x86-64, little-endian) with Python: a listener on
    // 127.0.0.1:42823 whose peer never read, a client on 127.0.0.1:47694 (inode
    // 2180119) that had written 2,988,032 bytes, of which the listener's socket held
    // 4,096 (its rx_queue): 2,985,984 (0x2D9000) unacknowledged. And on ::1, a client
    // on port 46714 (inode 2178905) connected to port 46629.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   1: 0100007F:A747 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2180118 1 00000000c0ddb153 100 0 0 10 0
   9: 0100007F:A747 0100007F:BA4E 01 00000000:00001000 00:00000000 00000000     0        0 2180120 2 00000000a83ce78e 22 4 0 10 -1
  12: 0100007F:BA4E 0100007F:A747 01 002D9000:00000000 01:00000014 00000000     0        0 2180119 2 00000000c2622334 20 0 0 11 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:B625 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2178904 1 0000000039cb6c6d 100 0 0 10 0
   1: 00000000000000000000000001000000:B67A 00000000000000000000000001000000:B625 01 00000000:00000000 00:00000000 00000000     0        0 2178905 2 00000000a287d776 20 0 0 10 -1
   2: 00000000000000000000000001000000:B625 00000000000000000000000001000000:B67A 01 00000000:00000000 00:00000000 00000000     0        0 2178906 1 00000000c048d3de 20 0 0 10 -1
";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn tables_as_the_kernel_prints_them() {
        let all: HashSet<u64> = [2_180_118, 2_180_119, 2_180_120, 2_178_905, 2_178_906]
            .into_iter()
            .collect();
        let peer = [addr("127.0.0.1:42823")];
        assert_eq!(parse_table(TCP, &peer, &all), vec![(2_180_119, 2_985_984)]);
        // Not ours, or another peer: nothing.
        assert!(parse_table(TCP, &peer, &HashSet::new()).is_empty());
        assert!(parse_table(TCP, &[addr("127.0.0.1:42824")], &all).is_empty());
        // The listener's side of the same connection (peer 127.0.0.1:47694).
        assert_eq!(
            parse_table(TCP, &[addr("127.0.0.1:47694")], &all),
            vec![(2_180_120, 0)]
        );
        assert_eq!(
            parse_table(TCP6, &[addr("[::1]:46629")], &all),
            vec![(2_178_905, 0)]
        );
        assert_eq!(
            parse_address("0000000000000000FFFF00000100007F:0050"),
            Some(addr("127.0.0.1:80"))
        );
        assert_eq!(parse_address("0100007F"), None);
        assert_eq!(parse_address("01007F:0050"), None);
    }

    #[test]
    fn a_queue_that_changed_is_movement_and_new_or_gone_ones_are_not() {
        let q = |v: &[(u64, u64)]| v.iter().copied().collect::<HashMap<u64, u64>>();
        let before = q(&[(1, 100), (2, 50)]);
        assert_eq!(
            compare(&before, &q(&[(1, 100), (2, 50), (3, 7)])),
            Some(Seen::Still)
        );
        assert_eq!(compare(&before, &q(&[(1, 100)])), Some(Seen::Still));
        assert_eq!(compare(&before, &q(&[(1, 100), (2, 0)])), Some(Seen::Moved));
        // Only new connections: nothing to compare yet.
        assert_eq!(compare(&before, &q(&[(3, 7)])), None);
    }

    /// The real kernel, through a real socket pair: a peer that does not read leaves
    /// the queue still; one that reads moves it.
    #[tokio::test]
    async fn a_reading_peer_moves_the_queue_and_a_silent_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if std::fs::metadata("/proc/self/net/tcp").is_err() {
            return;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let at = listener.local_addr().unwrap();
        let mut client = tokio::net::TcpStream::connect(at).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        // Fill the client's buffers: writes stop taking bytes once they are full.
        let piece = vec![7u8; 64 * 1024];
        while tokio::time::timeout(Duration::from_millis(200), client.write_all(&piece))
            .await
            .is_ok()
        {}
        let queues = SendQueues::of_url(&format!("http://{at}/")).unwrap();
        let gap = Duration::from_millis(50);
        assert!(matches!(queues.look(gap).await, Seen::TooSoon(_)));
        // The receiving kernel may still take a little after the writer blocked.
        let mut seen = Seen::Unknown;
        for _ in 0..40 {
            tokio::time::sleep(gap).await;
            seen = queues.look(gap).await;
            if seen == Seen::Still {
                break;
            }
        }
        assert_eq!(seen, Seen::Still);
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0;
        while read < 256 << 10 {
            read += server.read(&mut buf).await.unwrap();
        }
        tokio::time::sleep(gap).await;
        assert_eq!(queues.look(gap).await, Seen::Moved);
        drop(client);
    }
}
