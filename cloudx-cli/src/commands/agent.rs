//! `cloudx chat` and `cloudx task ...`: the agent, on the daemon you signed in to, else on this
//! instance (as the local operator).
//!
//! On this instance nobody may be running a worker, so `chat` and `task replay --wait` run one
//! in this process for `codegen` jobs while they wait: `cloudx chat` works with no set-up.

use std::io::Write as _;
use std::time::{Duration, Instant};

use cloudx_core::ErrorKind;
use cloudx_core::agent::{AgentEvent, CODEGEN, ReplayReport, Task, TaskFilter, TaskStatus};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::args::{ChatArgs, GlobalArgs, TaskCommand};
use crate::commands::jobs::{POLL, Watch};
use crate::commands::projects::resolve;
use crate::commands::target::{self, Target};
use crate::commands::users::table;
use crate::{Exit, print};

/// How long one read of the events waits for the next (a long poll on a daemon).
const WAIT: Duration = Duration::from_secs(25);
/// How long the events may stay unreadable (the daemon restarting, say) before `chat` gives up.
const UNREACHABLE: Duration = Duration::from_secs(60);
/// The most of a tool's arguments or result shown on its line.
const LINE: usize = 160;

/// `cloudx chat`.
pub(crate) async fn chat(args: ChatArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let target = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = match LocalWorker::start(&target) {
        Ok(worker) => {
            let done = chat_on(&target, args, global).await;
            if let Some(worker) = worker {
                worker.stop().await;
            }
            done
        }
        Err(e) => Err(e),
    };
    target.close().await;
    done
}

async fn chat_on(target: &Target, args: ChatArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let project = resolve(target, &args.project).await?;
    let conversation = match args.conversation {
        Some(id) => {
            let conversation = target.conversation(id).await?;
            if conversation.project != project.id {
                return Err(cloudx_core::Error::invalid(format!(
                    "--conversation: conversation {id} is about another project ({}), not {}",
                    conversation.project, args.project
                ))
                .into());
            }
            conversation
        }
        None => target.create_conversation(project.id).await?,
    };
    let task = target.post_message(conversation.id, &args.message).await?;
    if !args.json {
        note(&format!("conversation {}, task {}", conversation.id, task.id));
    }
    tokio::select! {
        ended = follow(target, &task, args.json, global) => ended,
        _ = tokio::signal::ctrl_c() => {
            let cancelled = target.cancel_task(task.id).await;
            let message = match cancelled {
                Ok(_) => format!("interrupted: task {} cancelled", task.id),
                Err(e) => format!("interrupted; cancelling task {} failed: {e:#}", task.id),
            };
            Err(Exit { code: 130, message }.into())
        }
    }
}

