//! `cloudx job ...`: jobs on the daemon you signed in to, else on this instance (as the local
//! operator).
//!
//! Waiting for a job (`submit --wait`, `logs -f`) polls it every [`POLL`]. On the way it checks
//! that some live worker runs the job's kind: on a data folder nobody runs `cloudx worker` on,
//! a job would stay queued for ever, and a command that waits for it should say so instead of
//! hanging.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cloudx_core::queue::{Job, JobEvent, JobFilter, JobStatus, NewJob};
use cloudx_core::{Error, ErrorKind};
use uuid::Uuid;

use crate::args::{GlobalArgs, JobCommand, SubmitArgs};
use crate::commands::projects::resolve;
use crate::commands::target::{self, Target};
use crate::commands::users::table;
use crate::print;

/// How often a waiting command asks about its job (two requests each time: well within the
/// daemon's default per-address limit of 600 a minute, even for a few followers at once).
pub(crate) const POLL: Duration = Duration::from_millis(500);
/// How often it checks that a worker runs the job (workers beat every five seconds).
const WORKER_CHECK: Duration = Duration::from_secs(5);
/// Events read per request.
const PAGE: u32 = 1000;

/// `cloudx job ...`.
pub(crate) async fn job(command: JobCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    let client = target::open(|| Ok(crate::commands::load_config(global, |l| l)?)).await?;
    let done = job_on(&client, command, global).await;
    client.close().await;
    done
}

async fn job_on(client: &Target, command: JobCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    match command {
        JobCommand::Submit(args) => submit(client, args, global).await?,
        JobCommand::Get { id, json } => {
            let job = client.job(id).await?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&job)?));
            } else {
                print(&describe(&job)?);
            }
        }
        JobCommand::Ls { project, kind, status, limit, json } => {
            let project = match project {
                Some(p) => Some(resolve(client, &p).await?.id),
                None => None,
            };
            let jobs = client.list_jobs(&JobFilter { project, kind, status, limit: Some(limit) }).await?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&jobs)?));
            } else {
                print(&table(
                    &["ID", "KIND", "STATUS", "ATTEMPTS", "CREATED", "PROJECT"],
                    jobs.iter().map(|j| {
                        vec![
                            j.id.to_string(),
                            j.kind.clone(),
                            j.status.as_str().to_owned(),
                            format!("{}/{}", j.attempts, j.max_attempts),
                            j.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            j.project.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                        ]
                    }),
                ));
            }
        }
        JobCommand::Cancel { id } => {
            let job = client.cancel_job(id).await?;
            if job.status == JobStatus::Running {
                print(&format!("job {id} is running: its worker stops it at its next heartbeat\n"));
            } else {
                print(&format!("cancelled job {id}\n"));
            }
        }
        JobCommand::Retry { id } => {
            let job = client.retry_job(id).await?;
            print(&format!("job {id} is queued again ({} of {} attempts used)\n", job.attempts, job.max_attempts));
        }
        JobCommand::Logs { id, follow, after } => logs(client, id, follow, after, global).await?,
        JobCommand::Workers { json } => {
            let workers = client.workers().await?;
            if json {
                print(&format!("{}\n", serde_json::to_string_pretty(&workers)?));
            } else {
                print(&table(
                    &["ID", "NAME", "HEALTH", "KINDS", "CONCURRENCY", "RUNNING", "LAST HEARTBEAT"],
                    workers.iter().map(|w| {
                        vec![
                            w.id.to_string(),
                            w.name.clone(),
                            w.health.clone(),
                            w.kinds.join(","),
                            w.concurrency.to_string(),
                            w.running.len().to_string(),
                            w.heartbeat_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        ]
                    }),
                ));
            }
        }
    }
    Ok(())
}

async fn submit(client: &Target, args: SubmitArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let payload = payload(args.payload.as_deref(), args.payload_file.as_deref())?;
    let Some(project) = &args.project else {
        return Err(Error::invalid("--project: a job belongs to a project; name it by slug or id").into());
    };
    let project = Some(resolve(client, project).await?.id);
    let new = NewJob {
        kind: args.kind,
        project,
        payload,
        priority: args.priority,
        run_at: args.run_at,
        max_attempts: args.max_attempts,
        idempotency_key: args.key,
        callback_url: args.callback_url,
    };
    let (job, created) = client.submit_job(&new).await?;
    if !args.wait {
        if args.json {
            print(&format!("{}\n", serde_json::to_string_pretty(&job)?));
        } else if created {
            print(&format!("submitted job {} ({}, {})\n", job.id, job.kind, job.status.as_str()));
        } else {
            print(&format!("job {} was submitted before with this key ({})\n", job.id, job.status.as_str()));
        }
        return Ok(());
    }
    if !args.json {
        let verb = if created { "submitted" } else { "waiting for the earlier submission with this key:" };
        print(&format!("{verb} job {} ({}); waiting for it to end\n", job.id, job.kind));
    }
    let mut watch = Watch::new(client, global);
    let job = loop {
        let job = client.job(job.id).await?;
        if job.status.is_finished() {
            break job;
        }
        watch.worker_runs(&job).await?;
        tokio::time::sleep(POLL).await;
    };
    if args.json {
        print(&format!("{}\n", serde_json::to_string_pretty(&job)?));
    } else if job.status == JobStatus::Succeeded {
        print(&format!("job {} succeeded\n", job.id));
    }
    ended(&job)
}

