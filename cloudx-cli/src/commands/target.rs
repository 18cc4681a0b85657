//! Where `cloudx project`, `file`, `job`, `push` and `pull` act: on the daemon you signed in to (a
//! stored login), or else on this instance's own database and blob store, as the local
//! operator (whoever can open the data folder owns it).

use std::path::Path;

use cloudx_core::agent::{AgentEvent, Conversation, Task, TaskFilter, TranscriptEntry};
use cloudx_core::auth::audit::Client as AuditClient;
use cloudx_core::queue::{Job, JobEvent, JobFilter, NewJob, WorkerInfo};
use cloudx_core::storage::{ByteStream, FileVersion, Member, NewProject, Project, ProjectFilter, PutOptions, Tree};
use cloudx_core::{Cloudx, CloudxConfig, Error, ErrorKind, Principal, ProjectRole};
use cloudx_http::client::{Client, Downloaded, write_file_atomically};
use futures_util::StreamExt as _;
use uuid::Uuid;

use crate::commands::remote;

/// A daemon, or the embedded core.
pub(crate) enum Target {
    Remote(Client),
    Local(Cloudx),
}

impl Target {
    /// The daemon of the stored login, if there is one; else the instance `config` names.
    pub(crate) async fn open(config: impl FnOnce() -> anyhow::Result<CloudxConfig>) -> anyhow::Result<Self> {
        if remote::signed_in()? {
            return Ok(Target::Remote(remote::session()?));
        }
        Ok(Target::Local(Cloudx::connect(config()?).await?))
    }

    /// Closes the embedded core (its database).
    pub(crate) async fn close(self) {
        if let Target::Local(cx) = self {
            cx.close().await;
        }
    }

    fn audit() -> AuditClient {
        AuditClient::new(None, Some(concat!("cloudx-cli/", env!("CARGO_PKG_VERSION"), " (local)")))
    }

    /// The account of `email` (for `--owner`), on the embedded core.
    pub(crate) async fn user_id(&self, email: &str) -> anyhow::Result<Uuid> {
        match self {
            Target::Remote(_) => {
                Err(Error::invalid("--owner is for the local instance; a daemon makes you the owner").into())
            }
            Target::Local(cx) => {
                let email = email.trim().to_lowercase();
                let users = cx.auth().list_users(&Principal::System).await?;
                Ok(users
                    .into_iter()
                    .find(|u| u.email == email)
                    .ok_or_else(|| Error::not_found(format!("owner: no account `{email}`")))?
                    .id)
            }
        }
    }

    pub(crate) fn is_local(&self) -> bool {
        matches!(self, Target::Local(_))
    }

    pub(crate) async fn list_projects(
        &self,
        deleted: bool,
        all: bool,
        slug: Option<&str>,
    ) -> anyhow::Result<Vec<Project>> {
        Ok(match self {
            Target::Remote(c) => c.list_projects(deleted, all, slug).await?,
            Target::Local(cx) => {
                let filter = ProjectFilter { deleted, all, slug: slug.map(str::to_owned) };
                cx.storage().list_projects(&Principal::System, &filter).await?
            }
        })
    }

    pub(crate) async fn create_project(&self, new: &NewProject) -> anyhow::Result<Project> {
        Ok(match self {
            Target::Remote(c) => c.create_project(new).await?,
            Target::Local(cx) => cx.storage().create_project(&Principal::System, &Self::audit(), new.clone()).await?,
        })
    }

    pub(crate) async fn project(&self, id: Uuid) -> anyhow::Result<Project> {
        Ok(match self {
            Target::Remote(c) => c.project(id).await?,
            Target::Local(cx) => cx.storage().project(&Principal::System, id).await?,
        })
    }

    pub(crate) async fn members(&self, id: Uuid) -> anyhow::Result<Vec<Member>> {
        Ok(match self {
            Target::Remote(c) => c.members(id).await?,
            Target::Local(cx) => cx.storage().members(&Principal::System, id).await?,
        })
    }

    pub(crate) async fn set_member(&self, id: Uuid, user: &str, role: ProjectRole) -> anyhow::Result<Member> {
        Ok(match self {
            Target::Remote(c) => c.set_member(id, user, role).await?,
            Target::Local(cx) => cx.storage().set_member(&Principal::System, &Self::audit(), id, user, role).await?,
        })
    }

    pub(crate) async fn remove_member(&self, id: Uuid, user: &str) -> anyhow::Result<()> {
        match self {
            Target::Remote(c) => c.remove_member(id, user).await?,
            Target::Local(cx) => cx.storage().remove_member(&Principal::System, &Self::audit(), id, user).await?,
        }
        Ok(())
    }

