//! Idle keep-alive connections, one pool per pod, keyed by the pod's address.
//!
//! A checkout touches only its pod's short lock, never one shared across pods; finding the pod's
//! pool is one lock-free load of the map (arc-swap, hashed with foldhash), which changes only
//! when a pod is first reached or a sweep forgets pools nobody uses. Connections idle longer than the idle timeout
//! (kept below the keep-alive of common model servers: gunicorn 2 s, uvicorn 5 s) are closed
//! instead of reused.
//!
//! A connection keeps its read buffer when it comes back (of its usual size: one that grew for
//! a large response head is given back then), so the next response on it is read without
//! allocating one; the sweep gives the buffers of the connections still idle then back, so a
//! pod's idle connections hold buffers only between sweeps while they are in use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use foldhash::HashMap;
use http::HeaderValue;
use parking_lot::Mutex;

use super::connection::{PodConnection, Timeouts};

/// Idle connections kept per pod at most; more are closed when they come back.
const MAX_IDLE_PER_POD: usize = 256;

/// One pod's idle connections, most recently used last, and how its connections are made.
pub(super) struct PodPool {
    address: SocketAddr,
    authority: HeaderValue,
    timeouts: Timeouts,
    idle: Mutex<Vec<(Box<PodConnection>, Instant)>>,
}

impl PodPool {
    fn new(address: SocketAddr, timeouts: Timeouts) -> Self {
        PodPool {
            address,
            authority: HeaderValue::from_str(&address.to_string())
                .expect("a socket address is a valid header value"),
            timeouts,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Where the pod listens.
    pub(super) fn address(&self) -> SocketAddr {
        self.address
    }

    /// The connect and idle timeouts of the pod's connections.
    pub(super) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The pod's `ip:port`, ready to be a `Host` header.
    pub(super) fn authority(&self) -> &HeaderValue {
        &self.authority
    }

    /// Takes back a connection whose exchange ended cleanly.
    pub(super) fn put(&self, mut connection: Box<PodConnection>) {
        if !connection.is_reusable() {
            return;
        }
        connection.release_outgrown_buffer();
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_PER_POD {
            idle.push((connection, Instant::now()));
        }
    }

    /// The most recently used live connection idle for less than `idle_timeout` at `now`; older
    /// ones are closed on the way.
    pub(super) fn take(&self, idle_timeout: Duration, now: Instant) -> Option<Box<PodConnection>> {
        let mut idle = self.idle.lock();
        close_expired(&mut idle, idle_timeout, now);
        while let Some((connection, _)) = idle.pop() {
            if connection.is_idle() {
                return Some(connection);
            }
        }
        None
    }

    /// Closes the connections idle for `idle_timeout` or more, and gives back the read buffers
    /// of the others; true when none is left.
    fn sweep(&self, idle_timeout: Duration) -> bool {
        let mut idle = self.idle.lock();
        close_expired(&mut idle, idle_timeout, Instant::now());
        idle.retain(|(connection, _)| connection.is_idle());
        for (connection, _) in idle.iter_mut() {
            connection.release_buffer();
        }
        idle.is_empty()
    }
}

/// Entries are in return order: everything before the first fresh one at `now` has expired.
fn close_expired(
    idle: &mut Vec<(Box<PodConnection>, Instant)>,
    idle_timeout: Duration,
    now: Instant,
) {
    let fresh_from = idle
        .iter()
        .position(|(_, since)| now.duration_since(*since) < idle_timeout)
        .unwrap_or(idle.len());
    idle.drain(..fresh_from);
}

/// Every pod's pool.
pub(super) struct Pools {
    by_pod: ArcSwap<HashMap<SocketAddr, Arc<PodPool>>>,
    timeouts: Timeouts,
    /// Serialises changes of the map (readers never take it).
    changing: Mutex<()>,
}

impl Pools {
    /// No pool yet; pools made later connect and expire with `timeouts`.
    pub(super) fn new(timeouts: Timeouts) -> Self {
        Pools {
            by_pod: ArcSwap::default(),
            timeouts,
            changing: Mutex::new(()),
        }
    }

    /// The pool of the pod at `address`, made on first use.
    pub(super) fn of(&self, address: SocketAddr) -> Arc<PodPool> {
        if let Some(pool) = self.by_pod.load().get(&address) {
            return pool.clone();
        }
        let _one_writer = self.changing.lock();
        let current = self.by_pod.load();
        if let Some(pool) = current.get(&address) {
            return pool.clone();
        }
        let pool = Arc::new(PodPool::new(address, self.timeouts));
        let mut next = HashMap::clone(&current);
        next.insert(address, pool.clone());
        self.by_pod.store(Arc::new(next));
        pool
    }

    /// Closes expired idle connections, and forgets the pools with no connection, idle or in
    /// use (a pod that went away leaves nothing behind).
    pub(super) fn sweep(&self) {
        let _one_writer = self.changing.lock();
        let current = self.by_pod.load_full();
        let unused: Vec<SocketAddr> = current
            .iter()
            .filter(|(_, pool)| pool.sweep(self.timeouts.idle) && Arc::strong_count(pool) == 1)
            .map(|(address, _)| *address)
            .collect();
        if unused.is_empty() {
            return;
        }
        let mut next = HashMap::clone(&current);
        for address in unused {
            next.remove(&address);
        }
        self.by_pod.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::connection::connect;
    use super::*;

    /// A pod answering the requests of one connection in turn with `answers`.
    async fn pod(answers: Vec<Vec<u8>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut read = Vec::new();
            let mut buf = [0u8; 4096];
            for (n, answer) in answers.into_iter().enumerate() {
                while read.windows(4).filter(|w| *w == b"\r\n\r\n").count() <= n {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(got) => read.extend_from_slice(&buf[..got]),
                    }
                }
                stream.write_all(&answer).await.unwrap();
            }
            let _ = stream.read(&mut buf).await;
        });
        address
    }

