//! A conversation's events: numbered, stored, and shown to followers as they happen.
//!
//! A running task writes its events through an [`EventWriter`]: each is numbered, kept in the
//! conversation's in-process channel (so followers in this process see it at once) and stored
//! by a background flusher, in batches of up to 50 ms.
//! Numbers are `max(previous + 1, now in µs)`, so a task resumed after a crash never reuses
//! one a client has seen, even if the crash lost the last unstored deltas.
//!
//! An [`EventFollower`] reads stored events after its offset, then the channel's (while a task
//! runs here), or polls the table (while it runs on another node).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use super::{AgentEvent, store};
use crate::cloudx::Cloudx;
use crate::error::Result;

/// How long events wait to be stored together.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// The most events stored in one transaction.
const FLUSH_MAX: usize = 256;
/// Stored events a channel keeps for late followers before it lets them go.
const KEEP: usize = 512;
/// The most events one read gives.
const READ_MAX: u32 = 1000;

/// The channels of the conversations whose tasks run in this process.
static CHANNELS: LazyLock<Mutex<HashMap<Uuid, Arc<Channel>>>> = LazyLock::new(Mutex::default);

/// Counts the channels opened, so that followers reading the table notice one at once.
static OPENED: LazyLock<watch::Sender<u64>> = LazyLock::new(|| watch::Sender::new(0));

#[derive(Debug)]
pub(crate) struct Channel {
    state: Mutex<State>,
    /// The number of the latest event.
    latest: watch::Sender<i64>,
}

#[derive(Debug, Default)]
struct State {
    /// Recent events, in order: every one not yet stored, and some stored ones.
    recent: VecDeque<Arc<AgentEvent>>,
    /// Every event up to this number is stored.
    stored_upto: i64,
    /// Events up to this number were let go of (read them from the table).
    dropped_upto: i64,
    /// Whether a writer still uses the channel.
    open: bool,
}

fn channel(conversation: Uuid) -> Option<Arc<Channel>> {
    CHANNELS.lock().expect("agent channels").get(&conversation).cloned()
}

/// Writes one task's events to its conversation.
#[derive(Debug)]
pub(crate) struct EventWriter {
    conversation: Uuid,
    task: Uuid,
    last: i64,
    channel: Arc<Channel>,
    flush: Option<mpsc::UnboundedSender<Arc<AgentEvent>>>,
    flusher: Option<tokio::task::JoinHandle<()>>,
}

impl EventWriter {
    /// Opens the conversation's channel for `task` (one task writes at a time).
    pub(crate) async fn open(cx: &Cloudx, conversation: Uuid, task: Uuid) -> Result<Self> {
        let last = store::last_event(cx.database(), conversation).await?;
        let channel = Arc::new(Channel {
            state: Mutex::new(State { stored_upto: last, dropped_upto: last, open: true, ..State::default() }),
            latest: watch::Sender::new(last),
        });
        let replaced = CHANNELS.lock().expect("agent channels").insert(conversation, channel.clone());
        if let Some(old) = replaced {
            old.close();
        }
        OPENED.send_modify(|n| *n += 1);
        let (tx, rx) = mpsc::unbounded_channel();
        let flusher = tokio::spawn(flush(cx.clone(), conversation, channel.clone(), rx));
        Ok(Self { conversation, task, last, channel, flush: Some(tx), flusher: Some(flusher) })
    }

    /// Numbers, publishes and (soon) stores an event; answers its number.
    pub(crate) fn emit(&mut self, kind: &str, data: Value) -> i64 {
        // Microseconds, as stored: a follower reads the same event from the channel or the table.
        let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
        let seq = (self.last + 1).max(now.timestamp_micros());
        self.last = seq;
        let event = Arc::new(AgentEvent { seq, at: now, task: self.task, kind: kind.to_owned(), data });
        self.channel.state.lock().expect("agent channel").recent.push_back(event.clone());
        self.channel.latest.send_replace(seq);
        if let Some(flush) = &self.flush {
            // The flusher ends only when this sender is dropped.
            let _ = flush.send(event);
        }
        seq
    }

    /// Stores what is left and closes the channel (followers go on from the table).
    pub(crate) async fn close(mut self) {
        self.flush = None;
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.await;
        }
        let mut channels = CHANNELS.lock().expect("agent channels");
        if channels.get(&self.conversation).is_some_and(|c| Arc::ptr_eq(c, &self.channel)) {
            channels.remove(&self.conversation);
        }
        drop(channels);
        self.channel.close();
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        // Dropped without close (the handler was aborted): the flusher stores what it has and
        // ends; followers fall back to the table.
        if self.flusher.is_some() {
            let mut channels = CHANNELS.lock().expect("agent channels");
            if channels.get(&self.conversation).is_some_and(|c| Arc::ptr_eq(c, &self.channel)) {
                channels.remove(&self.conversation);
            }
            drop(channels);
            self.channel.close();
        }
    }
}

impl Channel {
    fn close(&self) {
        let mut state = self.state.lock().expect("agent channel");
        state.open = false;
        drop(state);
        // Wakes followers so they see it.
        self.latest.send_modify(|_| {});
    }
}

