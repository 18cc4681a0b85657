//! The `codegen` job: one agent task, from its message to its answer.
//!
//! Each step asks the model (streaming its text to the conversation's followers), runs the
//! tools it called, and gives their results back, until it answers without a tool call, a
//! budget runs out, or the task is cancelled. Each step's messages are stored as one unit
//! when it completes, so a task interrupted by a restart resumes from its last complete step.
//! A replay runs the same loop with the recorded model answers in place of the model.

use std::collections::{HashMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::EventWriter;
use super::llm::{ChatRequest, Message, Model, ModelEvent, ModelTurn, Role, Usage};
use super::tools::{self, ToolBox, ToolLimits, ToolOutcome};
use super::{ReplayDifference, ReplayReport, Task, TaskMode, TaskStatus, store};
use crate::cloudx::Cloudx;
use crate::error::ErrorKind;
use crate::queue::{JobContext, JobError};

/// The tasks running in this process, to stop at once on cancel.
static RUNNING: LazyLock<Mutex<HashMap<Uuid, CancellationToken>>> = LazyLock::new(Mutex::default);

/// What a client is shown of a tool's result at most (the model gets up to
/// `llm.max_tool_output`; the transcript has it all).
const EVENT_OUTPUT: usize = 4 * 1024;

/// Stops a task running in this process at once (elsewhere, the job's cancel reaches it at
/// its worker's next heartbeat).
pub(crate) fn cancel_local(task: Uuid) {
    if let Some(token) = RUNNING.lock().expect("running tasks").get(&task) {
        token.cancel();
    }
}

struct Registered(Uuid);

impl Registered {
    fn new(task: Uuid) -> (Self, CancellationToken) {
        let token = CancellationToken::new();
        RUNNING.lock().expect("running tasks").insert(task, token.clone());
        (Self(task), token)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        RUNNING.lock().expect("running tasks").remove(&self.0);
    }
}

/// How a task ended (or why it stopped without ending).
enum End {
    Answered(String),
    Failed(String),
    Cancelled,
    /// The worker stopped it (shutdown, lost lease): it resumes on another attempt.
    Interrupted,
}

/// The `codegen` handler.
pub(crate) async fn codegen(cx: Cloudx, job: JobContext) -> Result<Value, JobError> {
    let id = job
        .job
        .payload
        .get("task")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| JobError::Fatal("the payload names no task (`{\"task\": \"<id>\"}`)".into()))?;
    let task = match store::task(cx.database(), id).await {
        Ok(task) => task,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(JobError::Fatal(format!("no task {id}"))),
        Err(e) => return Err(JobError::Retry(e.message().to_owned())),
    };
    if task.status.is_finished() {
        return Ok(json!({ "task": id, "status": task.status }));
    }
    let (_registered, local_cancel) = Registered::new(id);
    let mut events =
        EventWriter::open(&cx, task.conversation, id).await.map_err(|e| JobError::Retry(e.message().to_owned()))?;
    let end = {
        let mut run = Run {
            cx: &cx,
            job: &job,
            task: &task,
            events: &mut events,
            local_cancel: &local_cancel,
            pending: Vec::new(),
        };
        let end = run.drive().await;
        // What the last, unfinished step recorded (the model's error, say) goes in before the end.
        if !run.pending.is_empty() && !matches!(end, End::Interrupted) {
            let _ = run.commit(&[], None).await;
        }
        end
    };
    let result = conclude(&cx, &job, &task, &mut events, end, &local_cancel).await;
    events.close().await;
    result
}

