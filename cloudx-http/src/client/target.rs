//! Where a front end acts: on a daemon through its HTTP API ([`Client`]), or on the embedded core
//! in this process, as one principal (the local system principal of the CLI and of
//! `cloudx.open`, or a user it names). The CLI and the Python extension call the same methods
//! either way, so that both modes have one vocabulary and one behaviour.

use std::path::Path;

use cloudx_core::agent::{AgentEvent, Conversation, Task, TaskFilter, TranscriptEntry};
use cloudx_core::auth::audit::Client as AuditClient;
use cloudx_core::queue::{Job, JobEvent, JobFilter, JobStatus, NewJob, WorkerInfo};
use cloudx_core::sandbox::{OutputChunk, ProjectExec};
use cloudx_core::storage::{ByteStream, FileVersion, Member, NewProject, Project, ProjectFilter, PutOptions, Tree};
use cloudx_core::{Cloudx, Error, ErrorKind, Principal, ProjectRole, Result};
use futures_util::StreamExt as _;
use uuid::Uuid;

use tokio::sync::mpsc;

use super::{Client, Downloaded, Opened, write_file_atomically};

/// A daemon, or the embedded core.
#[derive(Debug)]
pub enum Target {
    /// A daemon.
    Remote(Client),
    /// The core in this process.
    Local(Local),
}

/// The embedded core and who acts on it.
#[derive(Debug)]
pub struct Local {
    cx: Cloudx,
    actor: Principal,
    audit: AuditClient,
}

impl Local {
    /// The core.
    pub fn cx(&self) -> &Cloudx {
        &self.cx
    }

    /// Who acts.
    pub fn actor(&self) -> &Principal {
        &self.actor
    }

    /// What the audit log records as the client of each change.
    pub fn audit(&self) -> &AuditClient {
        &self.audit
    }
}

impl Target {
    /// The embedded core `cx`, acting as `actor`; `user_agent` names the front end in the audit
    /// log (`cloudx-cli/0.1.0 (local)`).
    pub fn local(cx: Cloudx, actor: Principal, user_agent: &str) -> Self {
        Target::Local(Local { cx, actor, audit: AuditClient::new(None, Some(user_agent)) })
    }

    /// Closes the embedded core (its database).
    pub async fn close(self) {
        if let Target::Local(l) = self {
            l.cx.close().await;
        }
    }

    /// The account of `email` (for `--owner`), on the embedded core.
    pub async fn user_id(&self, email: &str) -> Result<Uuid> {
        match self {
            Target::Remote(_) => Err(Error::invalid("--owner is for the local instance; a daemon makes you the owner")),
            Target::Local(Local { cx, actor, .. }) => {
                let email = email.trim().to_lowercase();
                let users = cx.auth().list_users(actor).await?;
                Ok(users
                    .into_iter()
                    .find(|u| u.email == email)
                    .ok_or_else(|| Error::not_found(format!("owner: no account `{email}`")))?
                    .id)
            }
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Target::Local(_))
    }

    pub async fn list_projects(&self, deleted: bool, all: bool, slug: Option<&str>) -> Result<Vec<Project>> {
        Ok(match self {
            Target::Remote(c) => c.list_projects(deleted, all, slug).await?,
            Target::Local(Local { cx, actor, .. }) => {
                let filter = ProjectFilter { deleted, all, slug: slug.map(str::to_owned) };
                cx.storage().list_projects(actor, &filter).await?
            }
        })
    }

