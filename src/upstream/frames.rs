//! Body frames held in memory: a request body received before its slot, a pod's response read
//! ahead of the client. The frames are the ones hyper handed over (reference-counted `Bytes`),
//! never copied; the common case — one frame — allocates nothing.

use std::collections::VecDeque;

use bytes::Bytes;
use http_body::Frame;

/// Frames in arrival order, with the count of data bytes among them.
#[derive(Debug, Default)]
pub struct Frames {
    first: Option<Frame<Bytes>>,
    more: VecDeque<Frame<Bytes>>,
    bytes: u64,
}

impl Frames {
    /// Appends a frame.
    pub fn push(&mut self, frame: Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
        }
        if self.first.is_none() && self.more.is_empty() {
            self.first = Some(frame);
        } else {
            self.more.push_back(frame);
        }
    }

    /// Takes the oldest frame.
    pub fn pop(&mut self) -> Option<Frame<Bytes>> {
        let frame = self.first.take().or_else(|| self.more.pop_front())?;
        if let Some(data) = frame.data_ref() {
            self.bytes -= data.len() as u64;
        }
        Some(frame)
    }

    /// Data bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_empty()
    }

    /// The data as one buffer: the frame itself when there is one, else a copy of them all
    /// (trailers are left out).
    pub fn to_bytes(&self) -> Bytes {
        let data = || {
            self.first
                .iter()
                .chain(self.more.iter())
                .filter_map(Frame::data_ref)
        };
        let mut pieces = data();
        match (pieces.next(), pieces.next()) {
            (None, _) => Bytes::new(),
            (Some(one), None) => one.clone(),
            _ => {
                let mut all = Vec::with_capacity(self.bytes as usize);
                for piece in data() {
                    all.extend_from_slice(piece);
                }
                Bytes::from(all)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order_and_count_their_bytes() {
        let mut f = Frames::default();
        assert!(f.is_empty());
        f.push(Frame::data(Bytes::from_static(b"ab")));
        assert_eq!(f.to_bytes(), "ab");
        f.push(Frame::data(Bytes::from_static(b"cde")));
        f.push(Frame::trailers(http::HeaderMap::new()));
        assert_eq!(f.bytes(), 5);
        assert_eq!(f.to_bytes(), "abcde");
        assert_eq!(f.pop().unwrap().into_data().unwrap(), "ab");
        assert_eq!(f.bytes(), 3);
        f.push(Frame::data(Bytes::from_static(b"f")));
        assert_eq!(f.pop().unwrap().into_data().unwrap(), "cde");
        assert!(f.pop().unwrap().is_trailers());
        assert_eq!(f.pop().unwrap().into_data().unwrap(), "f");
        assert!(f.pop().is_none() && f.is_empty() && f.bytes() == 0);
    }
}
