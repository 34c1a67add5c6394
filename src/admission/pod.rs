//! One model pod as admission sees it: an address, the requests this router has on it, and
//! whether it takes new ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::outlier::Health;

/// One model pod's admission state. Created once by the table builder and shared by every
/// routing snapshot that lists the pod, so a rebuild never resets its count.
pub struct Pod {
    address: SocketAddr,
    in_flight: AtomicU32,
    routable: AtomicBool,
    pub(super) health: Health,
}

impl Pod {
    /// A pod at `address`, routable, with no requests in flight.
    pub fn new(address: SocketAddr) -> Self {
        Pod {
            address,
            in_flight: AtomicU32::new(0),
            routable: AtomicBool::new(true),
            health: Health::default(),
        }
    }

    /// Where the pod listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Requests this router has on the pod now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether new requests may go to the pod (ready, not terminating, still listed).
    pub fn is_routable(&self) -> bool {
        self.routable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_routable(&self, routable: bool) {
        self.routable.store(routable, Ordering::Relaxed);
    }

    /// Whether outlier detection has taken the pod out of the rotation for now.
    pub fn is_ejected(&self) -> bool {
        self.health.is_ejected()
    }

    /// Whether the pod takes a new request now: routable, not ejected, and below `cap`.
    pub fn has_room(&self, cap: u32) -> bool {
        self.is_routable() && self.in_flight() < cap && !self.is_ejected()
    }

    /// Takes one slot if the pod is routable and below `cap`.
    pub(super) fn try_take(&self, cap: u32) -> bool {
        if !self.is_routable() {
            return false;
        }
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= cap {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes one slot whatever the count; returns the count after.
    pub(super) fn force_take(&self) -> u32 {
        self.in_flight.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Gives one slot back.
    pub(super) fn give_back(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("address", &self.address)
            .field("in_flight", &self.in_flight())
            .field("routable", &self.is_routable())
            .field("health", &self.health)
            .finish()
    }
}