    /// Sends a request on `connection` and reads the whole response.
    async fn exchange(connection: &mut PodConnection) {
        let request = b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n";
        connection.write_all(request).await.unwrap();
        let (_, _, decoder) = connection.response_head(false).await.unwrap();
        connection.discard_body(decoder).await.unwrap();
    }

    /// A connection back in the pool keeps a read buffer of the usual size for its next
    /// response; one that grew for a large response head is given back, and the sweep gives
    /// back the buffers of the connections still idle.
    #[tokio::test]
    async fn a_pooled_connection_keeps_a_usual_read_buffer_until_the_sweep() {
        let small = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let large = format!(
            "HTTP/1.1 200 OK\r\nx-large: {}\r\ncontent-length: 2\r\n\r\nok",
            "x".repeat(64 * 1024)
        );
        let address = pod(vec![small.clone(), large.into_bytes(), small]).await;
        let timeouts = Timeouts {
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(3600),
        };
        let pool = PodPool::new(address, timeouts);
        let mut connection = connect(address, timeouts.connect).await.unwrap();
        let mut spare_after = Vec::new();
        for _ in 0..3 {
            exchange(&mut connection).await;
            pool.put(connection);
            connection = pool.take(timeouts.idle, Instant::now()).unwrap();
            spare_after.push(connection.spare_buffer());
        }
        assert!(spare_after[0] > 0, "{spare_after:?}");
        assert_eq!(spare_after[1], 0, "{spare_after:?}");
        assert!((1..=16 * 1024).contains(&spare_after[2]), "{spare_after:?}");
        pool.put(connection);
        assert!(!pool.sweep(timeouts.idle));
        let connection = pool.take(timeouts.idle, Instant::now()).unwrap();
        assert_eq!(connection.spare_buffer(), 0);
    }
}
