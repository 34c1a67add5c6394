//! Idle keep-alive connections, one pool per pod, keyed by the pod's address.
//!
//! A checkout touches only its pod's short lock, never one shared across pods; finding the pod's
//! pool is one lock-free load of the map (arc-swap, hashed with foldhash), which changes only
//! when a pod is first reached or a sweep forgets pools nobody uses. Connections idle longer than the idle timeout
//! (kept below the keep-alive of common model servers: gunicorn 2 s, uvicorn 5 s) are closed
//! instead of reused.

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
    idle: Mutex<Vec<(PodConnection, Instant)>>,
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
    pub(super) fn put(&self, mut connection: PodConnection) {
        if !connection.is_reusable() {
            return;
        }
        connection.release_buffer();
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE_PER_POD {
            idle.push((connection, Instant::now()));
        }
    }

    /// The most recently used live connection idle for less than `idle_timeout`; older ones are
    /// closed on the way.
    pub(super) fn take(&self, idle_timeout: Duration) -> Option<PodConnection> {
        let mut idle = self.idle.lock();
        close_expired(&mut idle, idle_timeout);
        while let Some((connection, _)) = idle.pop() {
            if connection.is_idle() {
                return Some(connection);
            }
        }
        None
    }

    /// Closes the connections idle for `idle_timeout` or more; true when none is left.
    fn sweep(&self, idle_timeout: Duration) -> bool {
        let mut idle = self.idle.lock();
        close_expired(&mut idle, idle_timeout);
        idle.retain(|(connection, _)| connection.is_idle());
        idle.is_empty()
    }
}

/// Entries are in return order: everything before the first fresh one has expired.
fn close_expired(idle: &mut Vec<(PodConnection, Instant)>, idle_timeout: Duration) {
    let now = Instant::now();
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
