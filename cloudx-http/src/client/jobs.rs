//! Jobs and workers through the daemon: submit, read, list, cancel, retry, events.

use cloudx_core::queue::{Job, JobEvent, JobFilter, NewJob, WorkerInfo};
use cloudx_core::{Error, Result};
use reqwest::{Method, StatusCode};
use uuid::Uuid;

use super::Client;
use super::files::json_of;

impl Client {
    /// Submits a job, and says whether it is new (`false`: the job of an earlier submission
    /// with the same idempotency key).
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::InvalidInput`](cloudx_core::ErrorKind) for a bad
    /// field (named), [`ErrorKind::NotFound`](cloudx_core::ErrorKind) for a project the caller
    /// cannot see, [`ErrorKind::Conflict`](cloudx_core::ErrorKind) for an idempotency key used
    /// for another project or kind.
    pub async fn submit_job(&self, new: &NewJob) -> Result<(Job, bool)> {
        let url = self.base.join("api/v1/jobs").map_err(|e| Error::invalid(e.to_string()))?;
        let response = self.exchange_with(Method::POST, url, true, |r| Ok(r.json(new))).await?;
        let created = response.status() == StatusCode::CREATED;
        Ok((json_of(&self.base, response).await?, created))
    }

    /// One job.
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::NotFound`](cloudx_core::ErrorKind) for no such job
    /// (or one of a project the caller cannot see).
    pub async fn job(&self, id: Uuid) -> Result<Job> {
        self.send::<(), _>(Method::GET, &format!("api/v1/jobs/{id}"), None, true).await
    }

    /// Jobs matching `filter`, newest first (without a project: every job, for administrators).
    ///
    /// # Errors
    /// As the daemon answers.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let pairs = [
            ("project", filter.project.map(|p| p.to_string())),
            ("kind", filter.kind.clone()),
            ("status", filter.status.map(|s| s.as_str().to_owned())),
            ("limit", filter.limit.map(|l| l.to_string())),
        ];
        self.get_with_query("api/v1/jobs", &pairs).await
    }

    /// Cancels a job: a queued one at once, a running one at its worker's next heartbeat.
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::Conflict`](cloudx_core::ErrorKind) for a job that
    /// has ended.
    pub async fn cancel_job(&self, id: Uuid) -> Result<Job> {
        self.send::<(), _>(Method::POST, &format!("api/v1/jobs/{id}/cancel"), None, true).await
    }

    /// Queues a dead or cancelled job again (administrators).
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::Conflict`](cloudx_core::ErrorKind) for a job that
    /// is not dead or cancelled.
    pub async fn retry_job(&self, id: Uuid) -> Result<Job> {
        self.send::<(), _>(Method::POST, &format!("api/v1/jobs/{id}/retry"), None, true).await
    }

    /// The job's events after number `after`, at most `limit`, in order.
    ///
    /// # Errors
    /// As [`job`](Self::job).
    pub async fn job_events(&self, id: Uuid, after: i64, limit: u32) -> Result<Vec<JobEvent>> {
        self.send::<(), _>(Method::GET, &format!("api/v1/jobs/{id}/events?after={after}&limit={limit}"), None, true)
            .await
    }

    /// The workers seen in the last day, with their health and the jobs they hold
    /// (administrators).
    ///
    /// # Errors
    /// As the daemon answers: [`ErrorKind::PermissionDenied`](cloudx_core::ErrorKind) for
    /// someone who is not an administrator.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>> {
        self.send::<(), _>(Method::GET, "api/v1/workers", None, true).await
    }
}
