//! Jobs on the facade: every job belongs to a project and obeys its permissions.
//!
//! Submitting runs code on the project's behalf, so it needs `Write` and `Exec` (editors and
//! owners; an API key with `write` and `exec`); reading a job, its events and the project's job
//! list needs `Read`; cancelling needs `Write`; queueing a dead job again is an
//! administrator's. A job of a project the caller cannot see answers 404, like the project.

use uuid::Uuid;

use super::{Job, JobEvent, JobFilter, NewJob};
use crate::access::ProjectAction;
use crate::auth::audit::{self, Client, Event, Outcome};
use crate::cloudx::Cloudx;
use crate::error::{Error, ErrorKind, Result};
use crate::principal::Principal;

/// The priorities anyone may give; administrators may go beyond.
pub const PRIORITY_BOUND: i64 = 100;

impl Cloudx {
    /// Submits a job to `new.project` as `actor`, and says whether it is new (`false`: the job
    /// of an earlier submission with the same idempotency key). Audited (`job_submit`).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] without a project or for a bad field (named),
    /// [`ErrorKind::NotFound`] / [`ErrorKind::PermissionDenied`] without the rights.
    pub async fn submit_job(&self, actor: &Principal, client: &Client, new: NewJob) -> Result<(Job, bool)> {
        let Some(project) = new.project else {
            return Err(Error::invalid("project: a job belongs to a project; give its id"));
        };
        self.storage().authorize(actor, project, &[ProjectAction::Write, ProjectAction::Exec]).await?;
        if !actor.is_admin() && !(-PRIORITY_BOUND..=PRIORITY_BOUND).contains(&new.priority) {
            return Err(Error::invalid(format!(
                "priority: from -{PRIORITY_BOUND} to {PRIORITY_BOUND} (beyond is for administrators)"
            )));
        }
        if let Some(url) = &new.callback_url {
            self.webhooks().check(url)?;
        }
        let api_key = match actor {
            Principal::User { api_key, .. } => *api_key,
            Principal::System => None,
        };
        let (job, created) = self.queue().submit_with_key(actor.user_id().unwrap_or(Uuid::nil()), api_key, new).await?;
        if created && let Err(e) = self.audit_job(actor, client, "job_submit", &job, None).await {
            // The job exists: answering an error would make the client submit it again.
            tracing::error!(error = %e, job = %job.id, "cannot audit a job's submission");
        }
        Ok((job, created))
    }

    /// A job, for someone who may read its project.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for no such job, or one of a project `actor` cannot read.
    pub async fn job(&self, actor: &Principal, id: Uuid) -> Result<Job> {
        self.job_with(actor, id, ProjectAction::Read).await
    }

    async fn job_with(&self, actor: &Principal, id: Uuid, action: ProjectAction) -> Result<Job> {
        let job = self.queue().get(id).await?;
        let Some(project) = job.project else {
            // Jobs without a project are the instance's own (submitted by the local system).
            return if actor.is_admin() { Ok(job) } else { Err(Error::not_found(format!("no job {id}"))) };
        };
        match self.storage().authorize(actor, project, &[action]).await {
            Err(e) if e.kind() == ErrorKind::NotFound => Err(Error::not_found(format!("no job {id}"))),
            other => other.map(|()| job),
        }
    }

    /// Jobs matching `filter`, newest first: those of one project (which `actor` may read), or
    /// every job for an administrator.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidInput`] without a project for someone who is not an administrator.
    pub async fn list_jobs(&self, actor: &Principal, filter: &JobFilter) -> Result<Vec<Job>> {
        match filter.project {
            Some(project) => self.storage().authorize(actor, project, &[ProjectAction::Read]).await?,
            None if actor.is_admin() => {}
            None => return Err(Error::invalid("project: give a project (only administrators list every job)")),
        }
        self.queue().list(filter).await
    }

    /// The job's events after `after`, at most `limit`.
    ///
    /// # Errors
    /// As [`job`](Self::job).
    pub async fn job_events(&self, actor: &Principal, id: Uuid, after: i64, limit: u32) -> Result<Vec<JobEvent>> {
        self.job(actor, id).await?;
        self.queue().events(id, after, limit).await
    }

    /// Cancels a job (`Write` on its project). Audited (`job_cancel`).
    ///
    /// # Errors
    /// [`ErrorKind::Conflict`] for a job that has ended, and as [`job`](Self::job).
    pub async fn cancel_job(&self, actor: &Principal, client: &Client, id: Uuid) -> Result<Job> {
        self.job_with(actor, id, ProjectAction::Write).await?;
        let job = self.queue().cancel(id).await?;
        self.audit_job(actor, client, "job_cancel", &job, None).await?;
        Ok(job)
    }

    /// Queues a dead or cancelled job again (administrators). Audited (`job_retry`).
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for someone who is not an administrator,
    /// [`ErrorKind::Conflict`] for a job that is not dead or cancelled.
    pub async fn retry_job(&self, actor: &Principal, client: &Client, id: Uuid) -> Result<Job> {
        self.job_with(actor, id, ProjectAction::Read).await?;
        if !actor.is_admin() {
            return Err(Error::new(ErrorKind::PermissionDenied, "only an administrator can queue a job again"));
        }
        let job = self.queue().retry(id).await?;
        self.audit_job(actor, client, "job_retry", &job, None).await?;
        Ok(job)
    }

    /// The workers seen in the last day, with their health and running jobs (administrators).
    ///
    /// # Errors
    /// [`ErrorKind::PermissionDenied`] for someone who is not an administrator.
    pub async fn workers(&self, actor: &Principal) -> Result<Vec<super::WorkerInfo>> {
        if !actor.is_admin() {
            return Err(Error::new(ErrorKind::PermissionDenied, "only an administrator can see the workers"));
        }
        self.queue().workers().await
    }

    async fn audit_job(
        &self,
        actor: &Principal,
        client: &Client,
        action: &'static str,
        job: &Job,
        detail: Option<String>,
    ) -> Result<()> {
        audit::append(
            self.database(),
            &Event {
                action,
                outcome: Outcome::Success,
                actor: actor.user_id(),
                target: Some(format!("job:{}", job.id)),
                client,
                detail: detail.or_else(|| Some(format!("{} in project:{}", job.kind, job.project.unwrap_or_default()))),
            },
        )
        .await
    }
}
