//! A view's identity (its epoch and the hash of its members), the small value replicas exchange
//! in every hello and grant; the view itself is in `view.rs`.

use std::fmt;
use std::sync::Arc;

/// A view's identity: its epoch and the hash of its members. Two replicas with the same id
/// agree on every owner; an epoch says which of two views is newer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ViewId {
    /// Grows with every change of the members a replica sees (agreed: a replica that finds a
    /// peer with the same members at a higher epoch takes that epoch).
    pub epoch: u64,
    /// FNV-1a of the sorted member identities.
    pub hash: u64,
}

impl ViewId {
    /// `epoch.hash`, as sent between replicas.
    pub fn encode(self) -> String {
        format!("{}.{:016x}", self.epoch, self.hash)
    }

    /// Reads [`ViewId::encode`]'s form.
    pub fn decode(text: &str) -> Option<ViewId> {
        let (epoch, hash) = text.split_once('.')?;
        Some(ViewId {
            epoch: epoch.parse().ok()?,
            hash: u64::from_str_radix(hash, 16).ok()?,
        })
    }
}

impl fmt::Display for ViewId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:016x}", self.epoch, self.hash)
    }
}

/// The hash of a sorted member list.
pub fn members_hash(members: &[Arc<str>]) -> u64 {
    members.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, m| {
        m.as_bytes().iter().chain([0u8].iter()).fold(h, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    })
}