    pub(crate) async fn transfer_project(&self, id: Uuid, to: &str) -> anyhow::Result<Project> {
        Ok(match self {
            Target::Remote(c) => c.transfer_project(id, to).await?,
            Target::Local(cx) => cx.storage().transfer_project(&Principal::System, &Self::audit(), id, to).await?,
        })
    }

    pub(crate) async fn delete_project(&self, id: Uuid, purge: bool) -> anyhow::Result<()> {
        match self {
            Target::Remote(c) => c.delete_project(id, purge).await?,
            Target::Local(cx) if purge => cx.storage().purge_project(&Principal::System, &Self::audit(), id).await?,
            Target::Local(cx) => cx.storage().delete_project(&Principal::System, &Self::audit(), id).await?,
        }
        Ok(())
    }

    pub(crate) async fn restore_project(&self, id: Uuid) -> anyhow::Result<Project> {
        Ok(match self {
            Target::Remote(c) => c.restore_project(id).await?,
            Target::Local(cx) => cx.storage().restore_project(&Principal::System, &Self::audit(), id).await?,
        })
    }

    pub(crate) async fn tree(
        &self,
        id: Uuid,
        prefix: &str,
        version: Option<i64>,
        recursive: bool,
    ) -> anyhow::Result<Tree> {
        Ok(match self {
            Target::Remote(c) => c.tree(id, prefix, version, recursive).await?,
            Target::Local(cx) => cx.storage().list_files(&Principal::System, id, prefix, version, recursive).await?,
        })
    }