/// Records how the task ended; answers the job's result.
async fn conclude(
    cx: &Cloudx,
    job: &JobContext,
    task: &Task,
    events: &mut EventWriter,
    end: End,
    local_cancel: &CancellationToken,
) -> Result<Value, JobError> {
    let db = cx.database();
    // A stop is the user's cancel when they asked for it (here, or through the job).
    let end = match end {
        End::Interrupted if local_cancel.is_cancelled() => End::Cancelled,
        End::Interrupted => match cx.queue().get(job.job.id).await {
            Ok(j) if j.cancel_requested => End::Cancelled,
            _ => End::Interrupted,
        },
        other => other,
    };
    let report = if task.mode == TaskMode::Replay { Some(replay_report(cx, task).await) } else { None };
    let report_json = report.as_ref().and_then(|r| serde_json::to_value(r).ok());
    let (status, reason, answer) = match &end {
        End::Answered(text) => (TaskStatus::Succeeded, None, Some(text.as_str())),
        End::Failed(reason) => (TaskStatus::Failed, Some(reason.as_str()), None),
        End::Cancelled => (TaskStatus::Cancelled, Some("cancelled by its user"), None),
        End::Interrupted => {
            events.emit("status", json!({ "status": "queued", "reason": "interrupted: the worker stopped; the task resumes from its last complete step" }));
            let _ = store::append_transcript(db, task.id, "interrupted", &json!({ "attempt": job.job.attempts })).await;
            return Err(JobError::Retry("stopped".into()));
        }
    };
    let _ = store::append_transcript(
        db,
        task.id,
        "end",
        &json!({ "status": status, "reason": reason, "report": report_json }),
    )
    .await;
    let recorded = store::finish_task(db, task.id, status, reason, answer, report_json.as_ref()).await;
    if let Err(e) = &recorded {
        // The job's retry records it (the loop resumes, finds the answer in the history).
        return Err(JobError::Retry(e.message().to_owned()));
    }
    if let Err(e) = store::release_conversation(db, task.conversation, task.id).await {
        tracing::error!(error = %e, task = %task.id, "cannot free the conversation for its next task");
    }
    let mut data = json!({ "status": status, "reason": reason });
    if let Some(report) = &report_json {
        data["report"] = report.clone();
    }
    events.emit("status", data);
    match end {
        End::Cancelled => Err(JobError::Retry("stopped".into())),
        _ => Ok(json!({ "task": task.id, "status": status, "reason": reason })),
    }
}

/// The differences a replay recorded, from its transcript.
async fn replay_report(cx: &Cloudx, task: &Task) -> ReplayReport {
    let mut report = ReplayReport { replay_of: task.replay_of.unwrap_or_default(), ..ReplayReport::default() };
    let entries = store::transcript(cx.database(), task.id, 0, 100_000).await.unwrap_or_default();
    for e in entries {
        match e.kind.as_str() {
            "tool_result" => report.calls += 1,
            "replay_difference" => {
                if let Ok(d) = serde_json::from_value::<ReplayDifference>(e.data) {
                    report.differences.push(d);
                }
            }
            _ => {}
        }
    }
    report
}

/// Where the model answers come from.
enum Source {
    Live(Box<Model>),
    Recorded { turns: VecDeque<ModelTurn>, results: VecDeque<(String, ToolOutcome)> },
}

struct Run<'a> {
    cx: &'a Cloudx,
    job: &'a JobContext,
    task: &'a Task,
    events: &'a mut EventWriter,
    local_cancel: &'a CancellationToken,
    /// Transcript entries not yet stored: each step's go in with its messages and usage, in
    /// one transaction.
    pending: Vec<(String, Value, i64)>,
}

