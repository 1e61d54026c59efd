//! One shared pattern behind a node's proposer and read-index rounds and a router's
//! request batching: requests queue up, a single task takes the first and every other one
//! already queued, and runs them as one batch, with a bounded number of batches running
//! at once.
//!
//! A request waits for nothing when the system is idle: with nothing queued and a slot
//! free, its submitter starts its batch of one itself, without a trip through the queue
//! and the batching task (two task wake-ups fewer, which on a busy machine is measurable
//! for a lone client). Under load every batch carries whatever queued while the previous
//! batches ran. The queue is bounded: when it is full, submitters wait, so memory stays
//! bounded however many clients there are.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// Bounds of one [`Batcher`].
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most requests in one batch.
    pub max_items: usize,
    /// Most total weight in one batch (a single heavier request still runs, alone).
    pub max_weight: usize,
    /// Batches running at once.
    pub max_in_flight: usize,
    /// Requests that may wait for a batch.
    pub max_queued: usize,
}

struct Queued<T, R> {
    item: T,
    reply: oneshot::Sender<R>,
}

/// Runs one batch.
type RunBatch<T, R> =
    Arc<dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Vec<R>> + Send>> + Send + Sync>;

/// A queue of `T` requests answered with `R`, run in batches by a background task.
pub struct Batcher<T, R> {
    queue: mpsc::Sender<Queued<T, R>>,
    /// Requests submitted through the queue and not yet in a batch.
    waiting: Arc<AtomicUsize>,
    /// Batches running (at most `max_in_flight`).
    slots: Arc<Semaphore>,
    run: RunBatch<T, R>,
}

/// The batcher's task has stopped (its runtime is shutting down), or it dropped the
/// request without answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The request never reached a batch.
    BeforeRunning,
    /// The request was in a batch that did not answer.
    WhileRunning,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the task on the current tokio runtime. `weight` weighs one request;
    /// `run` runs one batch and answers every request in it, in order.
    pub fn start<F, Fut>(limits: BatchLimits, weight: fn(&T) -> usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (queue, rx) = mpsc::channel(limits.max_queued);
        let run: RunBatch<T, R> = Arc::new(move |items| Box::pin(run(items)));
        let waiting = Arc::new(AtomicUsize::new(0));
        let slots = Arc::new(Semaphore::new(limits.max_in_flight));
        tokio::spawn(drive(
            limits,
            weight,
            run.clone(),
            rx,
            waiting.clone(),
            slots.clone(),
        ));
        Batcher {
            queue,
            waiting,
            slots,
            run,
        }
    }

    /// Requests queued and not yet in a batch.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Submits `item` and waits for its answer: at once as a batch of its own when nothing
    /// waits and a slot is free, else through the queue.
    pub async fn submit(&self, item: T) -> Result<R, Stopped> {
        if self.waiting() == 0 {
            // A queued request waiting for a slot gets it first: the semaphore hands a
            // freed slot to a waiter before any try.
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                let run = self.run.clone();
                // Its own task, as a queued batch has: it runs to its end even if this
                // submitter is dropped midway.
                let batch = tokio::spawn(async move {
                    let answer = run(vec![item]).await.into_iter().next();
                    drop(slot);
                    answer
                });
                return batch.await.ok().flatten().ok_or(Stopped::WhileRunning);
            }
        }
        let (reply, answer) = oneshot::channel();
        self.waiting.fetch_add(1, Ordering::AcqRel);
        if self.queue.send(Queued { item, reply }).await.is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(Stopped::BeforeRunning);
        }
        answer.await.map_err(|_| Stopped::WhileRunning)
    }

    /// Queues every one of `items`, in order (so that they tend to share batches), and
    /// waits for all their answers: one per item, in order.
    pub async fn submit_all(&self, items: Vec<T>) -> Vec<Result<R, Stopped>> {
        let mut pending = Vec::with_capacity(items.len());
        for item in items {
            let (reply, answer) = oneshot::channel();
            self.waiting.fetch_add(1, Ordering::AcqRel);
            let sent = self.queue.send(Queued { item, reply }).await;
            if sent.is_err() {
                self.waiting.fetch_sub(1, Ordering::AcqRel);
            }
            pending.push(sent.map(|()| answer).map_err(|_| Stopped::BeforeRunning));
        }
        let mut answers = Vec::with_capacity(pending.len());
        for answer in pending {
            answers.push(match answer {
                Ok(answer) => answer.await.map_err(|_| Stopped::WhileRunning),
                Err(stopped) => Err(stopped),
            });
        }
        answers
    }
}

