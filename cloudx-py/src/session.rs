//! `Session`: one instance of cloudx (the embedded core, or a daemon) and every call the Python
//! API makes on it. Arguments come as a dict and answers go back as plain Python values (the
//! core's JSON forms); `cloudx/_api.py` turns them into the package's classes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use cloudx_core::agent::TaskFilter;
use cloudx_core::auth::NewUser;
use cloudx_core::config::ConfigLoader;
use cloudx_core::queue::{JobFilter, NewJob, Worker, WorkerOptions};
use cloudx_core::sandbox::{ExecSpec, OutputChunk, ProjectExec};
use cloudx_core::storage::NewProject;
use cloudx_core::{Cloudx, Error, ErrorKind, Principal, ProjectRole, Result, Role};
use cloudx_http::client::target::Target;
use cloudx_http::client::{Client, Credential};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::rt::{block, runtime, wait};
use crate::streams::{Reader, RunHandle, Writer};

/// What the audit log records as the client of an embedded change.
const USER_AGENT: &str = concat!("cloudx-py/", env!("CARGO_PKG_VERSION"), " (embedded)");

/// The largest piece of a buffer written in one go.
pub(crate) const PIECE: usize = 1 << 20;

/// The embedded core's in-process worker.
struct InProcessWorker {
    stop: CancellationToken,
    done: tokio::task::JoinHandle<Result<()>>,
}

/// One instance of cloudx, shared by every thread that uses it.
#[pyclass(frozen, module = "cloudx._cloudx")]
pub(crate) struct Session {
    target: RwLock<Option<Arc<Target>>>,
    worker: Mutex<Option<InProcessWorker>>,
    mode: &'static str,
    location: String,
    actor: String,
    /// A view of another session's core (`as_user`): closing it leaves the core open.
    shared: bool,
    /// Set when the core is closed, by the session that opened it: its views see it too.
    core_closed: Arc<AtomicBool>,
}

impl Session {
    /// The target, unless the session is closed.
    pub(crate) fn target(&self) -> PyResult<Arc<Target>> {
        let closed = |why: &str| Python::attach(|py| crate::errors::to_py(py, &Error::invalid(why)));
        if self.core_closed.load(Ordering::Acquire) && self.shared {
            return Err(closed("this cloudx is closed (the instance it acts for was closed)"));
        }
        self.target
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| closed("this cloudx is closed"))
    }
}

/// `cloudx.open(...)`: the core in this process.
#[pyfunction]
#[pyo3(signature = (data_dir = None, user = None, config = None, worker = true))]
pub(crate) fn open_embedded(
    py: Python<'_>,
    data_dir: Option<PathBuf>,
    user: Option<String>,
    config: Option<PathBuf>,
    worker: bool,
) -> PyResult<Session> {
    let mut loader = ConfigLoader::new()
        .default_file("cloudx.toml")
        .env(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))));
    if let Some(file) = &config {
        loader = loader.file(file);
    }
    if let Some(dir) = &data_dir {
        loader = loader.flag("data_dir", "data_dir=", dir.to_string_lossy().into_owned());
    }
    let config = loader.load().map_err(|e| crate::errors::to_py(py, &Error::invalid(e.to_string())))?;
    let location = std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    let (target, worker, actor) = block(py, async move {
        let cx = Cloudx::connect(config).await?;
        let (actor, name) = match user.as_deref() {
            None => (Principal::System, "the local system principal".to_owned()),
            Some(email) => (
                cx.auth().principal_for(&Principal::System, email).await.map_err(|e| prefixed(&e, "user"))?,
                email.trim().to_lowercase(),
            ),
        };
        let worker = worker.then(|| {
            let options = WorkerOptions {
                webhooks: Some(cx.webhooks().clone()),
                ..WorkerOptions::from_config(&cx.config().worker)
            };
            let worker = Worker::new(cx.queue().clone(), cx.builtin_handlers(), options);
            let stop = CancellationToken::new();
            let token = stop.clone();
            let done = tokio::spawn(async move { worker.run(token).await });
            InProcessWorker { stop, done }
        });
        Ok((Target::local(cx, actor, USER_AGENT), worker, name))
    })?;
    Ok(Session {
        target: RwLock::new(Some(Arc::new(target))),
        worker: Mutex::new(worker),
        mode: "embedded",
        location: location.display().to_string(),
        actor,
        shared: false,
        core_closed: Arc::new(AtomicBool::new(false)),
    })
}

