//! The bounded queue between the cameras and the inference workers, with its full-queue policy.
//!
//! Policy (the only place it is decided):
//! - a **free-run** frame arriving at a full queue evicts the oldest free-run frame (live video:
//!   the newest frame is the one worth inspecting); the eviction is returned to the caller, who
//!   counts it as a drop for that frame's camera. When only triggered frames are queued, the
//!   arriving free-run frame itself is the one dropped;
//! - a **triggered** frame is never evicted. Arriving at a full queue it evicts the oldest
//!   free-run frame if there is one; otherwise it is refused and handed back, and the caller
//!   answers the trigger with a recorded "busy" result.
//!
//! Workers take batches: they wait for a first item, then up to `max_wait` for more, up to
//! `max_batch`. After [`FrameQueue::close`] the items left are still handed out; an empty closed
//! queue returns an empty batch, which tells a worker to stop.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Whether an item may be dropped under load.
pub trait Droppable {
    /// True for free-run frames, false for triggered ones.
    fn droppable(&self) -> bool;
}

/// What a push did.
#[derive(Debug)]
pub enum Pushed<T> {
    /// Queued; nothing was dropped.
    Queued,
    /// Queued, and this older free-run item was dropped to make room.
    QueuedEvicting(T),
    /// Not queued: the queue is full (or closed) and the item is handed back.
    Refused(T),
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A bounded multi-producer, multi-consumer queue with drop-oldest for droppable items.
#[derive(Debug)]
pub struct FrameQueue<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    capacity: usize,
}

