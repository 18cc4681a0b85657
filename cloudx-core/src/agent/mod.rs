//! The agent: an LLM that reads and edits a project's files and runs its code, on behalf of a
//! user and with exactly that user's rights on the project.
//!
//! A [`Conversation`] belongs to one project and one user. Each message posted to it starts a
//! [`Task`], run as a `codegen` job on the queue (so it survives a restart of the process and
//! can run on a worker elsewhere): the model is asked, with the conversation so far and the
//! tools of [`tools`]; the tools it calls run; their results go back to it; until it answers
//! without calling a tool, or a budget (steps, tokens, wall time: `[llm]` in the
//! configuration) runs out, or the task is cancelled.
//!
//! Everything a task does is recorded in order in its transcript (model requests and answers,
//! tool calls and results), from which [`Cloudx::replay_task`] runs its tools again against the
//! recorded answers and reports what came out differently. Clients follow a conversation's
//! [`AgentEvent`]s (text deltas, tool calls and results, file changes, task status) with a
//! resume offset: [`Cloudx::follow_conversation`].

pub(crate) mod hub;
pub mod llm;
pub(crate) mod run;
mod store;
pub mod tools;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::access::ProjectAction;
use crate::auth::audit::Client;
use crate::cloudx::Cloudx;
use crate::error::{Error, ErrorKind, Result};
use crate::principal::Principal;
use crate::queue::{JobStatus, NewJob};

pub use hub::EventFollower;
pub use llm::{LlmCheck, LlmCheckStep};

/// The job kind agent tasks run as.
pub const CODEGEN: &str = "codegen";
/// The longest message a user may post, in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The longest conversation title, in characters.
pub const MAX_TITLE: usize = 200;

/// A conversation with the agent about one project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conversation {
    /// Its id.
    pub id: Uuid,
    /// The project it is about.
    pub project: Uuid,
    /// Its user (the nil id for the local system principal).
    pub user: Uuid,
    /// Its title (the start of its first message, unless given).
    pub title: String,
    /// The task in progress, if any (one at a time).
    pub active_task: Option<Uuid>,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When a message was last posted to it.
    pub updated_at: DateTime<Utc>,
}

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskStatus {
    /// Waiting for a worker.
    Queued,
    /// The model and the tools are at work.
    Running,
    /// The model answered.
    Succeeded,
    /// It stopped short: `reason` says why (a budget, the model's errors, ...).
    Failed,
    /// Cancelled by its user.
    Cancelled,
}

impl TaskStatus {
    /// Its name, as stored and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether it has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => return Err(Error::new(ErrorKind::Internal, format!("unknown task status `{other}`"))),
        })
    }
}

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TaskMode {
    /// Answers a message, with the model.
    Chat,
    /// Runs the tools of a finished task again, against its recorded model answers.
    Replay,
}

impl TaskMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Replay => "replay",
        }
    }
}

/// One request to the agent: a message of a conversation, and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    /// Its id.
    pub id: Uuid,
    /// Its conversation.
    pub conversation: Uuid,
    /// The conversation's project.
    pub project: Uuid,
    /// The `codegen` job that runs it.
    pub job: Uuid,
    /// Who posted it.
    pub created_by: Uuid,
    /// Chat or replay.
    pub mode: TaskMode,
    /// For a replay: the task replayed.
    pub replay_of: Option<Uuid>,
    /// The message.
    pub prompt: String,
    /// Where it is.
    pub status: TaskStatus,
    /// Why it failed or was cancelled.
    pub reason: Option<String>,
    /// The model's final answer.
    pub answer: Option<String>,
    /// Model requests made.
    pub steps: u32,
    /// Prompt tokens used (as the endpoint reported them, else estimated).
    pub prompt_tokens: u64,
    /// Completion tokens used.
    pub completion_tokens: u64,
    /// For a finished replay: what came out differently (see [`ReplayReport`]).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub report: Option<serde_json::Value>,
    /// When it was posted.
    pub created_at: DateTime<Utc>,
    /// When a worker first took it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One thing a conversation's clients are shown, numbered: resume after the last number seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentEvent {
    /// Its number: larger than every earlier event's of the conversation (not consecutive).
    pub seq: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The task it belongs to.
    pub task: Uuid,
    /// `message` (the user's), `status`, `delta` (answer text as it streams), `retry` (the model
    /// is asked again: text streamed since the last `step` is void), `step` (a model request
    /// starts), `tool_call`, `tool_result`, `file_changed`, `answer` (the final text).
    pub kind: String,
    /// What it says.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

/// One entry of a task's transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TranscriptEntry {
    /// Its number, from 1.
    pub seq: i64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// `start`, `model_request`, `model_retry`, `model_response`, `tool_call`, `tool_result`,
    /// `end`.
    pub kind: String,
    /// What it records.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