/// `cloudx.connect(...)`: a client of a daemon.
#[pyfunction]
#[pyo3(signature = (url, api_key))]
pub(crate) fn connect_remote(py: Python<'_>, url: &str, api_key: String) -> PyResult<Session> {
    let _guard = runtime().enter();
    let client = Client::new(url).map_err(|e| crate::errors::to_py(py, &e))?;
    let location = client.base_url().to_owned();
    let client = client.with_credential(Credential::ApiKey(api_key));
    Ok(Session {
        target: RwLock::new(Some(Arc::new(Target::Remote(client)))),
        worker: Mutex::new(None),
        mode: "remote",
        location,
        actor: "an API key".to_owned(),
        shared: false,
        core_closed: Arc::new(AtomicBool::new(false)),
    })
}

#[pymethods]
impl Session {
    /// `embedded` or `remote`.
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode
    }

    /// The data folder, or the daemon's URL.
    #[getter]
    fn location(&self) -> &str {
        &self.location
    }

    /// Who acts.
    #[getter]
    fn actor(&self) -> &str {
        &self.actor
    }

    /// Whether `close` has been called.
    #[getter]
    fn closed(&self) -> bool {
        self.target.read().unwrap_or_else(PoisonError::into_inner).is_none()
    }

    fn __repr__(&self) -> String {
        format!("<cloudx._cloudx.Session {} {} as {}>", self.mode, self.location, self.actor)
    }

    /// One call of the API by name (`list_projects`, `create_project`, ...), its arguments in
    /// `args`; the answer as plain Python values.
    #[pyo3(signature = (op, args = None))]
    fn call<'py>(&self, py: Python<'py>, op: &str, args: Option<&Bound<'py, PyDict>>) -> PyResult<Bound<'py, PyAny>> {
        let args: Map<String, Value> = match args {
            Some(args) => pythonize::depythonize(args.as_any())
                .map_err(|e| crate::errors::to_py(py, &Error::invalid(format!("{op}: {e}"))))?,
            None => Map::new(),
        };
        let target = self.target()?;
        let answer = block(py, dispatch(&target, op, args))?;
        pythonize::pythonize(py, &answer).map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// The whole content of a file.
    #[pyo3(signature = (project, path, version = None))]
    fn read_all<'py>(
        &self,
        py: Python<'py>,
        project: &str,
        path: &str,
        version: Option<i64>,
    ) -> PyResult<(Bound<'py, PyBytes>, i64)> {
        let target = self.target()?;
        let project = parse_id(py, "project", project)?;
        let opened = block(py, target.open_file(project, path, version))?;
        let (version, mut body) = (opened.version, opened.body);
        let unreadable = |e: std::io::Error| Error::new(ErrorKind::Unavailable, format!("cannot read {path}: {e}"));
        // Of a known size (always, embedded): read straight into the `bytes` Python gets, so the
        // content is copied once, as it is by a reader in Rust.
        if let Some(size) = opened.size.and_then(|s| usize::try_from(s).ok()) {
            let bytes = PyBytes::new_with(py, size, |buf| {
                py.detach(|| {
                    wait(async {
                        let mut filled = 0;
                        while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                            let chunk = chunk.map_err(unreadable)?;
                            let Some(into) = buf.get_mut(filled..filled + chunk.len()) else {
                                return Err(Error::new(
                                    ErrorKind::Unavailable,
                                    format!("cannot read {path}: it is longer than its announced {size} bytes"),
                                ));
                            };
                            into.copy_from_slice(&chunk);
                            filled += chunk.len();
                        }
                        if filled < size {
                            return Err(Error::new(
                                ErrorKind::Unavailable,
                                format!("cannot read {path}: it ended after {filled} of its {size} bytes"),
                            ));
                        }
                        Ok(())
                    })
                })
                .map_err(|e| e.into_py(py))
            })?;
            return Ok((bytes, version));
        }
        let content = block(py, async {
            let mut content = Vec::new();
            while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                content.extend_from_slice(&chunk.map_err(unreadable)?);
            }
            Ok(content)
        })?;
        Ok((PyBytes::new(py, &content), version))
    }

    /// Writes `data` as a new version of a file (sent as it is, without a copy).
    #[pyo3(signature = (project, path, data, expected_version = None, message = None))]
    fn write_all<'py>(
        &self,
        py: Python<'py>,
        project: &str,
        path: &str,
        data: PyBackedBytes,
        expected_version: Option<i64>,
        message: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = self.target()?;
        let project = parse_id(py, "project", project)?;
        let content = bytes::Bytes::from_owner(data);
        let size = content.len() as u64;
        let pieces: Vec<std::io::Result<bytes::Bytes>> = (0..content.len())
            .step_by(PIECE)
            .map(|start| Ok(content.slice(start..(start + PIECE).min(content.len()))))
            .collect();
        let body: cloudx_core::storage::ByteStream = Box::pin(futures_util::stream::iter(pieces));
        let version = block(py, async {
            target.put_stream(project, path, body, Some(size), expected_version, message.as_deref()).await
        })?;
        pythonize::pythonize(py, &version).map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// A file opened for reading as it streams.
    #[pyo3(signature = (project, path, version = None))]
    fn open_reader(&self, py: Python<'_>, project: &str, path: &str, version: Option<i64>) -> PyResult<Reader> {
        let target = self.target()?;
        let project = parse_id(py, "project", project)?;
        let opened = block(py, async { target.open_file(project, path, version).await })?;
        Ok(Reader::new(path.to_owned(), opened))
    }

    /// A new version of a file, written as it streams.
    #[pyo3(signature = (project, path, expected_version = None, message = None))]
    fn open_writer(
        &self,
        py: Python<'_>,
        project: &str,
        path: &str,
        expected_version: Option<i64>,
        message: Option<String>,
    ) -> PyResult<Writer> {
        let target = self.target()?;
        let project = parse_id(py, "project", project)?;
        Ok(Writer::start(target, project, path.to_owned(), expected_version, message))
    }

    /// Runs a command in the sandbox (on a project's files, or embedded on a scratch folder)
    /// and answers the run's JSON form; Ctrl-C kills it.
    #[pyo3(signature = (project, request))]
    fn exec<'py>(
        &self,
        py: Python<'py>,
        project: Option<&str>,
        request: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = self.target()?;
        let (project, request) = exec_args(py, project, request)?;
        let run = block(py, run(target, project, request, None))?;
        pythonize::pythonize(py, &run).map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// As `exec`, the output read as it comes from the handle answered.
    #[pyo3(signature = (project, request))]
    fn exec_stream<'py>(
        &self,
        py: Python<'py>,
        project: Option<&str>,
        request: &Bound<'py, PyDict>,
    ) -> PyResult<RunHandle> {
        let target = self.target()?;
        let (project, request) = exec_args(py, project, request)?;
        let (tx, rx) = mpsc::channel::<OutputChunk>(64);
        let task = runtime().spawn(run(target, project, request, Some(tx)));
        Ok(RunHandle::new(rx, task))
    }

    /// The same embedded core, acting as the account `email` (the local system principal only).
    fn as_user(&self, py: Python<'_>, email: &str) -> PyResult<Session> {
        let target = self.target()?;
        let Target::Local(local) = &*target else {
            return Err(crate::errors::to_py(
                py,
                &Error::invalid(
                    "as_user: a daemon's client acts as its API key's account; connect with that user's key",
                ),
            ));
        };
        let principal = block(py, async {
            local.cx().auth().principal_for(local.actor(), email).await.map_err(|e| prefixed(&e, "user"))
        })?;
        Ok(Session {
            target: RwLock::new(Some(Arc::new(Target::local(local.cx().clone(), principal, USER_AGENT)))),
            worker: Mutex::new(None),
            mode: "embedded",
            location: self.location.clone(),
            actor: email.trim().to_lowercase(),
            shared: true,
            core_closed: self.core_closed.clone(),
        })
    }

    /// Stops the in-process worker (running jobs get `worker.grace` to finish) and closes the
    /// database. Calls made after it fail.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let target = self.target.write().unwrap_or_else(PoisonError::into_inner).take();
        let worker = self.worker.lock().unwrap_or_else(PoisonError::into_inner).take();
        let shared = self.shared;
        if !shared {
            self.core_closed.store(true, Ordering::Release);
        }
        block(py, async move {
            if let Some(worker) = worker {
                worker.stop.cancel();
                match worker.done.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "the in-process worker failed"),
                    Err(e) => tracing::error!(error = %e, "the in-process worker's task failed"),
                }
            }
            // Another thread's call still holding the target closes nothing; the last one
            // drops it.
            if let Some(target) = target.and_then(|t| Arc::try_unwrap(t).ok())
                && !shared
            {
                target.close().await;
            }
            Ok(())
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            worker.stop.cancel();
        }
    }
}