async fn flush(
    cx: Cloudx,
    conversation: Uuid,
    channel: Arc<Channel>,
    mut rx: mpsc::UnboundedReceiver<Arc<AgentEvent>>,
) {
    let mut batch: Vec<Arc<AgentEvent>> = Vec::new();
    loop {
        let Some(first) = rx.recv().await else { break };
        batch.push(first);
        // Every event waits a little for company: followers in this process have it already,
        // and one write per batch leaves the database to the task's own steps.
        let until = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < FLUSH_MAX {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        store_batch(&cx, conversation, &channel, &mut batch).await;
    }
    store_batch(&cx, conversation, &channel, &mut batch).await;
}

async fn store_batch(cx: &Cloudx, conversation: Uuid, channel: &Channel, batch: &mut Vec<Arc<AgentEvent>>) {
    let Some(last) = batch.last().map(|e| e.seq) else { return };
    let mut pause = Duration::from_millis(100);
    for attempt in 1..=5 {
        match store::insert_events(cx.database(), conversation, batch).await {
            Ok(()) => break,
            Err(e) if attempt == 5 => {
                tracing::error!(error = %e, %conversation, events = batch.len(), "conversation events could not be stored; followers elsewhere miss them");
            }
            Err(e) => {
                tracing::warn!(error = %e, %conversation, "storing conversation events failed; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
    batch.clear();
    let mut state = channel.state.lock().expect("agent channel");
    state.stored_upto = state.stored_upto.max(last);
    while state.recent.len() > KEEP && state.recent.front().is_some_and(|e| e.seq <= state.stored_upto) {
        if let Some(e) = state.recent.pop_front() {
            state.dropped_upto = e.seq;
        }
    }
}

/// Events not yet stored go in with a task's first ones: the message and status a request
/// writes before any worker has the task.
pub(crate) async fn emit_now(cx: &Cloudx, conversation: Uuid, task: Uuid, kind: &str, data: Value) -> Result<i64> {
    let last = store::last_event(cx.database(), conversation).await?;
    let now = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let seq = (last + 1).max(now.timestamp_micros());
    let event = Arc::new(AgentEvent { seq, at: now, task, kind: kind.to_owned(), data });
    store::insert_events(cx.database(), conversation, std::slice::from_ref(&event)).await?;
    Ok(seq)
}

/// Follows a conversation's events: see [`Cloudx::follow_conversation`].
#[derive(Debug)]
pub struct EventFollower {
    cx: Cloudx,
    conversation: Uuid,
    after: i64,
    limit: u32,
    channel: Option<(Arc<Channel>, watch::Receiver<i64>)>,
    /// The pause between reads of the table when nothing came (grows while idle).
    idle: Duration,
}

impl EventFollower {
    pub(crate) fn new(cx: Cloudx, conversation: Uuid, after: i64) -> Self {
        Self { cx, conversation, after, limit: READ_MAX, channel: None, idle: Duration::from_millis(100) }
    }

    pub(crate) fn set_limit(&mut self, limit: u32) {
        self.limit = limit.clamp(1, READ_MAX);
    }

    /// The number of the last event given.
    pub fn offset(&self) -> i64 {
        self.after
    }

    /// The next events (in order, at most 1000), waiting up to `wait` for one; empty when none
    /// came in that time.
    ///
    /// # Errors
    /// [`crate::ErrorKind::Unavailable`] when the database does not answer.
    pub async fn next(&mut self, wait: Duration) -> Result<Vec<AgentEvent>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Subscribed before looking, so that a channel opened meanwhile wakes the pause.
            let mut opened = OPENED.subscribe();
            if self.channel.is_none()
                && let Some(channel) = channel(self.conversation)
            {
                let rx = channel.latest.subscribe();
                self.channel = Some((channel, rx));
            }
            let events = match &mut self.channel {
                Some((channel, rx)) => {
                    rx.borrow_and_update();
                    let (recent, dropped_upto, open) = {
                        let state = channel.state.lock().expect("agent channel");
                        let recent: Vec<AgentEvent> = state
                            .recent
                            .iter()
                            .filter(|e| e.seq > self.after)
                            .take(self.limit as usize)
                            .map(|e| AgentEvent::clone(e))
                            .collect();
                        (recent, state.dropped_upto, state.open)
                    };
                    let mut out = Vec::new();
                    if self.after < dropped_upto {
                        // Older than what the channel holds: from the table first, then the
                        // channel's (every event it holds is newer than what it let go of).
                        let stored =
                            store::events(self.cx.database(), self.conversation, self.after, self.limit).await?;
                        out.extend(stored.into_iter().filter(|e| e.seq <= dropped_upto));
                        if out.len() >= self.limit as usize {
                            self.after = out.last().map_or(self.after, |e| e.seq);
                            return Ok(out);
                        }
                        self.after = dropped_upto;
                    }
                    out.extend(recent.into_iter().take(self.limit as usize - out.len()));
                    if !out.is_empty() {
                        self.after = out.last().map_or(self.after, |e| e.seq);
                        return Ok(out);
                    }
                    if open {
                        let changed = tokio::time::timeout_at(deadline, rx.changed()).await;
                        if !matches!(changed, Ok(Ok(()))) {
                            return Ok(Vec::new());
                        }
                        continue;
                    }
                    // The task ended here: everything is stored.
                    self.channel = None;
                    continue_from_table(self).await?
                }
                None => continue_from_table(self).await?,
            };
            if !events.is_empty() {
                self.idle = Duration::from_millis(100);
                self.after = events.last().map_or(self.after, |e| e.seq);
                return Ok(events);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let pause = self.idle.min(deadline - now);
            self.idle = (self.idle * 2).min(Duration::from_secs(1));
            // A task starting here wakes it; one on another node is seen at the next read.
            let _ = tokio::time::timeout(pause, opened.changed()).await;
        }
    }
}

async fn continue_from_table(f: &EventFollower) -> Result<Vec<AgentEvent>> {
    store::events(f.cx.database(), f.conversation, f.after, f.limit).await
}