impl Run<'_> {
    fn stopping(&self) -> bool {
        self.job.cancelled().is_cancelled() || self.local_cancel.is_cancelled()
    }

    fn record(&mut self, kind: &str, data: Value) {
        self.pending.push((kind.to_owned(), data, chrono::Utc::now().timestamp_micros()));
    }

    /// Stores the pending transcript entries, `messages` (for a chat) and the usage so far, in
    /// one transaction.
    async fn commit(&mut self, messages: &[Message], usage: Option<(u32, u64, u64)>) -> Result<(), End> {
        let conversation = (self.task.mode == TaskMode::Chat).then_some(self.task.conversation);
        let entries = std::mem::take(&mut self.pending);
        store::commit_step(self.cx.database(), self.task.id, conversation, &entries, messages, usage).await.map_err(
            |e| {
                if e.kind() == ErrorKind::Unavailable {
                    End::Interrupted
                } else {
                    End::Failed(format!("the transcript cannot be recorded: {}", e.message()))
                }
            },
        )
    }

    async fn drive(&mut self) -> End {
        match self.steps().await {
            Ok(end) | Err(end) => end,
        }
    }

    async fn steps(&mut self) -> Result<End, End> {
        let (cx, task) = (self.cx, self.task);
        let config = &cx.config().llm;
        let db = cx.database();
        let actor = match crate::queue::handlers::submitter(cx, &self.job.job).await {
            Ok(actor) => actor,
            Err(JobError::Fatal(reason)) => return Err(End::Failed(reason)),
            Err(JobError::Retry(_)) => return Err(End::Interrupted),
        };
        store::start_task(db, task.id).await.map_err(|_| End::Interrupted)?;
        let task_now = store::task(db, task.id).await.map_err(|_| End::Interrupted)?;
        self.events.emit("status", json!({ "status": "running", "attempt": self.job.job.attempts }));
        self.record("start", json!({ "attempt": self.job.job.attempts, "mode": task.mode, "model": config.model }));
        let started = task_now.started_at.unwrap_or_else(chrono::Utc::now);
        let deadline = tokio::time::Instant::now()
            + config
                .task_timeout
                .checked_sub((chrono::Utc::now() - started).to_std().unwrap_or_default())
                .unwrap_or_default();

        let mut source = match task.mode {
            TaskMode::Chat => Source::Live(Box::new(cx.model().map_err(|e| End::Failed(e.message().to_owned()))?)),
            TaskMode::Replay => self.recorded().await?,
        };
        let project_name = cx.storage().project(&actor, task.project).await.map(|p| p.name).unwrap_or_default();
        let system = Message::system(system_prompt(&project_name));
        // The history: stored for a chat; a replay keeps its own (the conversation is not its).
        let stored = match task.mode {
            TaskMode::Chat => store::messages(db, task.conversation).await.map_err(|_| End::Interrupted)?,
            TaskMode::Replay => vec![(task.id, Message::user(task.prompt.clone()))],
        };
        // An attempt that stored the answer but stopped before recording the end: it stands.
        if let Some((owner, last)) = stored.last()
            && *owner == task.id
            && last.role == Role::Assistant
            && last.tool_calls.is_empty()
        {
            return Ok(End::Answered(last.content.clone().unwrap_or_default()));
        }
        let mut history: Vec<Message> = stored.into_iter().map(|(_, m)| m).collect();
        let specs = tools::specs();
        let limits = ToolLimits { max_output: usize::try_from(config.max_tool_output.as_u64()).unwrap_or(16 * 1024) };
        let mut steps = task_now.steps;
        let (mut prompt_tokens, mut completion_tokens) = (task_now.prompt_tokens, task_now.completion_tokens);
        let mut sent = 0usize;
        loop {
            if self.stopping() {
                return Err(End::Interrupted);
            }
            if steps >= config.max_steps {
                return Err(End::Failed(format!(
                    "step budget exhausted: {steps} model requests made, the most a task may make (llm.max_steps)"
                )));
            }
            let used = prompt_tokens + completion_tokens;
            if used >= config.max_task_tokens {
                return Err(End::Failed(format!(
                    "token budget exhausted: {used} tokens used, {} allowed (llm.max_task_tokens)",
                    config.max_task_tokens
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(End::Failed(wall_time(config.task_timeout)));
            }
            let step = steps + 1;
            let (messages, fitted) = fit(&system, &history, &specs, config.context_tokens);
            let request = ChatRequest { messages, tools: specs.clone(), max_tokens: None };
            let new_messages: Vec<&Message> = history.iter().skip(sent).collect();
            self.record(
                "model_request",
                json!({
                    "step": step, "model": config.model, "messages": request.messages.len(),
                    "new_messages": new_messages, "trimmed_outputs": fitted.trimmed, "left_out": fitted.left_out,
                    "estimated_tokens": fitted.tokens,
                }),
            );
            sent = history.len();
            self.events.emit("step", json!({ "step": step }));
            let turn = match &mut source {
                Source::Live(model) => self.ask(model, &request, deadline, config.task_timeout).await?,
                Source::Recorded { turns, .. } => match turns.pop_front() {
                    Some(turn) => {
                        if !turn.content.is_empty() {
                            self.events.emit("delta", json!({ "text": turn.content }));
                        }
                        turn
                    }
                    None => return Err(End::Failed("the recorded task ends here without an answer".into())),
                },
            };
            steps = step;
            let usage = match (&source, &turn.usage) {
                (Source::Recorded { .. }, _) => Usage { prompt_tokens: 0, completion_tokens: 0 },
                (_, Some(u)) => *u,
                (_, None) => Usage { prompt_tokens: fitted.tokens, completion_tokens: estimate_turn(&turn) },
            };
            prompt_tokens += usage.prompt_tokens;
            completion_tokens += usage.completion_tokens;
            let usage_so_far = Some((steps, prompt_tokens, completion_tokens));
            self.record("model_response", json!({ "step": step, "turn": turn, "usage": usage }));
            if turn.tool_calls.is_empty() {
                let answer = turn.content.clone();
                self.commit(&[Message::assistant(answer.clone(), Vec::new())], usage_so_far).await?;
                self.events.emit("answer", json!({ "text": answer }));
                return Ok(End::Answered(answer));
            }
            let assistant = Message::assistant(turn.content.clone(), turn.tool_calls.clone());
            let mut unit = vec![assistant];
            let toolbox = ToolBox { cx, job: self.job, actor: &actor, project: task.project, task: task.id, limits };
            for call in &turn.tool_calls {
                self.events.emit("tool_call", json!({ "id": call.id, "name": call.name, "arguments": call.arguments }));
                self.record(
                    "tool_call",
                    json!({ "step": step, "id": call.id, "name": call.name, "arguments": call.arguments }),
                );
                let outcome = tokio::select! {
                    outcome = toolbox.call(&call.name, &call.arguments) => outcome.map_err(|_| End::Interrupted)?,
                    () = self.local_cancel.cancelled() => return Err(End::Cancelled),
                };
                self.record(
                    "tool_result",
                    json!({ "step": step, "id": call.id, "name": call.name, "outcome": outcome }),
                );
                if let Source::Recorded { results, .. } = &mut source
                    && let Some((_, recorded)) = results.pop_front()
                    && (recorded.content != outcome.content || recorded.is_error != outcome.is_error)
                {
                    let difference = ReplayDifference {
                        step,
                        tool: call.name.clone(),
                        arguments: call.arguments.clone(),
                        recorded: recorded.content,
                        replayed: outcome.content.clone(),
                    };
                    self.record("replay_difference", serde_json::to_value(&difference).unwrap_or_default());
                }
                self.events.emit(
                    "tool_result",
                    json!({
                        "id": call.id, "name": call.name, "is_error": outcome.is_error,
                        "content": cut(&outcome.content, EVENT_OUTPUT), "data": outcome.data,
                    }),
                );
                for file in &outcome.files {
                    self.events.emit(
                        "file_changed",
                        json!({ "path": file.path, "version": file.version, "deleted": file.deleted }),
                    );
                }
                unit.push(Message::tool(call.id.clone(), outcome.content));
            }
            self.commit(&unit, usage_so_far).await?;
            history.extend(unit);
        }
    }

    /// One model request, streamed to the followers; stops at once on cancel or at the
    /// task's deadline.
    async fn ask(
        &mut self,
        model: &Model,
        request: &ChatRequest,
        deadline: tokio::time::Instant,
        budget: Duration,
    ) -> Result<ModelTurn, End> {
        let mut retries: Vec<Value> = Vec::new();
        let turn = {
            let events = &mut *self.events;
            let mut on_event = |event: ModelEvent| match event {
                ModelEvent::Delta(text) => {
                    events.emit("delta", json!({ "text": text }));
                }
                ModelEvent::Retry { attempt, reason, delay } => {
                    let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                    events.emit("retry", json!({ "attempt": attempt, "reason": reason, "delay_ms": delay_ms }));
                    retries.push(json!({ "attempt": attempt, "reason": reason, "delay_ms": delay_ms }));
                }
            };
            tokio::select! {
                turn = model.complete(request, &mut on_event) => Some(turn),
                () = self.job.cancelled().cancelled() => None,
                () = self.local_cancel.cancelled() => None,
                () = tokio::time::sleep_until(deadline) => return Err(End::Failed(wall_time(budget))),
            }
        };
        for retry in retries {
            self.record("model_retry", retry);
        }
        match turn {
            None if self.local_cancel.is_cancelled() => Err(End::Cancelled),
            None => Err(End::Interrupted),
            Some(Ok(turn)) => Ok(turn),
            Some(Err(e)) => {
                self.record("model_error", json!({ "status": e.status, "message": e.message }));
                Err(End::Failed(format!("the model: {e}")))
            }
        }
    }

    /// A replay's model answers and tool results, from the replayed task's transcript (less
    /// the steps this replay already did before a restart).
    async fn recorded(&self) -> Result<Source, End> {
        let of = self.task.replay_of.ok_or_else(|| End::Failed("the replay names no task".into()))?;
        let db = self.cx.database();
        let entries = store::transcript(db, of, 0, 100_000).await.map_err(|_| End::Interrupted)?;
        let mut turns = VecDeque::new();
        let mut results = VecDeque::new();
        for e in entries {
            match e.kind.as_str() {
                "model_response" => {
                    let turn: ModelTurn = serde_json::from_value(e.data["turn"].clone()).map_err(|err| {
                        End::Failed(format!("the recorded model answer {} cannot be read: {err}", e.seq))
                    })?;
                    turns.push_back(turn);
                }
                "tool_result" => {
                    let name = e.data["name"].as_str().unwrap_or_default().to_owned();
                    let outcome: ToolOutcome = serde_json::from_value(e.data["outcome"].clone()).map_err(|err| {
                        End::Failed(format!("the recorded tool result {} cannot be read: {err}", e.seq))
                    })?;
                    results.push_back((name, outcome));
                }
                _ => {}
            }
        }
        // Steps this replay already made (it was interrupted): skip their answers and results.
        let own = store::transcript(db, self.task.id, 0, 100_000).await.map_err(|_| End::Interrupted)?;
        for e in &own {
            match e.kind.as_str() {
                "model_response" => {
                    turns.pop_front();
                }
                "tool_result" => {
                    results.pop_front();
                }
                _ => {}
            }
        }
        Ok(Source::Recorded { turns, results })
    }
}

fn wall_time(budget: Duration) -> String {
    format!("wall-time budget exhausted: the task ran for {} (llm.task_timeout)", humantime::format_duration(budget))
}

fn system_prompt(project: &str) -> String {
    format!(
        "You are the coding agent of cloudx, working on the project \"{project}\" for its user. \
         The project's files are versioned: every change you make becomes a new version, authored by the user. \
         Look before you change: list_files, read_file (with line ranges for long files) and search. \
         Change files with apply_patch (a unified diff) or write_file (whole content). \
         Check your work with run_tests, and use run_command for anything else; both run in a sandbox without network access. \
         A tool answers `error: ...` when a call fails: read the message and do something different. \
         Keep changes small and in the project's style. When you are done, answer with a short summary of what you changed and how you checked it; \
         when you cannot do what was asked (a permission, a missing tool), say so plainly."
    )
}

/// A piece of `text` of at most `max` bytes (cut at a character boundary, marked).
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &text[..end], text.len() - end)
}