/// What a replay found: the tool results that differ from the recorded ones.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayReport {
    /// The task replayed.
    pub replay_of: Uuid,
    /// Tool calls run again.
    pub calls: u32,
    /// Those whose result differs.
    pub differences: Vec<ReplayDifference>,
}

/// A tool call whose result differs on replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplayDifference {
    /// The model step it belongs to (from 1).
    pub step: u32,
    /// The tool.
    pub tool: String,
    /// Its arguments.
    pub arguments: String,
    /// The recorded result (as sent to the model).
    pub recorded: String,
    /// The result now.
    pub replayed: String,
}

/// Which tasks [`Cloudx::list_tasks`] gives.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFilter {
    /// Only those of this project.
    #[serde(default)]
    pub project: Option<Uuid>,
    /// Only those of this conversation.
    #[serde(default)]
    pub conversation: Option<Uuid>,
    /// Only those with this status.
    #[serde(default)]
    pub status: Option<TaskStatus>,
    /// At most this many (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
}

impl Cloudx {
    /// Starts a conversation about `project` for `actor`, who must be able to read it.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a project `actor` cannot see, [`ErrorKind::InvalidInput`]
    /// for a title that is too long.
    pub async fn create_conversation(
        &self,
        actor: &Principal,
        project: Uuid,
        title: Option<&str>,
    ) -> Result<Conversation> {
        let title = title.map(str::trim).unwrap_or_default();
        if title.chars().count() > MAX_TITLE {
            return Err(Error::invalid(format!("title: at most {MAX_TITLE} characters")));
        }
        if title.chars().any(char::is_control) {
            return Err(Error::invalid("title: no control characters"));
        }
        self.storage().authorize(actor, project, &[ProjectAction::Read]).await?;
        store::insert_conversation(self.database(), project, owner_id(actor), title).await
    }

    /// `actor`'s conversations about `project`, latest first.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a project `actor` cannot see.
    pub async fn list_conversations(&self, actor: &Principal, project: Uuid) -> Result<Vec<Conversation>> {
        self.storage().authorize(actor, project, &[ProjectAction::Read]).await?;
        store::conversations(self.database(), project, owner_id(actor)).await
    }

    /// A conversation of `actor`'s (administrators may read every conversation).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for no such conversation, or someone else's.
    pub async fn conversation(&self, actor: &Principal, id: Uuid) -> Result<Conversation> {
        let conversation = store::conversation(self.database(), id).await?;
        if conversation.user != owner_id(actor) && !actor.is_admin() {
            return Err(Error::not_found(format!("no conversation {id}")));
        }
        Ok(conversation)
    }

    /// A conversation `actor` may post to: their own, about a project they can still read.
    async fn own_conversation(&self, actor: &Principal, id: Uuid) -> Result<Conversation> {
        let conversation = store::conversation(self.database(), id).await?;
        if conversation.user != owner_id(actor) {
            return Err(Error::not_found(format!("no conversation {id}")));
        }
        self.storage().authorize(actor, conversation.project, &[ProjectAction::Read]).await?;
        Ok(conversation)
    }

    /// Posts `text` to a conversation of `actor`'s and starts the task that answers it (a
    /// `codegen` job); the agent acts as `actor`, with `actor`'s rights on the project when it
    /// runs. One task at a time per conversation.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] for an empty or oversized message, [`ErrorKind::Conflict`]
    /// while another task of the conversation is queued or running, [`ErrorKind::NotFound`]
    /// for a conversation that is not `actor`'s.
    pub async fn post_message(
        &self,
        actor: &Principal,
        client: &Client,
        conversation: Uuid,
        text: &str,
    ) -> Result<Task> {
        if text.trim().is_empty() {
            return Err(Error::invalid("text: the message is empty"));
        }
        if text.len() > MAX_MESSAGE {
            return Err(Error::invalid(format!(
                "text: the message is {} bytes long; at most {MAX_MESSAGE}",
                text.len()
            )));
        }
        if text.contains('\0') {
            return Err(Error::invalid("text: the message contains a NUL character"));
        }
        let conversation = self.own_conversation(actor, conversation).await?;
        self.start_task(actor, client, &conversation, TaskMode::Chat, None, text).await
    }

