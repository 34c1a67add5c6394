//! Least outstanding requests: the pod with the fewest requests in flight from this router,
//! ties broken at random; a full scan, so it costs O(pods) per request where P2C costs O(1).

use super::load::lowest;
use crate::admission::{Candidates, Policy};

/// Chooses the pod with room that has the fewest of this router's requests in flight.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastOutstanding;

impl Policy for LeastOutstanding {
    fn choose(&self, candidates: &Candidates<'_>) -> Option<usize> {
        lowest(candidates, |i| f64::from(candidates.pod(i).in_flight()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picking::tests::{pods, take};

    #[test]
    fn chooses_the_least_loaded_pod_with_room() {
        let pods = pods(3);
        let mut held = take(&pods[0], 2);
        held.extend(take(&pods[2], 1));
        let candidates = Candidates::new(&pods, 2, None);
        assert_eq!(LeastOutstanding.choose(&candidates), Some(1));
        held.extend(take(&pods[1], 2));
        assert_eq!(LeastOutstanding.choose(&candidates), Some(2));
        held.extend(take(&pods[2], 1));
        assert_eq!(LeastOutstanding.choose(&candidates), None);
    }

    #[test]
    fn ties_are_spread() {
        let pods = pods(4);
        let candidates = Candidates::new(&pods, 2, None);
        let mut seen = [false; 4];
        for _ in 0..200 {
            seen[LeastOutstanding.choose(&candidates).unwrap()] = true;
        }
        assert_eq!(seen, [true; 4]);
    }
}