/// The payload from `--payload` or `--payload-file` (`-`: stdin), as JSON (default: null).
fn payload(inline: Option<&str>, file: Option<&Path>) -> anyhow::Result<serde_json::Value> {
    let stdin = || std::io::read_to_string(std::io::stdin()).context("reading the payload from stdin");
    let (text, source) = match (inline, file) {
        (Some("-"), _) => (stdin()?, "the payload on stdin".to_owned()),
        (Some(text), _) => (text.to_owned(), "--payload".to_owned()),
        (None, Some(path)) if path.as_os_str() == "-" => (stdin()?, "the payload on stdin".to_owned()),
        (None, Some(path)) => (
            std::fs::read_to_string(path)
                .map_err(|e| Error::invalid(format!("--payload-file: cannot read {}: {e}", path.display())))?,
            path.display().to_string(),
        ),
        (None, None) => return Ok(serde_json::Value::Null),
    };
    serde_json::from_str(&text).map_err(|e| Error::invalid(format!("{source} is not JSON: {e}")).into())
}

/// Succeeds for a job that succeeded; otherwise an error saying how it ended.
fn ended(job: &Job) -> anyhow::Result<()> {
    if job.status == JobStatus::Succeeded {
        return Ok(());
    }
    let why = job.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    Err(anyhow::anyhow!("job {} ended {}{why}", job.id, job.status.as_str()))
}

/// `cloudx job logs`.
async fn logs(client: &Target, id: Uuid, follow: bool, mut after: i64, global: &GlobalArgs) -> anyhow::Result<()> {
    if !follow {
        client.job(id).await?;
        drain(client, id, &mut after).await?;
        return Ok(());
    }
    let mut watch = Watch::new(client, global);
    loop {
        // The state is read before the events: a job that had ended by then has all its
        // events in, so the last drain misses none.
        let job = client.job(id).await?;
        drain(client, id, &mut after).await?;
        if job.status.is_finished() {
            return ended(&job);
        }
        watch.worker_runs(&job).await?;
        tokio::time::sleep(POLL).await;
    }
}

/// Prints the events after `after`, and moves `after` past them.
async fn drain(client: &Target, id: Uuid, after: &mut i64) -> anyhow::Result<()> {
    loop {
        let events = client.job_events(id, *after, PAGE).await?;
        for event in &events {
            show(event);
            *after = event.seq;
        }
        if events.len() < PAGE as usize {
            return Ok(());
        }
    }
}

/// Output as it was (stdout, stderr); any other event as one line on stderr.
fn show(event: &JobEvent) {
    let text = match (&event.data, event.kind.as_str()) {
        (serde_json::Value::String(text), "stdout" | "stderr") => text.clone(),
        (serde_json::Value::String(text), kind) => format!("[{kind}] {text}\n"),
        (data, kind) => format!("[{kind}] {data}\n"),
    };
    if event.kind == "stdout" {
        print(&text);
    } else {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }
}

/// Checks, now and then, that some live worker runs a job that is waited for.
pub(crate) struct Watch<'a> {
    client: &'a Target,
    /// How to start a worker on this instance.
    hint: String,
    last: Option<Instant>,
    /// False once the workers cannot be listed (on a daemon, by someone who is not an
    /// administrator): then the wait trusts the daemon.
    able: bool,
}

impl<'a> Watch<'a> {
    pub(crate) fn new(client: &'a Target, global: &GlobalArgs) -> Self {
        let hint = match (client, &global.data_dir) {
            (Target::Remote(_), _) => {
                "the daemon runs one unless worker.embedded is off; else run `cloudx worker` on its database".to_owned()
            }
            (Target::Local(_), Some(dir)) => format!("start one with `cloudx worker --data-dir {}`", dir.display()),
            (Target::Local(_), None) => "start one with `cloudx worker`".to_owned(),
        };
        Self { client, hint, last: None, able: true }
    }

    /// An error when no live worker runs `job`'s kind (checked every [`WORKER_CHECK`]).
    pub(crate) async fn worker_runs(&mut self, job: &Job) -> anyhow::Result<()> {
        if !self.able || self.last.is_some_and(|t| t.elapsed() < WORKER_CHECK) {
            return Ok(());
        }
        self.last = Some(Instant::now());
        let workers = match self.client.workers().await {
            Ok(workers) => workers,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the workers; waiting without checking them");
                self.able = false;
                return Ok(());
            }
        };
        if workers.iter().any(|w| w.health == "alive" && w.kinds.contains(&job.kind)) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "no worker that runs `{}` jobs is running on {}: job {} stays {} until one does; {}, then follow it with `cloudx job logs -f {}`",
                job.kind,
                self.client.location(),
                job.id,
                job.status.as_str(),
                self.hint,
                job.id
            ),
        )
        .into())
    }
}

/// A job, for people.
fn describe(job: &Job) -> anyhow::Result<String> {
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
    };
    let mut out = format!(
        "job {}\nkind:       {}\nproject:    {}\nstatus:     {}{}\nattempts:   {} of {}\npriority:   {}\ncreated:    {}\nrun at:     {}\nstarted:    {}\nfinished:   {}\n",
        job.id,
        job.kind,
        job.project.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        job.status.as_str(),
        if job.cancel_requested && !job.status.is_finished() { " (cancel requested)" } else { "" },
        job.attempts,
        job.max_attempts,
        job.priority,
        when(Some(job.created_at)),
        when(Some(job.run_at)),
        when(job.started_at),
        when(job.finished_at),
    );
    if let Some(worker) = job.worker {
        out.push_str(&format!("worker:     {worker}\n"));
    }
    if let Some(key) = &job.idempotency_key {
        out.push_str(&format!("key:        {key}\n"));
    }
    if let Some(error) = &job.last_error {
        out.push_str(&format!("last error: {error}\n"));
    }
    out.push_str(&format!("payload:    {}\n", job.payload));
    if let Some(result) = &job.result {
        out.push_str(&format!("result:\n{}\n", serde_json::to_string_pretty(result)?));
    }
    Ok(out)
}