/// About how many tokens a text takes (4 bytes a token: close for English and code).
fn tokens(bytes: usize) -> u64 {
    u64::try_from(bytes.div_ceil(4)).unwrap_or(u64::MAX)
}

fn estimate(message: &Message) -> u64 {
    let calls: usize = message.tool_calls.iter().map(|c| c.name.len() + c.arguments.len() + c.id.len() + 16).sum();
    tokens(message.content.as_deref().map_or(0, str::len) + calls) + 4
}

fn estimate_turn(turn: &ModelTurn) -> u64 {
    tokens(turn.content.len() + turn.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>())
}

/// How a trimmed tool result starts.
const TRIMMED: &str = "[the output of this earlier call";

/// What [`fit`] did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fitted {
    /// Tool results whose text was replaced by a note.
    trimmed: usize,
    /// Messages left out.
    left_out: usize,
    /// The request's estimated size, in tokens.
    tokens: u64,
}

/// The request's messages: the system prompt and the history, made to fit in about three
/// quarters of the context window (the rest is for the answer). First the text of older tool
/// results is replaced by a note (all but the latest four, then all but the latest); then the oldest exchanges (a user
/// message and what followed it) are left out, and then the oldest steps of the current one;
/// the current message and the latest step are always sent.
fn fit(system: &Message, history: &[Message], specs: &[super::llm::ToolSpec], context: u64) -> (Vec<Message>, Fitted) {
    let tools: u64 =
        specs.iter().map(|s| tokens(s.name.len() + s.description.len() + s.parameters.to_string().len())).sum();
    let target = (context * 3 / 4).saturating_sub(tools + estimate(system));
    let mut messages: Vec<Message> = history.to_vec();
    let mut total: u64 = messages.iter().map(estimate).sum();
    let mut fitted = Fitted::default();
    if total > target {
        let tool_indexes: Vec<usize> =
            messages.iter().enumerate().filter(|(_, m)| m.role == Role::Tool).map(|(i, _)| i).collect();
        // First all but the latest four results; if that is not enough, all but the latest.
        for keep in [4, 1] {
            let keep_from = tool_indexes.len().saturating_sub(keep);
            for &i in &tool_indexes[..keep_from] {
                if total <= target {
                    break;
                }
                let bytes = messages[i].content.as_deref().map_or(0, str::len);
                if bytes < 200 || messages[i].content.as_deref().is_some_and(|c| c.starts_with(TRIMMED)) {
                    continue;
                }
                let before = estimate(&messages[i]);
                messages[i].content = Some(format!(
                    "{TRIMMED} ({bytes} bytes) was removed to save context; call the tool again if you need it]"
                ));
                total = total - before + estimate(&messages[i]);
                fitted.trimmed += 1;
            }
        }
    }
    // Then whole segments from the start: an earlier exchange (a user message and what
    // followed it), then a step of the current exchange (an assistant message and its tool
    // results), so that no tool result loses its call. The current message and the latest
    // step always stay.
    let last_user = messages.iter().rposition(|m| m.role == Role::User);
    let mut cuts: Vec<usize> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let current = last_user.is_some_and(|u| i > u);
        if (m.role == Role::User && !current) || (current && m.role == Role::Assistant) {
            cuts.push(i);
        }
    }
    let mut keep = vec![true; messages.len()];
    let mut segments: Vec<std::ops::Range<usize>> = Vec::new();
    if cuts.first().is_some_and(|&c| c > 0) {
        segments.push(0..cuts[0]);
    }
    for pair in cuts.windows(2) {
        segments.push(pair[0]..pair[1]);
    }
    // The last cut starts the latest step (or the current exchange): never left out.
    for range in segments {
        if total <= target {
            break;
        }
        for i in range {
            if Some(i) == last_user {
                continue;
            }
            keep[i] = false;
            total -= estimate(&messages[i]);
            fitted.left_out += 1;
        }
    }
    let mut out = Vec::with_capacity(messages.len() + 2);
    out.push(system.clone());
    if fitted.left_out > 0 {
        out.push(Message::system(format!(
            "[{} earlier messages were left out to fit the model's context window]",
            fitted.left_out
        )));
    }
    out.extend(messages.into_iter().zip(keep).filter(|(_, k)| *k).map(|(m, _)| m));
    fitted.tokens = out.iter().map(estimate).sum::<u64>() + tools;
    (out, fitted)
}