async fn drive<T, R>(
    limits: BatchLimits,
    weight: fn(&T) -> usize,
    run: RunBatch<T, R>,
    mut rx: mpsc::Receiver<Queued<T, R>>,
    waiting: Arc<AtomicUsize>,
    slots: Arc<Semaphore>,
) where
    T: Send + 'static,
    R: Send + 'static,
{
    // A request taken off the queue that did not fit the last batch: it starts the next.
    let mut carried: Option<Queued<T, R>> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match rx.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        // Then a free slot: requests that arrive meanwhile join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut total = weight(&first.item);
        let mut batch = vec![first];
        while batch.len() < limits.max_items {
            let Ok(next) = rx.try_recv() else { break };
            let next_weight = weight(&next.item);
            if total + next_weight > limits.max_weight {
                carried = Some(next);
                break;
            }
            total += next_weight;
            batch.push(next);
        }
        waiting.fetch_sub(batch.len(), Ordering::AcqRel);
        let run = run.clone();
        tokio::spawn(async move {
            let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) =
                batch.into_iter().map(|q| (q.item, q.reply)).unzip();
            let answers = run(items).await;
            // A missing answer drops its sender: the submitter sees `WhileRunning`.
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn limits(max_items: usize) -> BatchLimits {
        BatchLimits {
            max_items,
            max_weight: usize::MAX,
            max_in_flight: 1,
            max_queued: 1024,
        }
    }

    type Sizes = Arc<Mutex<Vec<usize>>>;

    /// A batcher answering `i` with `i * 10` that records each batch's size; a batch of
    /// exactly `[0]` holds its slot until the gate is notified.
    fn gated_batcher(
        limits: BatchLimits,
    ) -> (Arc<Batcher<u32, u32>>, Sizes, Arc<tokio::sync::Notify>) {
        let sizes: Sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let (s, g) = (sizes.clone(), gate.clone());
        let batcher = Arc::new(Batcher::start(
            limits,
            |_: &u32| 1,
            move |items: Vec<u32>| {
                let (s, g) = (s.clone(), g.clone());
                async move {
                    s.lock().unwrap().push(items.len());
                    if items == [0] {
                        g.notified().await;
                    }
                    items.into_iter().map(|i| i * 10).collect::<Vec<u32>>()
                }
            },
        ));
        (batcher, sizes, gate)
    }

    /// Submits `[0]`, which runs alone and holds a gated batcher's only slot until the
    /// gate is notified; returns once it runs.
    async fn hold_the_slot(
        batcher: &Arc<Batcher<u32, u32>>,
        sizes: &Sizes,
    ) -> tokio::task::JoinHandle<Result<u32, Stopped>> {
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(0).await }
        });
        until("the first batch starts", || {
            !sizes.lock().unwrap().is_empty()
        })
        .await;
        first
    }

    /// Yields until `done` holds, failing the test after 10 s instead of hanging.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what} within 10 s");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn requests_queued_behind_a_running_batch_share_the_next_one_within_the_limit() {
        let (batcher, sizes, gate) = gated_batcher(limits(4));
        // The first request runs alone and holds the only slot until the gate opens.
        let first = hold_the_slot(&batcher, &sizes).await;
        let rest: Vec<_> = (1..=6)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.submit(i).await })
            })
            .collect();
        // Let all six reach the queue before the slot frees.
        until("six requests queue", || batcher.waiting() == 6).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Ok(0));
        for (i, r) in rest.into_iter().enumerate() {
            assert_eq!(
                r.await.unwrap(),
                Ok((i as u32 + 1) * 10),
                "each gets its own answer"
            );
        }
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![1, 4, 2],
            "queued requests batch, at most 4"
        );
    }

    #[tokio::test]
    async fn items_submitted_together_share_batches_and_each_gets_its_own_answer_in_order() {
        let (batcher, sizes, gate) = gated_batcher(limits(4));
        let first = hold_the_slot(&batcher, &sizes).await;
        let all = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit_all((1..=6).collect()).await }
        });
        until("six requests queue", || batcher.waiting() == 6).await;
        gate.notify_one();
        assert_eq!(first.await.unwrap(), Ok(0));
        let expected: Vec<Result<u32, Stopped>> = (1..=6).map(|i| Ok(i * 10)).collect();
        assert_eq!(all.await.unwrap(), expected);
        assert_eq!(*sizes.lock().unwrap(), vec![1, 4, 2]);
    }

    #[tokio::test]
    async fn a_batch_takes_requests_up_to_its_weight_and_a_heavier_one_runs_alone() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(tokio::sync::Notify::new());
        let (s, g) = (sizes.clone(), gate.clone());
        let limits = BatchLimits {
            max_weight: 6,
            ..limits(100)
        };
        let batcher = Arc::new(Batcher::start(
            limits,
            |w: &usize| *w,
            move |items: Vec<usize>| {
                let (s, g) = (s.clone(), g.clone());
                async move {
                    s.lock().unwrap().push(items.clone());
                    if items == [0] {
                        g.notified().await;
                    }
                    items
                }
            },
        ));
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.submit(0).await }
        });
        until("the first batch starts", || {
            !sizes.lock().unwrap().is_empty()
        })
        .await;
        // Weights 3 + 3 fill a batch exactly; 1 would make it 7; 9 is over the limit alone.
        let weights = [3, 3, 1, 9, 2];
        let mut rest = Vec::new();
        for w in weights {
            let b = batcher.clone();
            rest.push(tokio::spawn(async move { b.submit(w).await }));
            let queued = rest.len();
            until("the request queues", || batcher.waiting() == queued).await;
        }
        gate.notify_one();
        first.await.unwrap().unwrap();
        for r in rest {
            r.await.unwrap().unwrap();
        }
        let batches = sizes.lock().unwrap().clone();
        assert_eq!(
            batches,
            vec![vec![0], vec![3, 3], vec![1], vec![9], vec![2]]
        );
    }

    #[tokio::test]
    async fn a_batch_that_answers_too_few_leaves_the_rest_told_it_stopped() {
        let batcher = Batcher::start(
            limits(8),
            |_: &u32| 1,
            |_items: Vec<u32>| async { Vec::<u32>::new() },
        );
        assert_eq!(batcher.submit(1).await, Err(Stopped::WhileRunning));
    }
}