    /// A project named by id, or by slug among the caller's projects.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for no such project, [`ErrorKind::Conflict`] for a slug two of
    /// the caller's projects share (they have different owners).
    pub async fn resolve_project(&self, project: &str) -> Result<Project> {
        if let Ok(id) = Uuid::parse_str(project) {
            return self.project(id).await;
        }
        let mut found = self.list_projects(false, false, Some(project)).await?;
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Error::not_found(format!("no project `{project}` among yours"))),
            n => Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "{n} of your projects have the slug `{project}` (they have different owners); name one by id: {}",
                    found.iter().map(|p| p.id.to_string()).collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }

    pub async fn create_project(&self, new: &NewProject) -> Result<Project> {
        Ok(match self {
            Target::Remote(c) => c.create_project(new).await?,
            Target::Local(l) => l.cx.storage().create_project(&l.actor, &l.audit, new.clone()).await?,
        })
    }

    pub async fn project(&self, id: Uuid) -> Result<Project> {
        Ok(match self {
            Target::Remote(c) => c.project(id).await?,
            Target::Local(l) => l.cx.storage().project(&l.actor, id).await?,
        })
    }

    pub async fn members(&self, id: Uuid) -> Result<Vec<Member>> {
        Ok(match self {
            Target::Remote(c) => c.members(id).await?,
            Target::Local(l) => l.cx.storage().members(&l.actor, id).await?,
        })
    }

    pub async fn set_member(&self, id: Uuid, user: &str, role: ProjectRole) -> Result<Member> {
        Ok(match self {
            Target::Remote(c) => c.set_member(id, user, role).await?,
            Target::Local(l) => l.cx.storage().set_member(&l.actor, &l.audit, id, user, role).await?,
        })
    }

    pub async fn remove_member(&self, id: Uuid, user: &str) -> Result<()> {
        match self {
            Target::Remote(c) => c.remove_member(id, user).await?,
            Target::Local(l) => l.cx.storage().remove_member(&l.actor, &l.audit, id, user).await?,
        }
        Ok(())
    }

    pub async fn transfer_project(&self, id: Uuid, to: &str) -> Result<Project> {
        Ok(match self {
            Target::Remote(c) => c.transfer_project(id, to).await?,
            Target::Local(l) => l.cx.storage().transfer_project(&l.actor, &l.audit, id, to).await?,
        })
    }

    pub async fn delete_project(&self, id: Uuid, purge: bool) -> Result<()> {
        match self {
            Target::Remote(c) => c.delete_project(id, purge).await?,
            Target::Local(l) if purge => l.cx.storage().purge_project(&l.actor, &l.audit, id).await?,
            Target::Local(l) => l.cx.storage().delete_project(&l.actor, &l.audit, id).await?,
        }
        Ok(())
    }

    pub async fn restore_project(&self, id: Uuid) -> Result<Project> {
        Ok(match self {
            Target::Remote(c) => c.restore_project(id).await?,
            Target::Local(l) => l.cx.storage().restore_project(&l.actor, &l.audit, id).await?,
        })
    }

    pub async fn tree(&self, id: Uuid, prefix: &str, version: Option<i64>, recursive: bool) -> Result<Tree> {
        Ok(match self {
            Target::Remote(c) => c.tree(id, prefix, version, recursive).await?,
            Target::Local(l) => l.cx.storage().list_files(&l.actor, id, prefix, version, recursive).await?,
        })
    }

    pub async fn put_file(
        &self,
        id: Uuid,
        path: &str,
        local: &Path,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> Result<FileVersion> {
        match self {
            Target::Remote(c) => c.put_file(id, path, local, expected_version, message).await,
            Target::Local(Local { cx, actor, audit }) => {
                let read_error = |e: std::io::Error| Error::invalid(format!("cannot read {}: {e}", local.display()));
                let file = tokio::fs::File::open(local).await.map_err(read_error)?;
                let size = file.metadata().await.map_err(read_error)?.len();
                let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
                let options =
                    PutOptions { expected_version, message: message.map(str::to_owned), declared_size: Some(size) };
                cx.storage().put_file(actor, audit, id, path, body, options).await
            }
        }
    }

    pub async fn get_file(&self, id: Uuid, path: &str, version: Option<i64>, local: &Path) -> Result<Downloaded> {
        match self {
            Target::Remote(c) => Ok(c.get_file(id, path, version, local).await?),
            Target::Local(Local { cx, actor, .. }) => {
                let download = cx.storage().open_file(actor, id, path, version).await?;
                let version = download.file.version;
                let body = download.stream(None).await?;
                let chunks = body.map(|chunk| {
                    chunk.map_err(|e| Error::new(ErrorKind::Internal, format!("cannot read the file's content: {e}")))
                });
                let size = write_file_atomically(local, chunks).await?;
                Ok(Downloaded { version, size })
            }
        }
    }

    pub async fn history(&self, id: Uuid, path: &str, limit: u32) -> Result<Vec<FileVersion>> {
        Ok(match self {
            Target::Remote(c) => c.history(id, path, limit).await?,
            Target::Local(l) => l.cx.storage().history(&l.actor, id, path, limit).await?,
        })
    }

    pub async fn delete_file(
        &self,
        id: Uuid,
        path: &str,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> Result<i64> {
        match self {
            Target::Remote(c) => c.delete_file(id, path, expected_version, message).await,
            Target::Local(Local { cx, actor, audit }) => {
                cx.storage().delete_file(actor, audit, id, path, expected_version, message).await
            }
        }
    }

    pub async fn restore_file(&self, id: Uuid, path: &str, version: Option<i64>) -> Result<FileVersion> {
        Ok(match self {
            Target::Remote(c) => c.restore_file(id, path, version).await?,
            Target::Local(Local { cx, actor, audit }) => {
                cx.storage().restore_file(actor, audit, id, path, version).await?
            }
        })
    }

    pub async fn move_file(&self, id: Uuid, from: &str, to: &str, message: Option<&str>) -> Result<i64> {
        Ok(match self {
            Target::Remote(c) => c.move_file(id, from, to, message).await?,
            Target::Local(Local { cx, actor, audit }) => {
                cx.storage().move_file(actor, audit, id, from, to, message).await?
            }
        })
    }

    pub async fn submit_job(&self, new: &NewJob) -> Result<(Job, bool)> {
        Ok(match self {
            Target::Remote(c) => c.submit_job(new).await?,
            Target::Local(l) => l.cx.submit_job(&l.actor, &l.audit, new.clone()).await?,
        })
    }

    pub async fn job(&self, id: Uuid) -> Result<Job> {
        Ok(match self {
            Target::Remote(c) => c.job(id).await?,
            Target::Local(l) => l.cx.job(&l.actor, id).await?,
        })
    }

    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        Ok(match self {
            Target::Remote(c) => c.list_jobs(filter).await?,
            Target::Local(l) => l.cx.list_jobs(&l.actor, filter).await?,
        })
    }

    pub async fn cancel_job(&self, id: Uuid) -> Result<Job> {
        Ok(match self {
            Target::Remote(c) => c.cancel_job(id).await?,
            Target::Local(l) => l.cx.cancel_job(&l.actor, &l.audit, id).await?,
        })
    }

    pub async fn retry_job(&self, id: Uuid) -> Result<Job> {
        Ok(match self {
            Target::Remote(c) => c.retry_job(id).await?,
            Target::Local(l) => l.cx.retry_job(&l.actor, &l.audit, id).await?,
        })
    }

    pub async fn job_events(&self, id: Uuid, after: i64, limit: u32) -> Result<Vec<JobEvent>> {
        Ok(match self {
            Target::Remote(c) => c.job_events(id, after, limit).await?,
            Target::Local(l) => l.cx.job_events(&l.actor, id, after, limit).await?,
        })
    }

    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        match self {
            Target::Remote(c) => c.workers().await,
            Target::Local(l) => l.cx.workers(&l.actor).await,
        }
    }

    pub async fn create_conversation(&self, project: Uuid) -> Result<Conversation> {
        Ok(match self {
            Target::Remote(c) => c.create_conversation(project, None).await?,
            Target::Local(l) => l.cx.create_conversation(&l.actor, project, None).await?,
        })
    }

    pub async fn conversation(&self, id: Uuid) -> Result<Conversation> {
        Ok(match self {
            Target::Remote(c) => c.conversation(id).await?,
            Target::Local(l) => l.cx.conversation(&l.actor, id).await?,
        })
    }

    pub async fn post_message(&self, conversation: Uuid, text: &str) -> Result<Task> {
        Ok(match self {
            Target::Remote(c) => c.post_message(conversation, text).await?,
            Target::Local(l) => l.cx.post_message(&l.actor, &l.audit, conversation, text).await?,
        })
    }

    /// A conversation's events after `after`, waiting up to `wait` for the first.
    pub async fn conversation_events(
        &self,
        conversation: Uuid,
        after: i64,
        wait: std::time::Duration,
    ) -> Result<Vec<AgentEvent>> {
        match self {
            Target::Remote(c) => Ok(c.conversation_events(conversation, after, 1000, wait).await?.events),
            Target::Local(Local { cx, actor, .. }) => {
                cx.follow_conversation(actor, conversation, after).await?.next(wait).await
            }
        }
    }

    pub async fn task(&self, id: Uuid) -> Result<Task> {
        Ok(match self {
            Target::Remote(c) => c.task(id).await?,
            Target::Local(l) => l.cx.task(&l.actor, id).await?,
        })
    }

    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        Ok(match self {
            Target::Remote(c) => c.list_tasks(filter).await?,
            Target::Local(l) => l.cx.list_tasks(&l.actor, filter).await?,
        })
    }

    pub async fn transcript(&self, id: Uuid, after: i64, limit: u32) -> Result<Vec<TranscriptEntry>> {
        Ok(match self {
            Target::Remote(c) => c.transcript(id, after, limit).await?,
            Target::Local(l) => l.cx.transcript(&l.actor, id, after, limit).await?,
        })
    }

    pub async fn cancel_task(&self, id: Uuid) -> Result<Task> {
        Ok(match self {
            Target::Remote(c) => c.cancel_task(id).await?,
            Target::Local(l) => l.cx.cancel_task(&l.actor, &l.audit, id).await?,
        })
    }

    pub async fn replay_task(&self, id: Uuid) -> Result<Task> {
        Ok(match self {
            Target::Remote(c) => c.replay_task(id).await?,
            Target::Local(l) => l.cx.replay_task(&l.actor, &l.audit, id).await?,
        })
    }

    /// Writes `body` as a new version of `path` (`size`: its length, when known ahead).
    /// An error of `body` aborts the write: no version is made.
    ///
    /// # Errors
    /// As [`Storage::put_file`](cloudx_core::storage::Storage::put_file).
    pub async fn put_stream(
        &self,
        id: Uuid,
        path: &str,
        body: ByteStream,
        size: Option<u64>,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> Result<FileVersion> {
        match self {
            Target::Remote(c) => c.put_stream(id, path, body, size, expected_version, message).await,
            Target::Local(Local { cx, actor, audit }) => {
                let options = PutOptions { expected_version, message: message.map(str::to_owned), declared_size: size };
                cx.storage().put_file(actor, audit, id, path, body, options).await
            }
        }
    }

    /// Opens `path` (at `version`, else the latest) for reading as it streams.
    ///
    /// # Errors
    /// As [`Storage::open_file`](cloudx_core::storage::Storage::open_file).
    pub async fn open_file(&self, id: Uuid, path: &str, version: Option<i64>) -> Result<Opened> {
        match self {
            Target::Remote(c) => c.open_file(id, path, version).await,
            Target::Local(Local { cx, actor, .. }) => {
                let download = cx.storage().open_file(actor, id, path, version).await?;
                let (version, size) = (download.file.version, download.file.size);
                Ok(Opened { version, size: Some(size), body: download.stream(None).await? })
            }
        }
    }

    /// Runs `request` in the sandbox on the project's files, as
    /// [`Cloudx::exec_in_project`] does, with the output sent to `chunks` as it comes. On a
    /// daemon the run is a `sandbox_exec` job (so that it streams, and outlives no caller):
    /// dropping the future cancels the job, which kills its sandbox. Answers the
    /// [`ProjectRun`](cloudx_core::sandbox::ProjectRun) in its JSON form.
    ///
    /// # Errors
    /// As [`Cloudx::exec_in_project`]; on a daemon, a job that ends without a run (no worker
    /// took it before its attempts ran out, or it was cancelled) is
    /// [`ErrorKind::Unavailable`] with the job's last error.
    pub async fn exec(
        &self,
        project: Uuid,
        request: ProjectExec,
        chunks: Option<mpsc::Sender<OutputChunk>>,
    ) -> Result<serde_json::Value> {
        match self {
            Target::Local(Local { cx, actor, audit }) => {
                let run = cx.exec_in_project(actor, audit, project, request, None, chunks).await?;
                serde_json::to_value(&run).map_err(|e| Error::internal("cannot encode the run", e))
            }
            Target::Remote(c) => {
                request.check()?;
                let payload =
                    serde_json::to_value(&request).map_err(|e| Error::internal("cannot encode the run", e))?;
                let mut job = NewJob::new("sandbox_exec", payload);
                job.project = Some(project);
                // A run is not tried again behind the caller's back.
                job.max_attempts = Some(1);
                let (job, _) = c.submit_job(&job).await?;
                let guard = CancelOnDrop { client: c.clone(), job: Some(job.id) };
                // Following it failed (the daemon went away, say): the guard cancels it too, so
                // that no run the caller was told failed goes on, and commits, unseen.
                let job = follow_job(self, job.id, chunks).await?;
                guard.disarm();
                match (job.status, job.result) {
                    (JobStatus::Succeeded, Some(run)) => Ok(run),
                    (status, _) => Err(Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "the run (job {}) ended {}: {}",
                            job.id,
                            status.as_str(),
                            job.last_error.as_deref().unwrap_or("no reason given")
                        ),
                    )),
                }
            }
        }
    }

    /// Waits until the job has finished and returns it (its events are read, to follow it,
    /// by [`job_events`](Self::job_events)); `None` after `timeout`.
    ///
    /// # Errors
    /// As [`job`](Self::job).
    pub async fn wait_job(&self, id: Uuid, timeout: Option<std::time::Duration>) -> Result<Option<Job>> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let job = self.job(id).await?;
            if job.status.is_finished() {
                return Ok(Some(job));
            }
            // The queue wakes a local waiter on every change, else a look every fifth of a
            // second; a daemon's queue is polled.
            let pause: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> = match self {
                Target::Local(l) => Box::pin(l.cx.queue().wait(JOB_POLL * 2)),
                Target::Remote(_) => Box::pin(tokio::time::sleep(JOB_POLL)),
            };
            let timed_out = match deadline {
                Some(d) => tokio::time::timeout_at(d, pause).await.is_err(),
                None => {
                    pause.await;
                    false
                }
            };
            if timed_out {
                return Ok(None);
            }
        }
    }

    /// Where the jobs live, for messages: the daemon's URL, or the instance's database.
    pub fn location(&self) -> String {
        match self {
            Target::Remote(c) => format!("the daemon at {}", c.base_url()),
            Target::Local(Local { cx, .. }) => match cx.config().database_target() {
                Ok(cloudx_core::config::DatabaseTarget::Sqlite(_)) => {
                    let dir = &cx.config().data_dir;
                    format!("this data folder ({})", std::path::absolute(dir).as_deref().unwrap_or(dir).display())
                }
                Ok(target) => format!("this instance's database ({})", target.display_location()),
                Err(_) => "this instance".to_owned(),
            },
        }
    }
}