/// Shows `task`'s events until it ends; an error unless it succeeded.
async fn follow(target: &Target, task: &Task, json: bool, global: &GlobalArgs) -> anyhow::Result<()> {
    let mut view = View { json, line_open: false, streamed: false };
    let mut watch = matches!(target, Target::Remote(_)).then(|| Watch::new(target, global));
    let mut started = false;
    let mut after = 0;
    let mut failing: Option<Instant> = None;
    loop {
        if !started && let Some(watch) = &mut watch {
            // Nobody may run `codegen` jobs there: say so rather than wait for ever.
            if let Ok(job) = target.job(task.job).await {
                watch.worker_runs(&job).await?;
            }
        }
        let events = match target.conversation_events(task.conversation, after, WAIT).await {
            Ok(events) => events,
            Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::RateLimited) => {
                if failing.get_or_insert_with(Instant::now).elapsed() > UNREACHABLE {
                    return Err(e.into());
                }
                tokio::time::sleep(e.retry_after().unwrap_or(Duration::from_secs(1))).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        failing = None;
        for event in events {
            after = event.seq;
            // Earlier tasks' events, of a conversation continued.
            if event.task != task.id {
                continue;
            }
            view.show(&event);
            if event.kind == "status" {
                let status = event.data["status"].as_str().unwrap_or_default();
                started |= status != "queued";
                if matches!(status, "succeeded" | "failed" | "cancelled") {
                    return ended(&target.task(task.id).await?);
                }
            }
        }
    }
}

/// Succeeds for a task that succeeded; otherwise an error saying how it ended.
fn ended(task: &Task) -> anyhow::Result<()> {
    if task.status == TaskStatus::Succeeded {
        return Ok(());
    }
    let why = task.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
    Err(Exit { code: 1, message: format!("task {} {}{why}", task.id, task.status.as_str()) }.into())
}

/// A task's events, for people (or as JSON lines).
struct View {
    json: bool,
    /// Whether the last text printed left its line open.
    line_open: bool,
    /// Whether answer text streamed since the last model step.
    streamed: bool,
}

impl View {
    fn show(&mut self, event: &AgentEvent) {
        if self.json {
            print(&format!("{}\n", serde_json::to_string(event).unwrap_or_default()));
            return;
        }
        let data = &event.data;
        match event.kind.as_str() {
            "delta" => {
                let text = data["text"].as_str().unwrap_or_default();
                print(text);
                self.line_open = !text.is_empty() && !text.ends_with('\n');
                self.streamed |= !text.is_empty();
            }
            "step" => self.streamed = false,
            "retry" => {
                self.end_line();
                let delay = data["delay_ms"].as_u64().map(|ms| format!(" in {:.1} s", ms as f64 / 1000.0));
                note(&format!(
                    "  ↻ asking the model again (attempt {}{}): {}{}",
                    data["attempt"],
                    delay.unwrap_or_default(),
                    first_line(data["reason"].as_str().unwrap_or_default()),
                    if self.streamed { "; the text above is void" } else { "" },
                ));
                self.streamed = false;
            }
            "tool_call" => {
                self.end_line();
                let arguments = data["arguments"].as_str().unwrap_or_default();
                // Compact, whatever spacing the model used.
                let arguments =
                    serde_json::from_str::<Value>(arguments).map_or_else(|_| arguments.to_owned(), |v| v.to_string());
                print(&format!("▸ {} {}\n", data["name"].as_str().unwrap_or_default(), cut(&arguments)));
            }
            "tool_result" => {
                self.end_line();
                let content = data["content"].as_str().unwrap_or_default();
                if data["is_error"].as_bool().unwrap_or(false) {
                    let content = content.strip_prefix("error: ").unwrap_or(content);
                    print(&format!("  ✗ error: {}\n", cut(first_line(content))));
                } else {
                    print(&format!("  ✓ {}\n", cut(first_line(content))));
                }
            }
            "file_changed" => {
                self.end_line();
                let path = data["path"].as_str().unwrap_or_default();
                if data["deleted"].as_bool().unwrap_or(false) {
                    print(&format!("  - {path} (deleted)\n"));
                } else {
                    print(&format!("  ~ {path} (version {})\n", data["version"]));
                }
            }
            "answer" => {
                if !self.streamed {
                    print(data["text"].as_str().unwrap_or_default());
                    self.line_open = true;
                }
                self.end_line();
            }
            "status" => {
                let status = data["status"].as_str().unwrap_or_default();
                let reason = data["reason"].as_str();
                match (status, reason) {
                    ("succeeded", _) => {
                        self.end_line();
                        note("✓ succeeded");
                    }
                    ("queued", Some(reason)) => {
                        self.end_line();
                        note(&format!("… queued again: {reason}"));
                    }
                    // How a task ended otherwise is the command's error.
                    _ => self.end_line(),
                }
            }
            // The message itself (the user's own), and kinds this version does not know.
            _ => {}
        }
    }

    fn end_line(&mut self) {
        if self.line_open {
            print("\n");
            self.line_open = false;
        }
    }
}

fn first_line(text: &str) -> &str {
    text.trim_start().lines().next().unwrap_or_default()
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(LINE) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A line about the command's progress, on stderr (stdout carries the conversation).
fn note(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
    let _ = err.flush();
}

/// A worker for `codegen` jobs in this process, on this instance, while a command waits.
struct LocalWorker {
    stop: CancellationToken,
    running: tokio::task::JoinHandle<cloudx_core::Result<()>>,
}

impl LocalWorker {
    fn start(target: &Target) -> anyhow::Result<Option<Self>> {
        let Target::Local(local) = target else { return Ok(None) };
        let cx = local.cx();
        let worker = crate::commands::worker::worker(cx, &[CODEGEN.to_owned()])?;
        let stop = CancellationToken::new();
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { worker.run(stop).await }
        });
        Ok(Some(Self { stop, running }))
    }

    /// Stops it (a task still running is handed back to the queue after `worker.grace`).
    async fn stop(self) {
        self.stop.cancel();
        match self.running.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the in-process worker failed"),
            Err(e) => tracing::warn!(error = %e, "the in-process worker's task failed"),
        }
    }
}

/// `cloudx task ...`.
pub(crate) async fn task(command: TaskCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let target = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = task_on(&target, command).await;
    target.close().await;
    done
}

