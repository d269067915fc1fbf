//! A prefetching pipeline: worker threads build items ahead of the consumer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};
use crate::rng::{derive_seed, rng_for};

/// Builds items (e.g. batches of training samples) on `workers` threads, each keeping up to
/// `capacity` finished items ready, and hands them out in index order.
///
/// Item `i` is built by worker `i % workers` with its own random stream seeded from
/// `(seed, i)`, so the sequence of items is the same for any number of workers. Dropping the
/// prefetcher stops the workers.
///
/// ```
/// use rand::Rng;
/// use sam_data::Prefetcher;
///
/// let items: Vec<u32> = Prefetcher::spawn(2, 4, 7, Some(5), |i, rng| Ok(i as u32 * 100 + rng.gen_range(0..100)))
///     .map(|r| r.unwrap())
///     .collect();
/// assert_eq!(items.len(), 5);
/// assert!(items.windows(2).all(|w| w[0] / 100 + 1 == w[1] / 100));
/// ```
pub struct Prefetcher<T: Send + 'static> {
    receivers: Vec<Receiver<Result<T>>>,
    next: u64,
    count: Option<u64>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl<T: Send + 'static> std::fmt::Debug for Prefetcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefetcher")
            .field("workers", &self.receivers.len())
            .field("next", &self.next)
            .finish()
    }
}

impl<T: Send + 'static> Prefetcher<T> {
    /// Starts `workers` threads (at least 1) building items `0..count` (endless when `None`)
    /// with `make(index, rng)`.
    pub fn spawn<F>(workers: usize, capacity: usize, seed: u64, count: Option<u64>, make: F) -> Self
    where
        F: Fn(u64, &mut ChaCha8Rng) -> Result<T> + Send + Sync + 'static,
    {
        let workers = workers.max(1);
        let make = Arc::new(make);
        let stop = Arc::new(AtomicBool::new(false));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel::<Result<T>>(capacity.max(1));
            let make = Arc::clone(&make);
            let stop = Arc::clone(&stop);
            handles.push(std::thread::spawn(move || {
                let mut i = w as u64;
                while count.is_none_or(|c| i < c) && !stop.load(Ordering::Relaxed) {
                    let mut rng = rng_for(derive_seed(seed, &[i]));
                    if tx.send(make(i, &mut rng)).is_err() {
                        break;
                    }
                    i += workers as u64;
                }
            }));
            receivers.push(rx);
        }
        Prefetcher {
            receivers,
            next: 0,
            count,
            stop,
            handles,
        }
    }
}

impl<T: Send + 'static> Iterator for Prefetcher<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.count.is_some_and(|c| self.next >= c) {
            return None;
        }
        let w = (self.next % self.receivers.len() as u64) as usize;
        self.next += 1;
        Some(
            self.receivers[w]
                .recv()
                .unwrap_or(Err(DataError::WorkerStopped { worker: w })),
        )
    }
}

impl<T: Send + 'static> Drop for Prefetcher<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // closing the channels unblocks workers waiting to send
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn same_items_for_any_worker_count() {
        let run = |workers| {
            Prefetcher::spawn(workers, 2, 11, Some(20), |i, rng| Ok((i, rng.gen::<u64>())))
                .map(|r| r.unwrap())
                .collect::<Vec<_>>()
        };
        let one = run(1);
        assert_eq!(
            one.iter().map(|p| p.0).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        assert_eq!(one, run(3));
        assert_eq!(one, run(8));
    }

    #[test]
    fn workers_stay_ahead_but_bounded() {
        let made = Arc::new(AtomicUsize::new(0));
        let m = Arc::clone(&made);
        let mut p = Prefetcher::spawn(2, 3, 0, None, move |i, _| {
            m.fetch_add(1, Ordering::SeqCst);
            Ok(i)
        });
        assert_eq!(p.next().unwrap().unwrap(), 0);
        std::thread::sleep(Duration::from_millis(200));
        // each worker fills its channel (3) and holds one more item it waits to send
        let n = made.load(Ordering::SeqCst);
        assert!((6..=9).contains(&n), "{n} items built");
        drop(p);
    }

    #[test]
    fn errors_are_passed_through_in_order() {
        let items: Vec<_> = Prefetcher::spawn(2, 1, 0, Some(4), |i, _| {
            if i == 2 {
                Err(DataError::WorkerStopped { worker: 99 })
            } else {
                Ok(i)
            }
        })
        .collect();
        assert!(items[0].is_ok() && items[1].is_ok() && items[2].is_err() && items[3].is_ok());
    }
}