/// How often a daemon's job is looked at while it is followed.
const JOB_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Follows job `id` until it ends, sending its `stdout` / `stderr` events to `chunks`.
async fn follow_job(target: &Target, id: Uuid, chunks: Option<mpsc::Sender<OutputChunk>>) -> Result<Job> {
    let mut after = 0;
    loop {
        // The job is read before its events: once it has ended, every event it made is
        // already there.
        let job = target.job(id).await?;
        loop {
            let events = target.job_events(id, after, 1000).await?;
            let Some(last) = events.last() else { break };
            after = last.seq;
            if let Some(chunks) = &chunks {
                for event in events {
                    let text = match event.data {
                        serde_json::Value::String(text) => text,
                        _ => continue,
                    };
                    let chunk = match event.kind.as_str() {
                        "stdout" => OutputChunk::Stdout(text.into()),
                        "stderr" => OutputChunk::Stderr(text.into()),
                        _ => continue,
                    };
                    // A reader that went away stops nothing: the run ends as it would.
                    let _ = chunks.send(chunk).await;
                }
            }
        }
        if job.status.is_finished() {
            return Ok(job);
        }
        tokio::time::sleep(JOB_POLL).await;
    }
}

/// The cancellations of abandoned runs still on their way to the daemon.
static ABANDONED: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>> = std::sync::Mutex::new(Vec::new());

/// Waits, up to `timeout`, for the cancellations of runs dropped so far to reach their daemons:
/// for a front end that may exit right after a run was interrupted (Python after Ctrl-C).
pub async fn settle_abandoned(timeout: std::time::Duration) {
    let pending = std::mem::take(&mut *ABANDONED.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let _ = tokio::time::timeout(timeout, futures_util::future::join_all(pending)).await;
}

/// Cancels a daemon's job when dropped armed: a run whose caller went away (Ctrl-C) stops.
struct CancelOnDrop {
    client: Client,
    job: Option<Uuid>,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.job = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.job.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let client = self.client.clone();
            let cancel = runtime.spawn(async move {
                if let Err(e) = client.cancel_job(id).await {
                    tracing::warn!(job = %id, error = %e, "cannot cancel an abandoned run");
                }
            });
            let mut pending = ABANDONED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.retain(|c| !c.is_finished());
            pending.push(cancel);
        }
    }
}