    async fn start_task(
        &self,
        actor: &Principal,
        client: &Client,
        conversation: &Conversation,
        mode: TaskMode,
        replay_of: Option<Uuid>,
        prompt: &str,
    ) -> Result<Task> {
        if let Some(active) = conversation.active_task {
            // A task whose job ended without it (out of attempts) is settled first.
            let task = self.settle(store::task(self.database(), active).await?).await?;
            if !task.status.is_finished() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "task {} of this conversation is still {}; wait for it or cancel it",
                        task.id,
                        task.status.as_str()
                    ),
                ));
            }
        }
        let created_by = owner_id(actor);
        // The message and the first status go in with the task, before the job exists, so that
        // no worker's events can come before them.
        let message = (mode == TaskMode::Chat).then(|| llm::Message::user(prompt));
        let kind = if mode == TaskMode::Chat { "message" } else { "replay" };
        let events =
            [(kind, json!({ "text": prompt, "replay_of": replay_of })), ("status", json!({ "status": "queued" }))];
        let task = store::insert_task(
            self.database(),
            conversation,
            created_by,
            mode,
            replay_of,
            prompt,
            message.as_ref(),
            &events,
        )
        .await?;
        let started = async {
            let api_key = match actor {
                Principal::User { api_key, .. } => *api_key,
                Principal::System => None,
            };
            let mut job = NewJob::new(CODEGEN, json!({ "task": task.id }));
            job.project = Some(conversation.project);
            let (job, _) = self.queue().submit_with_key(created_by, api_key, job).await?;
            store::set_task_job(self.database(), task.id, job.id).await
        }
        .await;
        if let Err(e) = started {
            let reason = format!("the task could not be queued: {}", e.message());
            if store::finish_task(self.database(), task.id, TaskStatus::Failed, Some(&reason), None, None).await.is_ok()
            {
                store::release_conversation(self.database(), conversation.id, task.id).await.ok();
            }
            return Err(e);
        }
        let action = if mode == TaskMode::Chat { "agent_task" } else { "agent_replay" };
        if let Err(e) = self.audit_agent(actor, client, action, conversation.project, format!("task {}", task.id)).await
        {
            tracing::error!(error = %e, task = %task.id, "cannot audit an agent task");
        }
        store::task(self.database(), task.id).await
    }

    /// A task of a conversation `actor` may read.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for no such task, or one of someone else's conversation.
    pub async fn task(&self, actor: &Principal, id: Uuid) -> Result<Task> {
        let task = store::task(self.database(), id).await?;
        match self.conversation(actor, task.conversation).await {
            Ok(_) => self.settle(task).await,
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::not_found(format!("no task {id}"))),
            Err(e) => Err(e),
        }
    }

    /// `actor`'s tasks, latest first.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for a conversation that is not `actor`'s.
    pub async fn list_tasks(&self, actor: &Principal, filter: &TaskFilter) -> Result<Vec<Task>> {
        if let Some(conversation) = filter.conversation {
            self.conversation(actor, conversation).await?;
        }
        let limit = filter.limit.unwrap_or(50).clamp(1, 500);
        let mut tasks = store::tasks(self.database(), owner_id(actor), filter, limit).await?;
        for task in &mut tasks {
            if !task.status.is_finished() {
                *task = self.settle(task.clone()).await?;
            }
        }
        Ok(tasks)
    }

    /// A task's transcript after entry `after`, at most `limit` entries.
    ///
    /// # Errors
    /// As [`Cloudx::task`].
    pub async fn transcript(
        &self,
        actor: &Principal,
        id: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<TranscriptEntry>> {
        self.task(actor, id).await?;
        store::transcript(self.database(), id, after, limit.clamp(1, 10_000)).await
    }

    /// Cancels a task: a queued one at once; a running one stops its model stream and its
    /// sandbox at once in this process, within two seconds on a worker elsewhere. Cancelling a
    /// finished task changes nothing.
    ///
    /// # Errors
    /// As [`Cloudx::task`].
    pub async fn cancel_task(&self, actor: &Principal, client: &Client, id: Uuid) -> Result<Task> {
        let task = self.task(actor, id).await?;
        if task.status.is_finished() {
            return Ok(task);
        }
        // The job's cancel first: a handler stopped here then records a cancel, not a failure.
        let job = self.queue().cancel(task.job).await?;
        run::cancel_local(id);
        if let Err(e) = self.audit_agent(actor, client, "agent_cancel", task.project, format!("task {id}")).await {
            tracing::error!(error = %e, task = %id, "cannot audit a cancel");
        }
        if job.status == JobStatus::Cancelled && task.status == TaskStatus::Queued {
            // It never started: no handler will record the end.
            store::finish_task(
                self.database(),
                id,
                TaskStatus::Cancelled,
                Some("cancelled before it started"),
                None,
                None,
            )
            .await?;
            store::release_conversation(self.database(), task.conversation, id).await?;
            hub::emit_now(
                self,
                task.conversation,
                id,
                "status",
                json!({ "status": "cancelled", "reason": "cancelled before it started" }),
            )
            .await?;
        }
        self.task(actor, id).await
    }

    /// Runs a finished task's tools again, in a new task of its conversation, against the
    /// model answers recorded in its transcript (the model is not asked), and reports in the
    /// new task's `report` the tool results that came out differently. The tools act on the
    /// project as it is now, with `actor`'s rights.
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] for a task still running, or while another task of the
    /// conversation is; [`ErrorKind::InvalidInput`] for a replay (replay the original).
    pub async fn replay_task(&self, actor: &Principal, client: &Client, id: Uuid) -> Result<Task> {
        let task = self.task(actor, id).await?;
        if !task.status.is_finished() {
            return Err(Error::new(ErrorKind::Conflict, format!("task {id} is still {}", task.status.as_str())));
        }
        if task.mode == TaskMode::Replay {
            return Err(Error::invalid(format!("task {id} is a replay; replay the task it replayed")));
        }
        let conversation = self.own_conversation(actor, task.conversation).await?;
        self.start_task(actor, client, &conversation, TaskMode::Replay, Some(id), &task.prompt).await
    }

    /// The events of a conversation after number `after`, at most `limit`.
    ///
    /// # Errors
    /// As [`Cloudx::conversation`].
    pub async fn conversation_events(
        &self,
        actor: &Principal,
        conversation: Uuid,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AgentEvent>> {
        self.conversation(actor, conversation).await?;
        let mut follower = hub::EventFollower::new(self.clone(), conversation, after);
        follower.set_limit(limit);
        follower.next(std::time::Duration::ZERO).await
    }

    /// Follows a conversation's events from after number `after`: events already recorded,
    /// then each as it happens (at once when its task runs in this process, else as soon as
    /// it is stored).
    ///
    /// # Errors
    /// As [`Cloudx::conversation`].
    pub async fn follow_conversation(
        &self,
        actor: &Principal,
        conversation: Uuid,
        after: i64,
    ) -> Result<EventFollower> {
        self.conversation(actor, conversation).await?;
        Ok(hub::EventFollower::new(self.clone(), conversation, after))
    }

    /// Asks the configured model endpoint whether it answers, streams and calls tools (see
    /// [`llm::Model::check`]). Any signed-in account may ask; the key is never shown.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] when the `[llm]` configuration cannot make a client.
    pub async fn llm_check(&self, _actor: &Principal) -> Result<LlmCheck> {
        let model = self.model()?;
        Ok(model.check().await)
    }

    /// Brings a task that looks unfinished in line with its job: a job that ended without
    /// the handler recording the end (out of attempts after lost leases, cancelled while
    /// queued elsewhere) ends the task too.
    async fn settle(&self, task: Task) -> Result<Task> {
        if task.status.is_finished() || task.job.is_nil() {
            return Ok(task);
        }
        let job = match self.queue().get(task.job).await {
            Ok(job) => job,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.end_orphan(&task, TaskStatus::Failed, "its job no longer exists").await?;
                return store::task(self.database(), task.id).await;
            }
            Err(e) => return Err(e),
        };
        let (status, reason) = match job.status {
            JobStatus::Queued | JobStatus::Running => return Ok(task),
            JobStatus::Cancelled => (TaskStatus::Cancelled, "cancelled".to_owned()),
            JobStatus::Dead => (
                TaskStatus::Failed,
                format!("its job failed: {}", job.last_error.as_deref().unwrap_or("out of attempts")),
            ),
            JobStatus::Succeeded => (TaskStatus::Failed, "its job ended without recording the task's end".to_owned()),
        };
        self.end_orphan(&task, status, &reason).await?;
        store::task(self.database(), task.id).await
    }

    async fn end_orphan(&self, task: &Task, status: TaskStatus, reason: &str) -> Result<()> {
        if store::finish_task(self.database(), task.id, status, Some(reason), None, None).await? {
            store::release_conversation(self.database(), task.conversation, task.id).await?;
            hub::emit_now(self, task.conversation, task.id, "status", json!({ "status": status, "reason": reason }))
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn audit_agent(
        &self,
        actor: &Principal,
        client: &Client,
        action: &'static str,
        project: Uuid,
        detail: String,
    ) -> Result<()> {
        crate::auth::audit::append(
            self.database(),
            &crate::auth::audit::Event {
                action,
                outcome: crate::auth::audit::Outcome::Success,
                actor: actor.user_id(),
                target: Some(format!("project:{project}")),
                client,
                detail: Some(detail),
            },
        )
        .await
    }
}

/// The id a conversation records for `actor`: the account, or nil for the local system.
fn owner_id(actor: &Principal) -> Uuid {
    actor.user_id().unwrap_or(Uuid::nil())
}