#[cfg(test)]
mod tests {
    use super::super::llm::{ToolCall, ToolSpec};
    use super::*;

    fn call(id: &str) -> ToolCall {
        ToolCall { id: id.into(), name: "read_file".into(), arguments: "{}".into() }
    }

    fn spec() -> Vec<ToolSpec> {
        vec![ToolSpec { name: "read_file".into(), description: "reads".into(), parameters: json!({}) }]
    }

    fn consistent(messages: &[Message]) {
        // Every tool result follows the assistant message that called it.
        let mut open: Vec<String> = Vec::new();
        for m in messages {
            match m.role {
                Role::Assistant => open = m.tool_calls.iter().map(|c| c.id.clone()).collect(),
                Role::Tool => {
                    let id = m.tool_call_id.clone().unwrap_or_default();
                    assert!(open.contains(&id), "a tool result without its call: {id}");
                }
                _ => open.clear(),
            }
        }
    }

    fn exchange(n: usize, big: usize) -> Vec<Message> {
        let mut h = Vec::new();
        for i in 0..n {
            h.push(Message::user(format!("question {i}")));
            h.push(Message::assistant(String::new(), vec![call(&format!("c{i}"))]));
            h.push(Message::tool(format!("c{i}"), "x".repeat(big)));
            h.push(Message::assistant(format!("answer {i}"), Vec::new()));
        }
        h
    }

