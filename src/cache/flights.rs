//! Single flight for the frames of one partial entry: batches in flight at once often need one
//! frame (the last files of one directory and the first of the next share it), and the second
//! waits for the first one's decoded, verified bytes rather than asking for the frame again. A
//! flight that ends without bytes (the frame failed, the batch was cancelled) lets its waiters
//! fetch the frame themselves.

use std::collections::HashMap;

use tokio::sync::watch;

use crate::sync::{Arc, Mutex, lock};

/// The decoded bytes of a frame once its flight has them.
type Landing = Option<Arc<Vec<u8>>>;

/// The frames of one entry some batch is fetching now.
#[derive(Debug, Default)]
pub struct Flights {
    taken: Mutex<HashMap<usize, watch::Receiver<Landing>>>,
}

/// A frame this batch fetches; its bytes go to every batch waiting for them. Dropping it ends
/// the flight, with bytes or without.
pub struct Flight<'a> {
    flights: &'a Flights,
    frame: usize,
    landed: watch::Sender<Landing>,
}

/// A frame another batch is fetching.
pub struct Awaited {
    /// The frame.
    pub frame: usize,
    landing: watch::Receiver<Landing>,
}

impl Flights {
    /// Splits `frames` into those this batch fetches (taken now) and those other batches are
    /// fetching already.
    pub fn take(&self, frames: impl IntoIterator<Item = usize>) -> (Vec<Flight<'_>>, Vec<Awaited>) {
        let mut taken = lock(&self.taken);
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        for frame in frames {
            match taken.get(&frame) {
                Some(landing) => theirs.push(Awaited { frame, landing: landing.clone() }),
                None => {
                    let (landed, landing) = watch::channel(None);
                    taken.insert(frame, landing);
                    mine.push(Flight { flights: self, frame, landed });
                }
            }
        }
        (mine, theirs)
    }
}

impl Flight<'_> {
    /// The frame.
    pub fn frame(&self) -> usize {
        self.frame
    }

    /// Hands the frame's decoded, verified bytes to the batches waiting for them.
    pub fn land(&self, bytes: Arc<Vec<u8>>) {
        self.landed.send_replace(Some(bytes));
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        lock(&self.flights.taken).remove(&self.frame);
    }
}

impl Awaited {
    /// The frame's bytes once its flight ends, or `None` when it ended without them.
    pub async fn landed(mut self) -> Landing {
        // Closed without bytes: the flight ended empty-handed.
        self.landing.wait_for(Option::is_some).await.ok().and_then(|b| b.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_in_flight_is_waited_for_and_a_failed_flight_frees_it() {
        let flights = Flights::default();
        let (mine, theirs) = flights.take([1, 2]);
        assert_eq!((mine.len(), theirs.len()), (2, 0));
        let (again, waiting) = flights.take([2, 3]);
        assert_eq!(again.iter().map(Flight::frame).collect::<Vec<_>>(), vec![3]);
        assert_eq!(waiting.iter().map(|w| w.frame).collect::<Vec<_>>(), vec![2]);
        let [one, two]: [Flight<'_>; 2] = mine.try_into().ok().unwrap();
        two.land(Arc::new(vec![7; 3]));
        drop(two);
        let waited = waiting.into_iter().next().unwrap();
        assert_eq!(waited.landed().await.as_deref(), Some(&vec![7; 3]), "the bytes come along");
        let (_, on_one) = flights.take([1]);
        drop(one);
        let failed = on_one.into_iter().next().unwrap();
        assert_eq!(failed.landed().await, None, "a flight ended without bytes says so");
        let (free, _) = flights.take([1, 2]);
        assert_eq!(free.len(), 2, "ended flights leave their frames free");
    }
}