/// `e` with `what: ` before its message (the argument it is about).
fn prefixed(e: &Error, what: &str) -> Error {
    Error::new(e.kind(), format!("{what}: {}", e.message()))
}

fn parse_id(py: Python<'_>, what: &str, id: &str) -> PyResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| crate::errors::to_py(py, &Error::invalid(format!("{what}: `{id}` is not an id"))))
}

fn exec_args(
    py: Python<'_>,
    project: Option<&str>,
    request: &Bound<'_, PyDict>,
) -> PyResult<(Option<Uuid>, ProjectExec)> {
    let project = project.map(|p| parse_id(py, "project", p)).transpose()?;
    let request: ProjectExec = pythonize::depythonize(request.as_any())
        .map_err(|e| crate::errors::to_py(py, &Error::invalid(format!("run: {e}"))))?;
    Ok((project, request))
}

/// A run on a project's files, or (embedded) on an empty scratch folder.
async fn run(
    target: Arc<Target>,
    project: Option<Uuid>,
    request: ProjectExec,
    chunks: Option<mpsc::Sender<OutputChunk>>,
) -> Result<Value> {
    if let Some(project) = project {
        return target.exec(project, request, chunks).await;
    }
    let Target::Local(local) = &*target else {
        return Err(Error::invalid("project: a daemon runs commands on a project's files; name a project"));
    };
    if request.commit {
        return Err(Error::invalid("commit: a run without a project has nothing to commit to"));
    }
    if request.version.is_some() {
        return Err(Error::invalid("version: a run without a project has no versions"));
    }
    request.check()?;
    let mut spec = ExecSpec::new(request.argv);
    spec.env = request.env.into_iter().collect();
    spec.cwd = request.cwd;
    spec.stdin = request.stdin.map(Into::into);
    spec.limits = request.limits;
    let sandbox = local.cx().sandbox()?;
    let outcome = match chunks {
        Some(chunks) => sandbox.exec_streaming(spec, chunks).await?,
        None => sandbox.exec(spec).await?,
    };
    Ok(json!({ "version": null, "outcome": outcome, "commit": null }))
}

