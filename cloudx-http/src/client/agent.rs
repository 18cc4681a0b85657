//! The agent through the daemon: conversations, messages, tasks, their events and transcripts.

use std::time::Duration;

use cloudx_core::Result;
use cloudx_core::agent::{AgentEvent, Conversation, Task, TaskFilter, TranscriptEntry};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::Client;
pub use crate::routes::agent::EventPage;

/// The longest wait the daemon grants a poll of events.
const MAX_WAIT: Duration = Duration::from_secs(30);

impl Client {
    /// Starts a conversation about `project`.
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::NotFound`](cloudx_core::ErrorKind) for a project
    /// the caller cannot see, [`ErrorKind::InvalidInput`](cloudx_core::ErrorKind) for a title
    /// that is too long.
    pub async fn create_conversation(&self, project: Uuid, title: Option<&str>) -> Result<Conversation> {
        let body = json!({ "title": title });
        self.send(Method::POST, &format!("api/v1/projects/{project}/conversations"), Some(&body), true).await
    }

    /// The caller's conversations about `project`, latest first.
    ///
    /// # Errors
    /// As [`create_conversation`](Self::create_conversation).
    pub async fn list_conversations(&self, project: Uuid) -> Result<Vec<Conversation>> {
        self.send::<(), _>(Method::GET, &format!("api/v1/projects/{project}/conversations"), None, true).await
    }

    /// One conversation.
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::NotFound`](cloudx_core::ErrorKind) for one that is
    /// not the caller's.
    pub async fn conversation(&self, id: Uuid) -> Result<Conversation> {
        self.send::<(), _>(Method::GET, &format!("api/v1/conversations/{id}"), None, true).await
    }

    /// Posts a message and answers the task that will answer it (queued).
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::InvalidInput`](cloudx_core::ErrorKind) for an empty
    /// or oversized message, [`ErrorKind::Conflict`](cloudx_core::ErrorKind) while another task
    /// of the conversation is queued or running.
    pub async fn post_message(&self, conversation: Uuid, text: &str) -> Result<Task> {
        let body = json!({ "text": text });
        self.send(Method::POST, &format!("api/v1/conversations/{conversation}/messages"), Some(&body), true).await
    }

    /// The conversation's events after number `after` (at most `limit`), waiting up to `wait`
    /// (at most 30 s) for the first when there is none yet.
    ///
    /// # Errors
    /// As [`conversation`](Self::conversation).
    pub async fn conversation_events(&self, id: Uuid, after: i64, limit: u32, wait: Duration) -> Result<EventPage> {
        let wait = wait.min(MAX_WAIT).as_secs();
        let path = format!("api/v1/conversations/{id}/events?after={after}&limit={limit}&wait={wait}");
        self.send::<(), _>(Method::GET, &path, None, true).await
    }

    /// Follows a conversation's events from after number `after`: `on_event` is called for
    /// each, in order, until it answers `false`. Each poll waits on the daemon for the next
    /// events (a long poll); a poll that fails because the daemon is briefly unreachable is
    /// tried again from the last event seen, so none is missed or repeated.
    ///
    /// # Errors
    /// As [`conversation`](Self::conversation); [`ErrorKind::Unavailable`](cloudx_core::ErrorKind)
    /// when the daemon stays unreachable for a minute.
    pub async fn follow_conversation(
        &self,
        id: Uuid,
        mut after: i64,
        mut on_event: impl FnMut(&AgentEvent) -> bool,
    ) -> Result<i64> {
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            let page = match self.conversation_events(id, after, 1000, MAX_WAIT).await {
                Ok(page) => page,
                Err(e)
                    if e.kind() == cloudx_core::ErrorKind::Unavailable
                        || e.kind() == cloudx_core::ErrorKind::RateLimited =>
                {
                    let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > Duration::from_secs(60) {
                        return Err(e);
                    }
                    tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_secs(1))).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            failing_since = None;
            for event in &page.events {
                after = event.seq;
                if !on_event(event) {
                    return Ok(after);
                }
            }
            after = after.max(page.next);
        }
    }

    /// The caller's tasks matching `filter`, latest first.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let pairs = [
            ("project", filter.project.map(|p| p.to_string())),
            ("conversation", filter.conversation.map(|c| c.to_string())),
            ("status", filter.status.map(|s| s.as_str().to_owned())),
            ("limit", filter.limit.map(|l| l.to_string())),
        ];
        self.get_with_query("api/v1/tasks", &pairs).await
    }

    /// One task.
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::NotFound`](cloudx_core::ErrorKind) for a task of a
    /// conversation that is not the caller's.
    pub async fn task(&self, id: Uuid) -> Result<Task> {
        self.send::<(), _>(Method::GET, &format!("api/v1/tasks/{id}"), None, true).await
    }

    /// A task's transcript after entry `after`, at most `limit` entries.
    ///
    /// # Errors
    /// As [`task`](Self::task).
    pub async fn transcript(&self, id: Uuid, after: i64, limit: u32) -> Result<Vec<TranscriptEntry>> {
        self.send::<(), _>(
            Method::GET,
            &format!("api/v1/tasks/{id}/transcript?after={after}&limit={limit}"),
            None,
            true,
        )
        .await
    }

    /// Cancels a task (a finished one is answered as it is).
    ///
    /// # Errors
    /// As [`task`](Self::task).
    pub async fn cancel_task(&self, id: Uuid) -> Result<Task> {
        self.send::<(), _>(Method::POST, &format!("api/v1/tasks/{id}/cancel"), None, true).await
    }

    /// Replays a finished task: answers the new task (queued), whose `report` says, once it
    /// has ended, what came out differently.
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::Conflict`](cloudx_core::ErrorKind) for a task still
    /// running.
    pub async fn replay_task(&self, id: Uuid) -> Result<Task> {
        self.send::<(), _>(Method::POST, &format!("api/v1/tasks/{id}/replay"), None, true).await
    }

    /// Asks the daemon's model endpoint whether it answers, streams and calls tools:
    /// `{base_url, model, ok, checks: [{name, ok, detail, elapsed_ms}]}`.
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn llm_check(&self) -> Result<serde_json::Value> {
        self.send::<(), _>(Method::POST, "api/v1/llm/check", None, true).await
    }
}