    pub(crate) async fn put_file(
        &self,
        id: Uuid,
        path: &str,
        local: &Path,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> cloudx_core::Result<FileVersion> {
        match self {
            Target::Remote(c) => c.put_file(id, path, local, expected_version, message).await,
            Target::Local(cx) => {
                let read_error = |e: std::io::Error| Error::invalid(format!("cannot read {}: {e}", local.display()));
                let file = tokio::fs::File::open(local).await.map_err(read_error)?;
                let size = file.metadata().await.map_err(read_error)?.len();
                let body: ByteStream = Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024));
                let options =
                    PutOptions { expected_version, message: message.map(str::to_owned), declared_size: Some(size) };
                cx.storage().put_file(&Principal::System, &Self::audit(), id, path, body, options).await
            }
        }
    }

    pub(crate) async fn get_file(
        &self,
        id: Uuid,
        path: &str,
        version: Option<i64>,
        local: &Path,
    ) -> anyhow::Result<Downloaded> {
        match self {
            Target::Remote(c) => Ok(c.get_file(id, path, version, local).await?),
            Target::Local(cx) => {
                let download = cx.storage().open_file(&Principal::System, id, path, version).await?;
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

    pub(crate) async fn history(&self, id: Uuid, path: &str, limit: u32) -> anyhow::Result<Vec<FileVersion>> {
        Ok(match self {
            Target::Remote(c) => c.history(id, path, limit).await?,
            Target::Local(cx) => cx.storage().history(&Principal::System, id, path, limit).await?,
        })
    }

    pub(crate) async fn delete_file(
        &self,
        id: Uuid,
        path: &str,
        expected_version: Option<i64>,
        message: Option<&str>,
    ) -> cloudx_core::Result<i64> {
        match self {
            Target::Remote(c) => c.delete_file(id, path, expected_version, message).await,
            Target::Local(cx) => {
                cx.storage().delete_file(&Principal::System, &Self::audit(), id, path, expected_version, message).await
            }
        }
    }

    pub(crate) async fn restore_file(&self, id: Uuid, path: &str, version: Option<i64>) -> anyhow::Result<FileVersion> {
        Ok(match self {
            Target::Remote(c) => c.restore_file(id, path, version).await?,
            Target::Local(cx) => {
                cx.storage().restore_file(&Principal::System, &Self::audit(), id, path, version).await?
            }
        })
    }

    pub(crate) async fn move_file(&self, id: Uuid, from: &str, to: &str, message: Option<&str>) -> anyhow::Result<i64> {
        Ok(match self {
            Target::Remote(c) => c.move_file(id, from, to, message).await?,
            Target::Local(cx) => {
                cx.storage().move_file(&Principal::System, &Self::audit(), id, from, to, message).await?
            }
        })
    }

    pub(crate) async fn submit_job(&self, new: &NewJob) -> anyhow::Result<(Job, bool)> {
        Ok(match self {
            Target::Remote(c) => c.submit_job(new).await?,
            Target::Local(cx) => cx.submit_job(&Principal::System, &Self::audit(), new.clone()).await?,
        })
    }

    pub(crate) async fn job(&self, id: Uuid) -> anyhow::Result<Job> {
        Ok(match self {
            Target::Remote(c) => c.job(id).await?,
            Target::Local(cx) => cx.job(&Principal::System, id).await?,
        })
    }

    pub(crate) async fn list_jobs(&self, filter: &JobFilter) -> anyhow::Result<Vec<Job>> {
        Ok(match self {
            Target::Remote(c) => c.list_jobs(filter).await?,
            Target::Local(cx) => cx.list_jobs(&Principal::System, filter).await?,
        })
    }

    pub(crate) async fn cancel_job(&self, id: Uuid) -> anyhow::Result<Job> {
        Ok(match self {
            Target::Remote(c) => c.cancel_job(id).await?,
            Target::Local(cx) => cx.cancel_job(&Principal::System, &Self::audit(), id).await?,
        })
    }

    pub(crate) async fn retry_job(&self, id: Uuid) -> anyhow::Result<Job> {
        Ok(match self {
            Target::Remote(c) => c.retry_job(id).await?,
            Target::Local(cx) => cx.retry_job(&Principal::System, &Self::audit(), id).await?,
        })
    }

    pub(crate) async fn job_events(&self, id: Uuid, after: i64, limit: u32) -> anyhow::Result<Vec<JobEvent>> {
        Ok(match self {
            Target::Remote(c) => c.job_events(id, after, limit).await?,
            Target::Local(cx) => cx.job_events(&Principal::System, id, after, limit).await?,
        })
    }

    pub(crate) async fn workers(&self) -> cloudx_core::Result<Vec<WorkerInfo>> {
        match self {
            Target::Remote(c) => c.workers().await,
            Target::Local(cx) => cx.workers(&Principal::System).await,
        }
    }

    pub(crate) async fn create_conversation(&self, project: Uuid) -> anyhow::Result<Conversation> {
        Ok(match self {
            Target::Remote(c) => c.create_conversation(project, None).await?,
            Target::Local(cx) => cx.create_conversation(&Principal::System, project, None).await?,
        })
    }

    pub(crate) async fn conversation(&self, id: Uuid) -> anyhow::Result<Conversation> {
        Ok(match self {
            Target::Remote(c) => c.conversation(id).await?,
            Target::Local(cx) => cx.conversation(&Principal::System, id).await?,
        })
    }

    pub(crate) async fn post_message(&self, conversation: Uuid, text: &str) -> anyhow::Result<Task> {
        Ok(match self {
            Target::Remote(c) => c.post_message(conversation, text).await?,
            Target::Local(cx) => cx.post_message(&Principal::System, &Self::audit(), conversation, text).await?,
        })
    }

    /// A conversation's events after `after`, waiting up to `wait` for the first.
    pub(crate) async fn conversation_events(
        &self,
        conversation: Uuid,
        after: i64,
        wait: std::time::Duration,
    ) -> cloudx_core::Result<Vec<AgentEvent>> {
        match self {
            Target::Remote(c) => Ok(c.conversation_events(conversation, after, 1000, wait).await?.events),
            Target::Local(cx) => {
                cx.follow_conversation(&Principal::System, conversation, after).await?.next(wait).await
            }
        }
    }

    pub(crate) async fn task(&self, id: Uuid) -> anyhow::Result<Task> {
        Ok(match self {
            Target::Remote(c) => c.task(id).await?,
            Target::Local(cx) => cx.task(&Principal::System, id).await?,
        })
    }

    pub(crate) async fn list_tasks(&self, filter: &TaskFilter) -> anyhow::Result<Vec<Task>> {
        Ok(match self {
            Target::Remote(c) => c.list_tasks(filter).await?,
            Target::Local(cx) => cx.list_tasks(&Principal::System, filter).await?,
        })
    }

    pub(crate) async fn transcript(&self, id: Uuid, after: i64, limit: u32) -> anyhow::Result<Vec<TranscriptEntry>> {
        Ok(match self {
            Target::Remote(c) => c.transcript(id, after, limit).await?,
            Target::Local(cx) => cx.transcript(&Principal::System, id, after, limit).await?,
        })
    }

    pub(crate) async fn cancel_task(&self, id: Uuid) -> anyhow::Result<Task> {
        Ok(match self {
            Target::Remote(c) => c.cancel_task(id).await?,
            Target::Local(cx) => cx.cancel_task(&Principal::System, &Self::audit(), id).await?,
        })
    }

    pub(crate) async fn replay_task(&self, id: Uuid) -> anyhow::Result<Task> {
        Ok(match self {
            Target::Remote(c) => c.replay_task(id).await?,
            Target::Local(cx) => cx.replay_task(&Principal::System, &Self::audit(), id).await?,
        })
    }

    /// Where the jobs live, for messages: the daemon's URL, or the instance's database.
    pub(crate) fn location(&self) -> String {
        match self {
            Target::Remote(c) => format!("the daemon at {}", c.base_url()),
            Target::Local(cx) => match cx.config().database_target() {
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
