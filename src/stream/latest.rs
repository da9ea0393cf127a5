//! [`Latest`]: a one-item hand-off between threads where a new item
//! replaces an unconsumed one (latest-frame-wins), so a slow consumer works
//! on the newest frame instead of building a queue of old ones.
//!
//! A producer that must not lose items (files) can instead wait until a
//! consumer asks ([`Latest::wait_for_taker`]): items are then produced on
//! demand and spend no time queued.
//!
//! Waits poll a stop flag every few milliseconds, so setting it (e.g. from a
//! Ctrl-C handler) ends them promptly without a notification.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often waits look at the stop flag.
const POLL: Duration = Duration::from_millis(10);

/// A capacity-one channel whose `put` overwrites.
pub struct Latest<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
}

struct State<T> {
    item: Option<T>,
    closed: bool,
    /// Consumers waiting in `take`.
    takers: usize,
}

impl<T> Default for Latest<T> {
    fn default() -> Self {
        Latest { state: Mutex::new(State { item: None, closed: false, takers: 0 }), changed: Condvar::new() }
    }
}

impl<T> Latest<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking peer cannot leave the state inconsistent: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State<T>>) -> MutexGuard<'a, State<T>> {
        match self.changed.wait_timeout(guard, POLL) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// Offers `item`; returns the unconsumed item it replaced, if any.
    pub fn put(&self, item: T) -> Option<T> {
        let replaced = self.lock().item.replace(item);
        self.changed.notify_all();
        replaced
    }

    /// Waits until the slot is empty and a consumer waits in `take`; false
    /// if `stop` was set first.
    pub fn wait_for_taker(&self, stop: &AtomicBool) -> bool {
        let mut state = self.lock();
        while state.item.is_some() || state.takers == 0 {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            state = self.wait(state);
        }
        !stop.load(Ordering::Relaxed)
    }

    /// Waits for an item; `None` once closed and empty, or when `stop` is set
    /// (an item still waiting is then left in the slot).
    pub fn take(&self, stop: &AtomicBool) -> Option<T> {
        let mut state = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(item) = state.item.take() {
                drop(state);
                self.changed.notify_all();
                return Some(item);
            }
            if state.closed {
                return None;
            }
            state.takers += 1;
            self.changed.notify_all();
            state = self.wait(state);
            state.takers -= 1;
        }
    }

    /// No more items will come: `take` returns what is left, then `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Removes and returns an item nobody took.
    pub fn take_left(&self) -> Option<T> {
        self.lock().item.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn newer_items_replace_older_ones() {
        let slot = Latest::default();
        assert_eq!(slot.put(1), None);
        assert_eq!(slot.put(2), Some(1));
        let stop = AtomicBool::new(false);
        assert_eq!(slot.take(&stop), Some(2));
        slot.put(3);
        slot.close();
        assert_eq!(slot.take(&stop), Some(3));
        assert_eq!(slot.take(&stop), None);
    }

    #[test]
    fn waits_end_on_stop() {
        let slot = Arc::new(Latest::<u32>::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f) = (slot.clone(), stop.clone());
        let taker = std::thread::spawn(move || s.take(&f));
        std::thread::sleep(Duration::from_millis(30));
        let start = Instant::now();
        stop.store(true, Ordering::Relaxed);
        assert_eq!(taker.join().unwrap(), None);
        assert!(start.elapsed() < Duration::from_millis(500));
        slot.put(1);
        assert!(!slot.wait_for_taker(&stop));
        assert_eq!(slot.take_left(), Some(1));
    }

    #[test]
    fn producing_on_demand() {
        let slot = Arc::new(Latest::default());
        let stop = Arc::new(AtomicBool::new(false));
        slot.put(7);
        let (s, f) = (slot.clone(), stop.clone());
        let producer = std::thread::spawn(move || {
            let mut produced = Vec::new();
            for item in 8..10 {
                assert!(s.wait_for_taker(&f));
                produced.push(item);
                s.put(item);
            }
            produced
        });
        std::thread::sleep(Duration::from_millis(30));
        // Nobody asked yet: the producer still waits, 7 is not replaced.
        assert_eq!(slot.take(&stop), Some(7));
        assert_eq!(slot.take(&stop), Some(8));
        assert_eq!(slot.take(&stop), Some(9));
        assert_eq!(producer.join().unwrap(), [8, 9]);
    }
}
