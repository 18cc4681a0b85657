//! What streams between Python and the core: a file read as it arrives ([`Reader`]), a file
//! written as it is produced ([`Writer`]), a run's output as it comes ([`RunHandle`]).

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use cloudx_core::sandbox::OutputChunk;
use cloudx_core::storage::ByteStream;
use cloudx_core::{Error, ErrorKind, Result};
use cloudx_http::client::Opened;
use cloudx_http::client::target::Target;
use futures_util::StreamExt as _;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::rt::{Stopped, block, runtime, wait};

/// The unread part of a file.
struct Unread {
    body: Option<ByteStream>,
    pending: Bytes,
}

/// A version of a file, read as it arrives.
#[pyclass(frozen, module = "cloudx._cloudx")]
pub(crate) struct Reader {
    #[pyo3(get)]
    path: String,
    #[pyo3(get)]
    version: i64,
    #[pyo3(get)]
    size: Option<u64>,
    unread: Mutex<Unread>,
}

impl Reader {
    pub(crate) fn new(path: String, opened: Opened) -> Self {
        let Opened { version, size, body } = opened;
        Reader { path, version, size, unread: Mutex::new(Unread { body: Some(body), pending: Bytes::new() }) }
    }
}

/// The next piece of `unread`, at most `limit` bytes (`None`: any size); empty at the end.
async fn next_piece(unread: &mut Unread, limit: Option<usize>, path: &str) -> Result<Bytes> {
    if unread.pending.is_empty() {
        let Some(body) = unread.body.as_mut() else { return Ok(Bytes::new()) };
        match body.next().await {
            Some(Ok(chunk)) => unread.pending = chunk,
            Some(Err(e)) => {
                unread.body = None;
                return Err(Error::new(ErrorKind::Unavailable, format!("cannot read {path}: {e}")));
            }
            None => {
                unread.body = None;
                return Ok(Bytes::new());
            }
        }
    }
    let take = limit.map_or(unread.pending.len(), |l| l.min(unread.pending.len()));
    Ok(unread.pending.split_to(take))
}

#[pymethods]
impl Reader {
    /// Up to `size` bytes (all that is left when negative); empty at the end.
    #[pyo3(signature = (size = -1))]
    fn read<'py>(&self, py: Python<'py>, size: i64) -> PyResult<Bound<'py, PyBytes>> {
        let limit = usize::try_from(size).ok();
        let path = self.path.as_str();
        let out = py.detach(|| {
            let mut unread = self.unread.lock().unwrap_or_else(PoisonError::into_inner);
            wait(async {
                match limit {
                    Some(limit) => {
                        // At most `limit`, gathered across chunks until it is reached or the end.
                        let mut out = Vec::new();
                        while out.len() < limit {
                            let piece = next_piece(&mut unread, Some(limit - out.len()), path).await?;
                            if piece.is_empty() {
                                break;
                            }
                            if out.is_empty() && piece.len() == limit {
                                return Ok(piece.to_vec());
                            }
                            out.extend_from_slice(&piece);
                        }
                        Ok(out)
                    }
                    None => {
                        let mut out = Vec::new();
                        loop {
                            let piece = next_piece(&mut unread, None, path).await?;
                            if piece.is_empty() {
                                return Ok(out);
                            }
                            out.extend_from_slice(&piece);
                        }
                    }
                }
            })
        });
        let out = out.map_err(|e| e.into_py(py))?;
        Ok(PyBytes::new(py, &out))
    }

    /// The next chunk as it arrived (at most `size` bytes when given); empty at the end.
    #[pyo3(signature = (size = None))]
    fn read_chunk<'py>(&self, py: Python<'py>, size: Option<usize>) -> PyResult<Bound<'py, PyBytes>> {
        let path = self.path.as_str();
        let out = py.detach(|| {
            let mut unread = self.unread.lock().unwrap_or_else(PoisonError::into_inner);
            wait(async { next_piece(&mut unread, size, path).await })
        });
        let out = out.map_err(|e| e.into_py(py))?;
        Ok(PyBytes::new(py, &out))
    }

    /// Stops reading (the rest is not fetched).
    fn close(&self, py: Python<'_>) {
        // Without the GIL: a read in another thread holds the lock and takes the GIL to look
        // for signals.
        py.detach(|| {
            let mut unread = self.unread.lock().unwrap_or_else(PoisonError::into_inner);
            unread.body = None;
            unread.pending = Bytes::new();
        });
    }

    fn __repr__(&self) -> String {
        format!("<cloudx._cloudx.Reader {} version {}>", self.path, self.version)
    }
}

/// The upload of a [`Writer`], while it runs.
struct Upload {
    tx: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    done: Option<JoinHandle<Result<Value>>>,
}

/// A new version of a file, uploaded as it is written; it exists once `finish` returns.
#[pyclass(frozen, module = "cloudx._cloudx")]
pub(crate) struct Writer {
    #[pyo3(get)]
    path: String,
    upload: Mutex<Upload>,
}

impl Writer {
    pub(crate) fn start(
        target: Arc<Target>,
        project: Uuid,
        path: String,
        expected_version: Option<i64>,
        message: Option<String>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
        let body: ByteStream = Box::pin(tokio_stream_of(rx));
        let file = path.clone();
        let done = runtime().spawn(async move {
            let version = target.put_stream(project, &file, body, None, expected_version, message.as_deref()).await?;
            serde_json::to_value(version).map_err(|e| Error::internal("cannot encode an answer", e))
        });
        Writer { path, upload: Mutex::new(Upload { tx: Some(tx), done: Some(done) }) }
    }