/// Argument `name` of `args` (absent: JSON null, for an `Option`).
fn arg<T: DeserializeOwned>(args: &Map<String, Value>, name: &str) -> Result<T> {
    serde_json::from_value(args.get(name).cloned().unwrap_or(Value::Null))
        .map_err(|e| Error::invalid(format!("{name}: {e}")))
}

/// All the arguments as one `T` (a new project, a job, a filter), named `what` in errors.
fn whole<T: DeserializeOwned>(args: &Map<String, Value>, what: &str) -> Result<T> {
    serde_json::from_value(Value::Object(args.clone())).map_err(|e| Error::invalid(format!("{what}: {e}")))
}

fn to_json(value: impl serde::Serialize) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::internal("cannot encode an answer", e))
}

/// One call by name.
async fn dispatch(target: &Target, op: &str, args: Map<String, Value>) -> Result<Value> {
    let a = &args;
    match op {
        "list_projects" => to_json(target.list_projects(arg(a, "deleted")?, arg(a, "all")?, None).await?),
        "resolve_project" => to_json(target.resolve_project(&arg::<String>(a, "project")?).await?),
        "create_project" => {
            let new: NewProject = whole(a, "project")?;
            to_json(target.create_project(&new).await?)
        }
        "members" => to_json(target.members(arg(a, "project")?).await?),
        "set_member" => {
            let role: ProjectRole = arg(a, "role")?;
            to_json(target.set_member(arg(a, "project")?, &arg::<String>(a, "user")?, role).await?)
        }
        "remove_member" => to_json(target.remove_member(arg(a, "project")?, &arg::<String>(a, "user")?).await?),
        "delete_project" => to_json(target.delete_project(arg(a, "project")?, false).await?),
        "restore_project" => to_json(target.restore_project(arg(a, "project")?).await?),
        "tree" => {
            let prefix: String = arg::<Option<String>>(a, "prefix")?.unwrap_or_default();
            let recursive = arg::<Option<bool>>(a, "recursive")?.unwrap_or(true);
            to_json(target.tree(arg(a, "project")?, &prefix, arg(a, "version")?, recursive).await?)
        }
        "history" => {
            let limit = arg::<Option<u32>>(a, "limit")?.unwrap_or(100);
            to_json(target.history(arg(a, "project")?, &arg::<String>(a, "path")?, limit).await?)
        }
        "restore_file" => {
            to_json(target.restore_file(arg(a, "project")?, &arg::<String>(a, "path")?, arg(a, "version")?).await?)
        }
        "delete_file" => {
            let message: Option<String> = arg(a, "message")?;
            let path: String = arg(a, "path")?;
            to_json(
                target.delete_file(arg(a, "project")?, &path, arg(a, "expected_version")?, message.as_deref()).await?,
            )
        }
        "move_file" => {
            let message: Option<String> = arg(a, "message")?;
            let (from, to): (String, String) = (arg(a, "from")?, arg(a, "to")?);
            to_json(target.move_file(arg(a, "project")?, &from, &to, message.as_deref()).await?)
        }
        "push" | "pull" => {
            let project: String = arg(a, "project")?;
            let dir: PathBuf = arg(a, "dir")?;
            let dry_run = arg::<Option<bool>>(a, "dry_run")?.unwrap_or(false);
            let mut quiet = |_: cloudx_http::client::sync::SyncStep<'_>| {};
            let report = if op == "push" {
                cloudx_http::client::sync::push(target, &project, &dir, dry_run, &mut quiet).await?
            } else {
                cloudx_http::client::sync::pull(target, &project, &dir, dry_run, &mut quiet).await?
            };
            to_json(report)
        }
        "submit_job" => {
            let new: NewJob = whole(a, "job")?;
            let (job, created) = target.submit_job(&new).await?;
            Ok(json!({ "job": job, "created": created }))
        }
        "job" => to_json(target.job(arg(a, "job")?).await?),
        "list_jobs" => {
            let filter: JobFilter = whole(a, "filter")?;
            to_json(target.list_jobs(&filter).await?)
        }
        "cancel_job" => to_json(target.cancel_job(arg(a, "job")?).await?),
        "retry_job" => to_json(target.retry_job(arg(a, "job")?).await?),
        "job_events" => {
            let limit = arg::<Option<u32>>(a, "limit")?.unwrap_or(1000);
            to_json(target.job_events(arg(a, "job")?, arg::<Option<i64>>(a, "after")?.unwrap_or(0), limit).await?)
        }
        "wait_job" => {
            let timeout = arg::<Option<f64>>(a, "timeout")?
                .map(|s| Duration::try_from_secs_f64(s).map_err(|_| Error::invalid("timeout: give seconds >= 0")))
                .transpose()?;
            to_json(target.wait_job(arg(a, "job")?, timeout).await?)
        }
        "create_conversation" => to_json(target.create_conversation(arg(a, "project")?).await?),
        "conversation" => to_json(target.conversation(arg(a, "conversation")?).await?),
        "post_message" => to_json(target.post_message(arg(a, "conversation")?, &arg::<String>(a, "text")?).await?),
        "conversation_events" => {
            let wait = Duration::from_millis(arg::<Option<u64>>(a, "wait_ms")?.unwrap_or(0));
            let after = arg::<Option<i64>>(a, "after")?.unwrap_or(0);
            to_json(target.conversation_events(arg(a, "conversation")?, after, wait).await?)
        }
        "task" => to_json(target.task(arg(a, "task")?).await?),
        "list_tasks" => {
            let filter: TaskFilter = whole(a, "filter")?;
            to_json(target.list_tasks(&filter).await?)
        }
        "transcript" => {
            let limit = arg::<Option<u32>>(a, "limit")?.unwrap_or(1000);
            to_json(target.transcript(arg(a, "task")?, arg::<Option<i64>>(a, "after")?.unwrap_or(0), limit).await?)
        }
        "cancel_task" => to_json(target.cancel_task(arg(a, "task")?).await?),
        "replay_task" => to_json(target.replay_task(arg(a, "task")?).await?),
        "list_users" => match target {
            Target::Remote(c) => to_json(c.list_users().await?),
            Target::Local(l) => to_json(l.cx().auth().list_users(l.actor()).await?),
        },
        "create_user" => {
            let Target::Local(l) = target else {
                return Err(Error::invalid(
                    "users: accounts on a daemon are made by signing up or by invitation (cloudx user invite)",
                ));
            };
            let email: String = arg(a, "email")?;
            let display_name = arg::<Option<String>>(a, "display_name")?
                .unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned());
            let new = NewUser { email, password: arg(a, "password")?, display_name };
            let role = arg::<Option<Role>>(a, "role")?.unwrap_or(Role::Member);
            to_json(l.cx().auth().add_user(l.actor(), new, role, l.audit()).await?)
        }
        "user_id" => to_json(target.user_id(&arg::<String>(a, "email")?).await?),
        other => Err(Error::invalid(format!("no call `{other}`"))),
    }
}
