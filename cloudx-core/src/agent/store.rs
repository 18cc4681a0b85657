//! The agent's tables: conversations, tasks, the history the model sees, transcripts and
//! events. Plain SQL both dialects share (see `on_db!`).

use chrono::{DateTime, TimeZone as _, Utc};
use uuid::Uuid;

use super::llm::Message;
use super::{AgentEvent, Conversation, Task, TaskFilter, TaskMode, TaskStatus, TranscriptEntry};
use crate::db::{Database, db_error};
use crate::error::{Error, ErrorKind, Result};

pub(super) fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

pub(super) fn time(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

fn json_error(e: serde_json::Error) -> Error {
    Error::internal("a stored agent record cannot be read", e)
}

macro_rules! conversation_columns {
    () => {
        "id, project_id, user_id, title, active_task, created_at, updated_at"
    };
}

type ConversationRow = (Uuid, Uuid, Uuid, String, Option<Uuid>, i64, i64);

fn conversation_of(r: ConversationRow) -> Conversation {
    Conversation {
        id: r.0,
        project: r.1,
        user: r.2,
        title: r.3,
        active_task: r.4,
        created_at: time(r.5),
        updated_at: time(r.6),
    }
}

pub(super) async fn insert_conversation(db: &Database, project: Uuid, user: Uuid, title: &str) -> Result<Conversation> {
    let (id, now) = (Uuid::now_v7(), now_us());
    on_db!(db, |pool| sqlx::query(
        "INSERT INTO conversations (id, project_id, user_id, title, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)"
    )
    .bind(id)
    .bind(project)
    .bind(user)
    .bind(title)
    .bind(now)
    .execute(pool)
    .await
    .map(drop))
    .map_err(|e| db_error("starting a conversation", e))?;
    conversation(db, id).await
}

pub(super) async fn conversation(db: &Database, id: Uuid) -> Result<Conversation> {
    let row: Option<ConversationRow> = on_db!(db, |pool| sqlx::query_as(concat!(
        "SELECT ",
        conversation_columns!(),
        " FROM conversations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await)
    .map_err(|e| db_error("reading a conversation", e))?;
    row.map(conversation_of).ok_or_else(|| Error::not_found(format!("no conversation {id}")))
}

pub(super) async fn conversations(db: &Database, project: Uuid, user: Uuid) -> Result<Vec<Conversation>> {
    let rows: Vec<ConversationRow> = on_db!(db, |pool| sqlx::query_as(concat!(
        "SELECT ",
        conversation_columns!(),
        " FROM conversations WHERE project_id = $1 AND user_id = $2 ORDER BY updated_at DESC LIMIT 500"
    ))
    .bind(project)
    .bind(user)
    .fetch_all(pool)
    .await)
    .map_err(|e| db_error("listing conversations", e))?;
    Ok(rows.into_iter().map(conversation_of).collect())
}

macro_rules! task_columns {
    () => {
        "t.id, t.conversation_id, c.project_id, t.job_id, t.created_by, t.mode, t.replay_of, t.prompt, t.status, \
         t.reason, t.answer, t.steps, t.prompt_tokens, t.completion_tokens, t.report, t.created_at, t.started_at, \
         t.finished_at"
    };
}

/// A task's row, as [`task_columns`] selects it.
struct TaskRow {
    id: Uuid,
    conversation: Uuid,
    project: Uuid,
    job: Uuid,
    created_by: Uuid,
    mode: String,
    replay_of: Option<Uuid>,
    prompt: String,
    status: String,
    reason: Option<String>,
    answer: Option<String>,
    steps: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    report: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
}

macro_rules! task_row_from {
    ($row:ty) => {
        impl<'r> sqlx::FromRow<'r, $row> for TaskRow {
            fn from_row(r: &'r $row) -> std::result::Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok(TaskRow {
                    id: r.try_get(0)?,
                    conversation: r.try_get(1)?,
                    project: r.try_get(2)?,
                    job: r.try_get(3)?,
                    created_by: r.try_get(4)?,
                    mode: r.try_get(5)?,
                    replay_of: r.try_get(6)?,
                    prompt: r.try_get(7)?,
                    status: r.try_get(8)?,
                    reason: r.try_get(9)?,
                    answer: r.try_get(10)?,
                    steps: r.try_get(11)?,
                    prompt_tokens: r.try_get(12)?,
                    completion_tokens: r.try_get(13)?,
                    report: r.try_get(14)?,
                    created_at: r.try_get(15)?,
                    started_at: r.try_get(16)?,
                    finished_at: r.try_get(17)?,
                })
            }
        }
    };
}
task_row_from!(sqlx::sqlite::SqliteRow);
task_row_from!(sqlx::postgres::PgRow);

fn task_of(r: TaskRow) -> Result<Task> {
    Ok(Task {
        id: r.id,
        conversation: r.conversation,
        project: r.project,
        job: r.job,
        created_by: r.created_by,
        mode: if r.mode == "replay" { TaskMode::Replay } else { TaskMode::Chat },
        replay_of: r.replay_of,
        prompt: r.prompt,
        status: TaskStatus::parse(&r.status)?,
        reason: r.reason,
        answer: r.answer,
        steps: u32::try_from(r.steps).unwrap_or(u32::MAX),
        prompt_tokens: u64::try_from(r.prompt_tokens).unwrap_or(0),
        completion_tokens: u64::try_from(r.completion_tokens).unwrap_or(0),
        report: r.report.as_deref().map(serde_json::from_str).transpose().map_err(json_error)?,
        created_at: time(r.created_at),
        started_at: r.started_at.map(time),
        finished_at: r.finished_at.map(time),
    })
}

/// Inserts a queued task and makes it the conversation's active one, with the message it adds
/// to the conversation (if any) and its first events, in one transaction: refused with
/// [`ErrorKind::Conflict`] while another task of the conversation is unfinished.
#[allow(clippy::too_many_arguments)]
pub(super) async fn insert_task(
    db: &Database,
    conversation: &Conversation,
    created_by: Uuid,
    mode: TaskMode,
    replay_of: Option<Uuid>,
    prompt: &str,
    message: Option<&Message>,
    events: &[(&str, serde_json::Value)],
) -> Result<Task> {
    let (id, now) = (Uuid::now_v7(), now_us());
    let message =
        message.map(serde_json::to_string).transpose().map_err(|e| Error::internal("a message cannot be stored", e))?;
    // The first message names an untitled conversation.
    let title: String = {
        let line = prompt.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
        let mut t: String = line.chars().filter(|c| !c.is_control()).take(80).collect();
        if line.chars().count() > 80 {
            t.push('…');
        }
        t
    };
    macro_rules! insert {
        ($tx:expr) => {
            async {
                let mut tx = $tx;
                let claimed = sqlx::query(
                    "UPDATE conversations SET active_task = $1, updated_at = $2, \
                     title = CASE WHEN title = '' THEN $3 ELSE title END \
                     WHERE id = $4 AND (active_task IS NULL OR active_task IN \
                     (SELECT id FROM agent_tasks WHERE status IN ('succeeded', 'failed', 'cancelled')))",
                )
                .bind(id)
                .bind(now)
                .bind(&title)
                .bind(conversation.id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if claimed == 0 {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO agent_tasks (id, conversation_id, job_id, created_by, mode, replay_of, prompt, status, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8)",
                )
                .bind(id)
                .bind(conversation.id)
                .bind(Uuid::nil())
                .bind(created_by)
                .bind(mode.as_str())
                .bind(replay_of)
                .bind(prompt)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if let Some(text) = &message {
                    let (seq,): (i64,) =
                        sqlx::query_as("SELECT COALESCE(MAX(seq), 0) + 1 FROM agent_messages WHERE conversation_id = $1")
                            .bind(conversation.id)
                            .fetch_one(&mut *tx)
                            .await?;
                    sqlx::query(
                        "INSERT INTO agent_messages (conversation_id, seq, task_id, message) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(conversation.id)
                    .bind(seq)
                    .bind(id)
                    .bind(text)
                    .execute(&mut *tx)
                    .await?;
                }
                let (mut last,): (i64,) =
                    sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM agent_events WHERE conversation_id = $1")
                        .bind(conversation.id)
                        .fetch_one(&mut *tx)
                        .await?;
                for (kind, data) in events {
                    last = (last + 1).max(now);
                    sqlx::query(
                        "INSERT INTO agent_events (conversation_id, seq, at, task_id, kind, data) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(conversation.id)
                    .bind(last)
                    .bind(now)
                    .bind(id)
                    .bind(*kind)
                    .bind(data.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await.map(|()| true)
            }
            .await
        };
    }
    let lock = i64::from_be_bytes(conversation.id.as_bytes()[8..].try_into().expect("8 bytes"));
    let inserted: std::result::Result<bool, sqlx::Error> = in_write_tx!(db, lock = lock, |tx| insert!(tx));
    if !inserted.map_err(|e| db_error("starting a task", e))? {
        return Err(Error::new(
            ErrorKind::Conflict,
            "another task of this conversation is still queued or running; wait for it or cancel it",
        ));
    }
    task(db, id).await
}

pub(super) async fn set_task_job(db: &Database, id: Uuid, job: Uuid) -> Result<()> {
    on_db!(db, |pool| sqlx::query("UPDATE agent_tasks SET job_id = $1 WHERE id = $2")
        .bind(job)
        .bind(id)
        .execute(pool)
        .await
        .map(drop))
    .map_err(|e| db_error("recording a task's job", e))
}

pub(super) async fn task(db: &Database, id: Uuid) -> Result<Task> {
    let row: Option<TaskRow> = on_db!(db, |pool| sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM agent_tasks t JOIN conversations c ON c.id = t.conversation_id WHERE t.id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await)
    .map_err(|e| db_error("reading a task", e))?;
    row.map(task_of).transpose()?.ok_or_else(|| Error::not_found(format!("no task {id}")))
}

pub(super) async fn tasks(db: &Database, user: Uuid, filter: &TaskFilter, limit: u32) -> Result<Vec<Task>> {
    let status = filter.status.map(TaskStatus::as_str);
    let rows: Vec<TaskRow> = on_db!(db, |pool| sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM agent_tasks t JOIN conversations c ON c.id = t.conversation_id \
         WHERE c.user_id = $1 AND ($2 IS NULL OR c.project_id = $2) AND ($3 IS NULL OR t.conversation_id = $3) \
         AND ($4 IS NULL OR t.status = $4) ORDER BY t.created_at DESC LIMIT $5"
    ))
    .bind(user)
    .bind(filter.project)
    .bind(filter.conversation)
    .bind(status)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await)
    .map_err(|e| db_error("listing tasks", e))?;
    rows.into_iter().map(task_of).collect()
}

/// Marks a task running (its first start is kept).
pub(super) async fn start_task(db: &Database, id: Uuid) -> Result<()> {
    on_db!(db, |pool| sqlx::query(
        "UPDATE agent_tasks SET status = 'running', started_at = COALESCE(started_at, $1) \
         WHERE id = $2 AND status IN ('queued', 'running')"
    )
    .bind(now_us())
    .bind(id)
    .execute(pool)
    .await
    .map(drop))
    .map_err(|e| db_error("starting a task", e))
}

/// Ends a task that has not ended; says whether it did.
pub(super) async fn finish_task(
    db: &Database,
    id: Uuid,
    status: TaskStatus,
    reason: Option<&str>,
    answer: Option<&str>,
    report: Option<&serde_json::Value>,
) -> Result<bool> {
    let report = report.map(serde_json::Value::to_string);
    let done = on_db!(db, |pool| sqlx::query(
        "UPDATE agent_tasks SET status = $1, reason = $2, answer = $3, report = $4, finished_at = $5 \
         WHERE id = $6 AND status IN ('queued', 'running')"
    )
    .bind(status.as_str())
    .bind(reason)
    .bind(answer)
    .bind(report)
    .bind(now_us())
    .bind(id)
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))
    .map_err(|e| db_error("ending a task", e))?;
    Ok(done > 0)
}

/// Frees the conversation for its next task, if `task` is the active one.
pub(super) async fn release_conversation(db: &Database, conversation: Uuid, task: Uuid) -> Result<()> {
    on_db!(db, |pool| sqlx::query("UPDATE conversations SET active_task = NULL WHERE id = $1 AND active_task = $2")
        .bind(conversation)
        .bind(task)
        .execute(pool)
        .await
        .map(drop))
    .map_err(|e| db_error("ending a task", e))
}

/// The conversation's history, in order, with the task each message belongs to.
pub(super) async fn messages(db: &Database, conversation: Uuid) -> Result<Vec<(Uuid, Message)>> {
    let rows: Vec<(Uuid, String)> = on_db!(db, |pool| sqlx::query_as(
        "SELECT task_id, message FROM agent_messages WHERE conversation_id = $1 ORDER BY seq"
    )
    .bind(conversation)
    .fetch_all(pool)
    .await)
    .map_err(|e| db_error("reading the conversation", e))?;
    rows.into_iter().map(|(task, m)| Ok((task, serde_json::from_str(&m).map_err(json_error)?))).collect()
}

pub(super) async fn append_transcript(db: &Database, task: Uuid, kind: &str, data: &serde_json::Value) -> Result<i64> {
    let data = data.to_string();
    let at = now_us();
    macro_rules! append {
        ($tx:expr) => {
            async {
                let mut tx = $tx;
                let (seq,): (i64,) =
                    sqlx::query_as("SELECT COALESCE(MAX(seq), 0) + 1 FROM agent_transcript WHERE task_id = $1")
                        .bind(task)
                        .fetch_one(&mut *tx)
                        .await?;
                sqlx::query("INSERT INTO agent_transcript (task_id, seq, at, kind, data) VALUES ($1, $2, $3, $4, $5)")
                    .bind(task)
                    .bind(seq)
                    .bind(at)
                    .bind(kind)
                    .bind(&data)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await.map(|()| seq)
            }
            .await
        };
    }
    let lock = i64::from_be_bytes(task.as_bytes()[8..].try_into().expect("8 bytes"));
    let appended: std::result::Result<i64, sqlx::Error> = in_write_tx!(db, lock = lock, |tx| append!(tx));
    appended.map_err(|e| db_error("recording the transcript", e))
}

pub(super) async fn transcript(db: &Database, task: Uuid, after: i64, limit: u32) -> Result<Vec<TranscriptEntry>> {
    let rows: Vec<(i64, i64, String, String)> = on_db!(db, |pool| sqlx::query_as(
        "SELECT seq, at, kind, data FROM agent_transcript WHERE task_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    )
    .bind(task)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await)
    .map_err(|e| db_error("reading the transcript", e))?;
    rows.into_iter()
        .map(|(seq, at, kind, data)| {
            Ok(TranscriptEntry { seq, at: time(at), kind, data: serde_json::from_str(&data).map_err(json_error)? })
        })
        .collect()
}

/// Stores events (one transaction).
pub(super) async fn insert_events(
    db: &Database,
    conversation: Uuid,
    events: &[std::sync::Arc<AgentEvent>],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let postgres = matches!(db, Database::Postgres(_));
    macro_rules! insert {
        ($tx:expr) => {
            async {
                let mut tx = $tx;
                if postgres {
                    sqlx::query(RELAXED).execute(&mut *tx).await?;
                }
                for e in events {
                    sqlx::query(
                        "INSERT INTO agent_events (conversation_id, seq, at, task_id, kind, data) VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (conversation_id, seq) DO NOTHING",
                    )
                    .bind(conversation)
                    .bind(e.seq)
                    .bind(e.at.timestamp_micros())
                    .bind(e.task)
                    .bind(&e.kind)
                    .bind(e.data.to_string())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }
            .await
        };
    }
    let stored: std::result::Result<(), sqlx::Error> = in_write_tx!(db, |tx| insert!(tx));
    stored.map_err(|e| db_error("recording the conversation's events", e))
}

pub(super) async fn events(db: &Database, conversation: Uuid, after: i64, limit: u32) -> Result<Vec<AgentEvent>> {
    let rows: Vec<(i64, i64, Uuid, String, String)> = on_db!(db, |pool| sqlx::query_as(
        "SELECT seq, at, task_id, kind, data FROM agent_events WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    )
    .bind(conversation)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await)
    .map_err(|e| db_error("reading the conversation's events", e))?;
    rows.into_iter()
        .map(|(seq, at, task, kind, data)| {
            Ok(AgentEvent { seq, at: time(at), task, kind, data: serde_json::from_str(&data).map_err(json_error)? })
        })
        .collect()
}

pub(super) async fn last_event(db: &Database, conversation: Uuid) -> Result<i64> {
    let (seq,): (i64,) =
        on_db!(db, |pool| sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM agent_events WHERE conversation_id = $1")
            .bind(conversation)
            .fetch_one(pool)
            .await)
        .map_err(|e| db_error("reading the conversation's events", e))?;
    Ok(seq)
}

/// On Postgres, the agent's own records (a step's transcript and messages, events) are
/// committed without waiting for the write-ahead log's flush: a crash of the database server
/// may lose the last few milliseconds of them (never a file's version, written with its own
/// durable commit), and a task that loses its last step runs it again. A wait per step for the
/// disk is most of what a step would otherwise cost.
const RELAXED: &str = "SET LOCAL synchronous_commit = off";

/// Stores a step: its transcript entries, the messages it adds to the conversation (when
/// `conversation` is given) and the task's usage so far, in one transaction.
pub(super) async fn commit_step(
    db: &Database,
    task: Uuid,
    conversation: Option<Uuid>,
    entries: &[(String, serde_json::Value, i64)],
    messages: &[Message],
    usage: Option<(u32, u64, u64)>,
) -> Result<()> {
    let texts: Vec<String> = match conversation {
        Some(_) => messages
            .iter()
            .map(serde_json::to_string)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::internal("a message cannot be stored", e))?,
        None => Vec::new(),
    };
    if entries.is_empty() && texts.is_empty() && usage.is_none() {
        return Ok(());
    }
    let postgres = matches!(db, Database::Postgres(_));
    macro_rules! commit {
        ($tx:expr) => {
            async {
                let mut tx = $tx;
                if postgres {
                    // See `RELAXED`.
                    sqlx::query(RELAXED).execute(&mut *tx).await?;
                }
                if !entries.is_empty() {
                    let (mut seq,): (i64,) =
                        sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM agent_transcript WHERE task_id = $1")
                            .bind(task)
                            .fetch_one(&mut *tx)
                            .await?;
                    for (kind, data, at) in entries {
                        seq += 1;
                        sqlx::query(
                            "INSERT INTO agent_transcript (task_id, seq, at, kind, data) VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(task)
                        .bind(seq)
                        .bind(at)
                        .bind(kind)
                        .bind(data.to_string())
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                if let (Some(conversation), false) = (conversation, texts.is_empty()) {
                    let (mut seq,): (i64,) =
                        sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM agent_messages WHERE conversation_id = $1")
                            .bind(conversation)
                            .fetch_one(&mut *tx)
                            .await?;
                    for text in &texts {
                        seq += 1;
                        sqlx::query(
                            "INSERT INTO agent_messages (conversation_id, seq, task_id, message) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(conversation)
                        .bind(seq)
                        .bind(task)
                        .bind(text)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                if let Some((steps, prompt, completion)) = usage {
                    sqlx::query(
                        "UPDATE agent_tasks SET steps = $1, prompt_tokens = $2, completion_tokens = $3 WHERE id = $4",
                    )
                    .bind(i64::from(steps))
                    .bind(i64::try_from(prompt).unwrap_or(i64::MAX))
                    .bind(i64::try_from(completion).unwrap_or(i64::MAX))
                    .bind(task)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await
            }
            .await
        };
    }
    // One task writes its transcript, and one task at a time its conversation: no lock needed.
    let committed: std::result::Result<(), sqlx::Error> = in_write_tx!(db, |tx| commit!(tx));
    committed.map_err(|e| db_error("recording the task's step", e))
}
