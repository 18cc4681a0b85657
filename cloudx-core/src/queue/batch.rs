//! Coalescing of concurrent writes: submissions and completions made at the same moment by
//! different tasks of one process go to the database as one statement (Postgres) or one
//! transaction (SQLite), so they share one commit and one disk flush. Nothing waits for a batch
//! to fill: a request goes out at once when the database is idle, and the requests that arrive
//! while a batch is in flight make up the next one.

use std::future::Future;
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, ErrorKind, Result};

/// The most requests in one batch.
pub(super) const MAX_BATCH: usize = 256;

type Request<T, R> = (T, oneshot::Sender<Result<R>>);

/// One task that runs batches of `T`, answering each with an `R`, one batch at a time.
pub(super) struct Batcher<T, R> {
    sender: OnceLock<mpsc::UnboundedSender<Request<T, R>>>,
}

impl<T, R> std::fmt::Debug for Batcher<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("started", &self.sender.get().is_some()).finish()
    }
}

impl<T, R> Default for Batcher<T, R> {
    fn default() -> Self {
        Self { sender: OnceLock::new() }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Runs `item` in the next batch. `flush` (kept by the task started on the first call;
    /// later calls' are dropped) runs a batch and answers every item of it, in order.
    ///
    /// Gives `item` back when the task is gone (its runtime shut down): the caller then does
    /// the work itself.
    pub(super) async fn run<F, Fut>(&self, item: T, flush: F) -> std::result::Result<Result<R>, T>
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<R>>> + Send + 'static,
    {
        let sender = self.sender.get_or_init(|| {
            let (sender, mut requests) = mpsc::unbounded_channel::<Request<T, R>>();
            let mut flush = flush;
            tokio::spawn(async move {
                while let Some(first) = requests.recv().await {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match requests.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    let (items, answers): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
                    let results = flush(items).await;
                    debug_assert_eq!(results.len(), answers.len(), "a batch answers every item");
                    for (answer, result) in answers.into_iter().zip(results) {
                        let _ = answer.send(result);
                    }
                }
            });
            sender
        });
        let (answer, answered) = oneshot::channel();
        if let Err(mpsc::error::SendError((item, _))) = sender.send((item, answer)) {
            return Err(item);
        }
        Ok(answered.await.unwrap_or_else(|_| Err(Error::new(ErrorKind::Unavailable, "the job queue's writer stopped"))))
    }
}