impl<T: Droppable> FrameQueue<T> {
    /// A queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> FrameQueue<T> {
        FrameQueue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity.max(1)),
                closed: false,
            }),
            notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A panic while holding this lock cannot leave the deque half-modified.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` under the policy in the module docs.
    pub fn push(&self, item: T) -> Pushed<T> {
        let mut state = self.lock();
        if state.closed {
            return Pushed::Refused(item);
        }
        let result = if state.items.len() < self.capacity {
            state.items.push_back(item);
            Pushed::Queued
        } else if let Some(oldest) = state.items.iter().position(Droppable::droppable) {
            let evicted = state.items.remove(oldest).expect("position is in range");
            state.items.push_back(item);
            Pushed::QueuedEvicting(evicted)
        } else {
            return Pushed::Refused(item);
        };
        drop(state);
        self.notify.notify_one();
        result
    }

    /// Items waiting now.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses new items and wakes every waiting worker; queued items are still handed out.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
        // A worker between its check and its wait holds no permit from notify_waiters; one
        // stored permit wakes it, and it passes the wake-up on (see `pop_batch`).
        self.notify.notify_one();
    }

    /// Takes everything queued now (for answering what is left at a shutdown deadline).
    pub fn drain(&self) -> Vec<T> {
        self.lock().items.drain(..).collect()
    }

    /// Waits for at least one item, then up to `max_wait` for up to `max_batch`. Empty only when
    /// the queue is closed and empty.
    pub async fn pop_batch(&self, max_batch: usize, max_wait: Duration) -> Vec<T> {
        let max_batch = max_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(item) = state.items.pop_front() {
                    batch.push(item);
                    break;
                }
                if state.closed {
                    drop(state);
                    self.notify.notify_one();
                    return batch;
                }
            }
            notified.await;
        }
        let deadline = Instant::now() + max_wait;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                while batch.len() < max_batch {
                    match state.items.pop_front() {
                        Some(item) => batch.push(item),
                        None => break,
                    }
                }
                let more_waiting = !state.items.is_empty();
                if batch.len() >= max_batch || state.closed {
                    drop(state);
                    if more_waiting || self.is_closed() {
                        // Pass the wake-up on to another worker.
                        self.notify.notify_one();
                    }
                    return batch;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return batch;
            }
        }
    }

    /// Without waiting: `max_batch` items if that many are queued, or once the queue is closed
    /// what is left of it (up to `max_batch`); empty otherwise. A worker that has just run a
    /// batch takes its next one this way, on the same thread, while the queue keeps up; a
    /// partial batch is left to [`FrameQueue::pop_batch`], which waits for it to fill.
    pub fn try_pop_full(&self, max_batch: usize) -> Vec<T> {
        let max_batch = max_batch.max(1);
        let mut state = self.lock();
        if state.items.len() < max_batch && !state.closed {
            return Vec::new();
        }
        let take = max_batch.min(state.items.len());
        let batch: Vec<T> = state.items.drain(..take).collect();
        let more_waiting = !state.items.is_empty();
        drop(state);
        if more_waiting {
            // Pass the wake-up on to another worker, as `pop_batch` does.
            self.notify.notify_one();
        }
        batch
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Item(u32, bool);

    impl Droppable for Item {
        fn droppable(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn free_run_drops_oldest_and_triggers_are_never_evicted() {
        let q = FrameQueue::new(3);
        assert!(matches!(q.push(Item(1, true)), Pushed::Queued));
        assert!(matches!(q.push(Item(2, false)), Pushed::Queued));
        assert!(matches!(q.push(Item(3, true)), Pushed::Queued));
        // Full: a free-run frame evicts the oldest free-run frame, not the trigger.
        assert!(matches!(
            q.push(Item(4, true)),
            Pushed::QueuedEvicting(Item(1, true))
        ));
        // A trigger evicts a free-run frame too.
        assert!(matches!(
            q.push(Item(5, false)),
            Pushed::QueuedEvicting(Item(3, true))
        ));
        assert!(matches!(
            q.push(Item(6, false)),
            Pushed::QueuedEvicting(Item(4, true))
        ));
        // Only triggers left: both kinds are refused, nothing queued is lost.
        assert!(matches!(
            q.push(Item(7, false)),
            Pushed::Refused(Item(7, false))
        ));
        assert!(matches!(
            q.push(Item(8, true)),
            Pushed::Refused(Item(8, true))
        ));
        let kept: Vec<u32> = q.drain().into_iter().map(|i| i.0).collect();
        assert_eq!(kept, vec![2, 5, 6]);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_wait_at_most_max_wait_and_close_releases_workers() {
        let q = std::sync::Arc::new(FrameQueue::new(8));
        q.push(Item(1, true));
        let start = Instant::now();
        let batch = q.pop_batch(4, Duration::from_millis(5)).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(start.elapsed(), Duration::from_millis(5));

        for i in 0..6 {
            q.push(Item(i, true));
        }
        let batch = q.pop_batch(4, Duration::from_secs(10)).await;
        assert_eq!(batch.len(), 4, "a full batch goes without waiting");
        assert_eq!(start.elapsed(), Duration::from_millis(5));

        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                loop {
                    let b = q.pop_batch(4, Duration::from_millis(1)).await;
                    if b.is_empty() {
                        return seen;
                    }
                    seen += b.len();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.close();
        assert_eq!(
            waiter.await.unwrap(),
            2,
            "queued items are handed out after close"
        );
        assert!(matches!(q.push(Item(9, false)), Pushed::Refused(_)));
    }

    #[test]
    fn without_waiting_only_full_batches_are_taken_until_the_queue_closes() {
        let q = FrameQueue::new(8);
        for i in 0..5 {
            q.push(Item(i, true));
        }
        let ids = |b: Vec<Item>| b.into_iter().map(|i| i.0).collect::<Vec<_>>();
        assert_eq!(ids(q.try_pop_full(2)), vec![0, 1]);
        assert_eq!(ids(q.try_pop_full(2)), vec![2, 3]);
        assert!(
            q.try_pop_full(2).is_empty(),
            "a partial batch is left to fill"
        );
        assert_eq!(q.len(), 1);
        q.close();
        assert_eq!(ids(q.try_pop_full(2)), vec![4], "what is left after close");
        assert!(q.try_pop_full(2).is_empty());
    }
}