    /// The upload's end: its version, or why it failed.
    fn finish_upload(&self, py: Python<'_>, abort: bool) -> PyResult<Option<Value>> {
        let (tx, done) = {
            let mut upload = self.upload.lock().unwrap_or_else(PoisonError::into_inner);
            (upload.tx.take(), upload.done.take())
        };
        let Some(done) = done else { return Ok(None) };
        let stop = done.abort_handle();
        let aborted = block(py, async move {
            if let Some(tx) = tx
                && abort
            {
                let _ = tx.send(Err(std::io::Error::other("the writer was aborted"))).await;
            }
            done.await.map_err(|e| Error::internal("the upload's task failed", e))?
        });
        match aborted {
            Ok(version) => Ok(Some(version)),
            Err(_) if abort => {
                stop.abort();
                Ok(None)
            }
            Err(e) => {
                // Interrupted (Ctrl-C) while it finished: the upload stops rather than ending
                // unseen in the background (a no-op when it failed by itself).
                stop.abort();
                Err(e)
            }
        }
    }
}

/// The items of `rx` as a stream.
fn tokio_stream_of<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

#[pymethods]
impl Writer {
    /// Sends `data` (in pieces of at most a mebibyte); answers its length.
    fn write(&self, py: Python<'_>, data: PyBackedBytes) -> PyResult<usize> {
        let tx = {
            let upload = self.upload.lock().unwrap_or_else(PoisonError::into_inner);
            upload.tx.clone()
        };
        let Some(tx) = tx else {
            return Err(crate::errors::to_py(py, &Error::invalid(format!("{}: the writer is closed", self.path))));
        };
        let data = Bytes::from_owner(data);
        let len = data.len();
        let sent = block(py, async move {
            let mut start = 0;
            while start < len {
                let end = (start + crate::session::PIECE).min(len);
                if tx.send(Ok(data.slice(start..end))).await.is_err() {
                    return Ok(false);
                }
                start = end;
            }
            Ok(true)
        })?;
        if !sent {
            // The upload ended early: its error says why.
            return match self.finish_upload(py, false)? {
                Some(_) => Err(crate::errors::to_py(
                    py,
                    &Error::new(ErrorKind::Internal, format!("{}: the upload ended before its content", self.path)),
                )),
                None => Err(crate::errors::to_py(py, &Error::invalid(format!("{}: the writer is closed", self.path)))),
            };
        }
        Ok(len)
    }

    /// Ends the upload and answers the new version's JSON form (`None` if already closed).
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match self.finish_upload(py, false)? {
            Some(version) => Ok(Some(
                pythonize::pythonize(py, &version)
                    .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?,
            )),
            None => Ok(None),
        }
    }

    /// Drops the upload: no version is written.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.finish_upload(py, true).map(drop)
    }

    fn __repr__(&self) -> String {
        format!("<cloudx._cloudx.Writer {}>", self.path)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Never finished: the upload is aborted, nothing written.
        let upload = self.upload.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let (Some(tx), Some(done)) = (upload.tx.take(), upload.done.take()) {
            let _ = tx.try_send(Err(std::io::Error::other("the writer was dropped unfinished")));
            // Stopped even when the error could not be queued: an upload whose body merely
            // ended would be saved.
            done.abort();
        }
    }
}

/// A run in progress: its output as it comes, then how it ended.
#[pyclass(frozen, module = "cloudx._cloudx")]
pub(crate) struct RunHandle {
    output: Mutex<mpsc::Receiver<OutputChunk>>,
    done: Mutex<Option<JoinHandle<Result<Value>>>>,
    abort: tokio::task::AbortHandle,
}

impl RunHandle {
    pub(crate) fn new(output: mpsc::Receiver<OutputChunk>, done: JoinHandle<Result<Value>>) -> Self {
        let abort = done.abort_handle();
        RunHandle { output: Mutex::new(output), done: Mutex::new(Some(done)), abort }
    }
}

#[pymethods]
impl RunHandle {
    /// The next piece of output, `("stdout" | "stderr", bytes)`; `None` once the run has ended.
    fn next_chunk<'py>(&self, py: Python<'py>) -> PyResult<Option<(&'static str, Bound<'py, PyBytes>)>> {
        let chunk = py.detach(|| {
            let mut output = self.output.lock().unwrap_or_else(PoisonError::into_inner);
            wait(async { Ok(output.recv().await) })
        });
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(Stopped::Interrupted(e)) => {
                self.abort.abort();
                return Err(e);
            }
            Err(e) => return Err(e.into_py(py)),
        };
        Ok(chunk.map(|chunk| match chunk {
            OutputChunk::Stdout(b) => ("stdout", PyBytes::new(py, &b)),
            OutputChunk::Stderr(b) => ("stderr", PyBytes::new(py, &b)),
        }))
    }

    /// How the run ended (its JSON form); raises why it could not run. Waits for its end.
    fn result<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let done = self.done.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(done) = done else {
            return Err(crate::errors::to_py(py, &Error::invalid("the run's result was already taken")));
        };
        let abort = self.abort.clone();
        let run = py.detach(|| {
            wait(async {
                match done.await {
                    Ok(run) => run,
                    Err(e) if e.is_cancelled() => Err(Error::new(ErrorKind::Conflict, "the run was cancelled")),
                    Err(e) => Err(Error::internal("the run's task failed", e)),
                }
            })
        });
        let run = match run {
            Ok(run) => run,
            Err(Stopped::Interrupted(e)) => {
                abort.abort();
                return Err(e);
            }
            Err(e) => return Err(e.into_py(py)),
        };
        pythonize::pythonize(py, &run).map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    /// Stops the run: its sandbox is killed (on a daemon, its job cancelled).
    fn cancel(&self) {
        self.abort.abort();
    }
}

impl Drop for RunHandle {
    fn drop(&mut self) {
        // A run nobody follows any more is stopped.
        self.abort.abort();
    }
}