async fn task_on(target: &Target, command: TaskCommand) -> anyhow::Result<()> {
    match command {
        TaskCommand::Ls { project, status, limit, json } => {
            let project = match project {
                Some(p) => Some(resolve(target, &p).await?.id),
                None => None,
            };
            let tasks =
                target.list_tasks(&TaskFilter { project, conversation: None, status, limit: Some(limit) }).await?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&tasks)?));
            } else {
                print(&table(
                    &["ID", "STATUS", "MODE", "STEPS", "CREATED", "CONVERSATION", "MESSAGE"],
                    tasks.iter().map(|t| {
                        vec![
                            t.id.to_string(),
                            t.status.as_str().to_owned(),
                            serde_json::to_value(t.mode)
                                .ok()
                                .and_then(|m| m.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            t.steps.to_string(),
                            t.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            t.conversation.to_string(),
                            short(&t.prompt, 40),
                        ]
                    }),
                ));
            }
        }
        TaskCommand::Show { id, transcript, json } => {
            let task = target.task(id).await?;
            let entries = if transcript { Some(all_entries(target, id).await?) } else { None };
            if json {
                let value = match entries {
                    Some(entries) => serde_json::json!({ "task": task, "transcript": entries }),
                    None => serde_json::to_value(&task)?,
                };
                print(&format!("{}\n", serde_json::to_string_pretty(&value)?));
            } else {
                print(&describe(&task));
                for entry in entries.unwrap_or_default() {
                    print(&format!(
                        "#{} {} {}: {}\n",
                        entry.seq,
                        entry.at.format("%H:%M:%S%.3f"),
                        entry.kind,
                        short(&entry.data.to_string(), 400)
                    ));
                }
            }
        }
        TaskCommand::Cancel { id } => {
            let task = target.cancel_task(id).await?;
            match task.status {
                TaskStatus::Cancelled => print(&format!("cancelled task {id}\n")),
                TaskStatus::Running | TaskStatus::Queued => {
                    print(&format!("task {id} is {}: it stops within seconds\n", task.status.as_str()));
                }
                other => print(&format!("task {id} had already ended ({})\n", other.as_str())),
            }
        }
        TaskCommand::Replay { id, wait } => {
            let replay = target.replay_task(id).await?;
            print(&format!("replaying task {id} as task {}\n", replay.id));
            if wait {
                let worker = LocalWorker::start(target)?;
                let waited = wait_for(target, replay.id).await;
                if let Some(worker) = worker {
                    worker.stop().await;
                }
                let replay = waited?;
                print(&report(&replay));
                ended(&replay)?;
            }
        }
    }
    Ok(())
}

/// Polls a task until it ends.
async fn wait_for(target: &Target, id: Uuid) -> anyhow::Result<Task> {
    loop {
        let task = target.task(id).await?;
        if task.status.is_finished() {
            return Ok(task);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every entry of a task's transcript.
async fn all_entries(target: &Target, id: Uuid) -> anyhow::Result<Vec<cloudx_core::agent::TranscriptEntry>> {
    const PAGE: u32 = 1000;
    let mut all = Vec::new();
    loop {
        let after = all.last().map_or(0, |e: &cloudx_core::agent::TranscriptEntry| e.seq);
        let page = target.transcript(id, after, PAGE).await?;
        let full = page.len() == PAGE as usize;
        all.extend(page);
        if !full {
            return Ok(all);
        }
    }
}

/// A replay's report, for people.
fn report(task: &Task) -> String {
    let Some(report) = task.report.clone().and_then(|r| serde_json::from_value::<ReplayReport>(r).ok()) else {
        return format!("task {} has no report ({})\n", task.id, task.status.as_str());
    };
    let mut out = format!(
        "replay of task {}: {} tool calls run again, {} came out differently\n",
        report.replay_of,
        report.calls,
        report.differences.len()
    );
    for d in &report.differences {
        out.push_str(&format!(
            "step {} {} {}\n  recorded: {}\n  now:      {}\n",
            d.step,
            d.tool,
            short(&d.arguments, 200),
            short(&d.recorded, 400),
            short(&d.replayed, 400)
        ));
    }
    out
}

/// A task, for people.
fn describe(task: &Task) -> String {
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
    };
    let mode = serde_json::to_value(task.mode).ok().and_then(|m| m.as_str().map(str::to_owned)).unwrap_or_default();
    let mut out = format!(
        "task {}\nconversation: {}\nproject:      {}\nmode:         {mode}{}\nstatus:       {}\nsteps:        {}\ntokens:       {} prompt, {} completion\ncreated:      {}\nstarted:      {}\nfinished:     {}\njob:          {}\n",
        task.id,
        task.conversation,
        task.project,
        task.replay_of.map(|r| format!(" (of task {r})")).unwrap_or_default(),
        task.status.as_str(),
        task.steps,
        task.prompt_tokens,
        task.completion_tokens,
        when(Some(task.created_at)),
        when(task.started_at),
        when(task.finished_at),
        task.job,
    );
    if let Some(reason) = &task.reason {
        out.push_str(&format!("reason:       {reason}\n"));
    }
    out.push_str(&format!("message:\n{}\n", indent(&task.prompt)));
    if let Some(answer) = &task.answer {
        out.push_str(&format!("answer:\n{}\n", indent(answer)));
    }
    if task.report.is_some() {
        out.push_str(&report(task));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

/// The first line of `text`, at most `max` characters.
fn short(text: &str, max: usize) -> String {
    let line = first_line(text);
    let mut out: String = line.chars().take(max).collect();
    if out.len() < line.len() || line.len() < text.trim().len() {
        out.push('…');
    }
    out
}