    #[test]
    fn small_histories_are_sent_whole() {
        let h = exchange(3, 100);
        let (out, fitted) = fit(&Message::system("s"), &h, &spec(), 64_000);
        assert_eq!(out.len(), h.len() + 1);
        assert_eq!((fitted.trimmed, fitted.left_out), (0, 0));
    }

    #[test]
    fn old_tool_output_is_trimmed_first() {
        let h = exchange(8, 8_000);
        let (out, fitted) = fit(&Message::system("s"), &h, &spec(), 16_000);
        assert!(fitted.trimmed > 0);
        assert_eq!(fitted.left_out, 0, "{fitted:?}");
        assert!(fitted.tokens <= 12_000, "{fitted:?}");
        consistent(&out);
        // The latest results are whole.
        let last_tool = out.iter().rev().find(|m| m.role == Role::Tool).unwrap();
        assert_eq!(last_tool.content.as_deref().unwrap().len(), 8_000);
    }

    #[test]
    fn old_exchanges_are_left_out_when_trimming_is_not_enough() {
        let mut h = exchange(40, 10);
        for m in &mut h {
            if m.role == Role::User {
                m.content = Some("q".repeat(2_000));
            }
        }
        h.push(Message::user("the current question"));
        let (out, fitted) = fit(&Message::system("s"), &h, &spec(), 8_000);
        assert!(fitted.left_out > 0);
        assert!(fitted.tokens <= 6_000 + 100, "{fitted:?}");
        consistent(&out);
        assert_eq!(out.last().unwrap().content.as_deref(), Some("the current question"));
        assert!(out[1].content.as_deref().unwrap().contains("left out"));
    }

    #[test]
    fn cut_keeps_character_boundaries() {
        assert_eq!(cut("abc", 10), "abc");
        let c = cut("ééé", 3);
        assert!(c.starts_with('é') && c.contains("more bytes"), "{c}");
    }
}
