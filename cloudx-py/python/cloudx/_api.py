"""The API: `open` (the core in this process) and `connect` (a daemon), one set of classes for both."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Union

from . import _cloudx
from ._errors import Error
from ._types import (
    Chunk,
    Conversation,
    Event,
    FileEntry,
    FileVersion,
    Job,
    JobEvent,
    Member,
    Project,
    RunResult,
    SyncReport,
    Task,
)

if TYPE_CHECKING:
    from ._aio import AsyncCloudx

ProjectRef = Union[Project, str]
"""A project: the object, its id, or its slug (among the caller's projects)."""

Duration = Union[float, int, timedelta]
"""Seconds, or a timedelta."""

def open(  # noqa: A001 - `cloudx.open` mirrors the built-in on purpose
    data_dir: Optional[Union[str, os.PathLike[str]]] = None,
    *,
    user: Optional[str] = None,
    config: Optional[Union[str, os.PathLike[str]]] = None,
    worker: bool = True,
) -> Cloudx:
    """The core in this process, on `data_dir` (made on first use with the embedded defaults:
    SQLite and local files; without it, the configuration's `data_dir`, by default
    `./cloudx-data`). No daemon is needed.

    It acts as the local system principal (every right; it has no password and cannot sign in
    over HTTP), or, with `user`, as the account with that e-mail, with exactly its rights.
    The configuration is read as the daemon reads it: `config` (else `CLOUDX_CONFIG`, else a
    `./cloudx.toml` that exists), then the `CLOUDX_*` environment variables; `data_dir` wins. With
    `worker`, an in-process worker runs jobs and agent tasks while the instance is open.
    """
    session = _cloudx.open_embedded(
        None if data_dir is None else os.fspath(data_dir),
        user=user,
        config=None if config is None else os.fspath(config),
        worker=worker,
    )
    return Cloudx(session)


def connect(url: str, *, api_key: Optional[str] = None) -> Cloudx:
    """A client of the daemon at `url` (`http://127.0.0.1:8080`) with an API key (`cxk_...`;
    default: the `CLOUDX_API_KEY` environment variable). The same API as `open`."""
    key = api_key if api_key is not None else os.environ.get("CLOUDX_API_KEY")
    if not key:
        raise _invalid("api_key: give an API key (cloudx api-key create), or set CLOUDX_API_KEY")
    return Cloudx(_cloudx.connect_remote(url, key))


def _invalid(message: str) -> Error:
    from ._errors import InvalidInput

    return InvalidInput("invalid_input", message)


def _seconds(value: Optional[Duration], what: str) -> Optional[float]:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise _invalid(f"{what}: give a duration of 0 or more")
    return seconds


def _id(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    ident = getattr(value, "id", None)
    if isinstance(ident, str):
        return ident
    raise _invalid(f"{what}: give a {what} or its id, not {type(value).__name__}")


class Cloudx:
    """One instance of cloudx: embedded in this process (`cloudx.open`) or a daemon
    (`cloudx.connect`). Safe to share between threads; every blocking call releases the GIL,
    and Ctrl-C interrupts it (a run's sandbox is killed, a chat's task cancelled).

    Use it as a context manager, or call `close`, to stop its worker and close its database.
    """

    def __init__(self, session: _cloudx.Session) -> None:
        self._session = session
        self.projects = Projects(self)
        """Projects: create, list, share."""
        self.files = Files(self)
        """Files: read, write, stream, list, history, push and pull a folder."""
        self.jobs = Jobs(self)
        """The job queue: submit, wait, follow events."""
        self.users = Users(self)
        """Accounts: list them; embedded, create them."""
        self._aio: Optional[AsyncCloudx] = None
        self._projects_by_name: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def mode(self) -> Literal["embedded", "remote"]:
        """`embedded` (`cloudx.open`) or `remote` (`cloudx.connect`)."""
        return self._session.mode  # type: ignore[return-value]

    @property
    def aio(self) -> AsyncCloudx:
        """The same API with `async` methods, for asyncio."""
        if self._aio is None:
            from ._aio import AsyncCloudx

            self._aio = AsyncCloudx(self)
        return self._aio

    def _call(self, op: str, **args: Any) -> Any:
        return self._session.call(op, {k: v for k, v in args.items() if v is not None})

    def _project(self, project: ProjectRef) -> str:
        """A project's id (slugs looked up once and remembered)."""
        if isinstance(project, Project):
            return project.id
        if not isinstance(project, str) or not project:
            raise _invalid("project: give a Project, its id or its slug")
        if len(project) == 36:
            try:
                return str(uuid.UUID(project))
            except ValueError:
                pass  # a slug of that length
        with self._lock:
            known = self._projects_by_name.get(project)
        if known is None:
            known = self._call("resolve_project", project=project)["id"]
            with self._lock:
                self._projects_by_name[project] = known
        return known

    def run(
        self,
        argv: Sequence[str],
        *,
        project: Optional[ProjectRef] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[Union[str, bytes]] = None,
        timeout: Optional[Duration] = None,
        memory: Optional[int] = None,
        commit: bool = False,
        message: Optional[str] = None,
    ) -> RunResult:
        """Runs `argv` (a list: never a shell string) in the sandbox, on a checkout of
        `project`'s files under the project's policy; embedded, without a project, on an empty
        scratch folder. `timeout` and `memory` (bytes) tighten the limits. With `commit`, the
        files the command changed become a new version.

        A command that fails is a result with its exit code, not an exception; an exception
        says the run could not be made. Ctrl-C kills the sandbox.
        """
        target, request = self._run_request(argv, project, env, cwd, stdin, timeout, memory, commit, message)
        return RunResult._from(self._session.exec(target, request))

    def run_stream(
        self,
        argv: Sequence[str],
        *,
        project: Optional[ProjectRef] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        stdin: Optional[Union[str, bytes]] = None,
        timeout: Optional[Duration] = None,
        memory: Optional[int] = None,
        commit: bool = False,
        message: Optional[str] = None,
    ) -> RunStream:
        """As `run`, yielding the output (`Chunk`s) as it comes; `result` is set at the end.
        On a daemon the run is a `sandbox_exec` job (a worker must be running)."""
        target, request = self._run_request(argv, project, env, cwd, stdin, timeout, memory, commit, message)
        return RunStream(self._session.exec_stream(target, request))

    def _run_request(
        self,
        argv: Sequence[str],
        project: Optional[ProjectRef],
        env: Optional[Mapping[str, str]],
        cwd: Optional[str],
        stdin: Optional[Union[str, bytes]],
        timeout: Optional[Duration],
        memory: Optional[int],
        commit: bool,
        message: Optional[str],
    ) -> tuple[Optional[str], dict[str, Any]]:
        if isinstance(argv, (str, bytes)):
            raise _invalid("argv: give a list of arguments (['ls', '-l']), not a shell string")
        request: dict[str, Any] = {"argv": [str(a) for a in argv], "commit": commit}
        if env:
            request["env"] = {str(k): str(v) for k, v in env.items()}
        if cwd is not None:
            request["cwd"] = cwd
        if stdin is not None:
            if isinstance(stdin, bytes):
                try:
                    stdin = stdin.decode("utf-8")
                except UnicodeDecodeError:
                    raise _invalid("stdin: give text (UTF-8)") from None
            request["stdin"] = stdin
        limits: dict[str, Any] = {}
        seconds = _seconds(timeout, "timeout")
        if seconds is not None:
            limits["wall_time"] = f"{max(1, round(seconds * 1000))}ms"
        if memory is not None:
            limits["memory"] = int(memory)
        if limits:
            request["limits"] = limits
        if message is not None:
            request["message"] = message
        return (None if project is None else self._project(project)), request

    def chat(
        self,
        project: ProjectRef,
        message: str,
        *,
        conversation: Optional[Union[Conversation, str]] = None,
    ) -> ChatStream:
        """Asks the agent, in a new conversation of `project` or in `conversation` (a
        follow-up). The answer is a stream of `Event`s as they happen, until the task ends:
        iterate it (or `async for`), or call `wait()`. Ctrl-C while it is read cancels the task.
        The agent acts with the caller's rights on the project."""
        if conversation is None:
            conv = Conversation._from(self._call("create_conversation", project=self._project(project)))
        elif isinstance(conversation, Conversation):
            conv = conversation
        else:
            conv = Conversation._from(self._call("conversation", conversation=conversation))
        task = Task._from(self._call("post_message", conversation=conv.id, text=message))
        # The conversation's events are read from its start; those of earlier tasks are skipped.
        return ChatStream(self, conv, task, 0)

    def as_user(self, email: str) -> Cloudx:
        """The same embedded instance acting as the account `email`, with exactly its rights
        (for the local system principal; it shares this instance's database and worker)."""
        return Cloudx(self._session.as_user(email))

    def close(self) -> None:
        """Stops the in-process worker (running jobs get `worker.grace` to finish) and closes
        the database; calls made afterwards fail."""
        self._session.close()

    def __enter__(self) -> Cloudx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " (closed)" if self._session.closed else ""
        return f"<cloudx.Cloudx {self.mode} {self._session.location} as {self._session.actor}{state}>"


class Users:
    """Accounts of the instance."""

    def __init__(self, cx: Cloudx) -> None:
        self._cx = cx

    def list(self) -> list[dict[str, Any]]:
        """Every account (administrators and the local system principal)."""
        return list(self._cx._call("list_users"))

    def create(
        self, email: str, password: str, *, role: Literal["member", "admin"] = "member", display_name: Optional[str] = None
    ) -> dict[str, Any]:
        """Makes an account on the embedded instance (the password is checked against the
        policy; it is what the user signs in to a daemon with)."""
        return dict(
            self._cx._call("create_user", email=email, password=password, role=role, display_name=display_name)
        )


class Projects:
    """Projects: versioned files, members with roles."""

    def __init__(self, cx: Cloudx) -> None:
        self._cx = cx

    def create(
        self,
        name: str,
        *,
        slug: Optional[str] = None,
        description: Optional[str] = None,
        template: Optional[str] = None,
        owner: Optional[str] = None,
    ) -> Project:
        """A new project owned by the caller (`template`: `python`, `node`, ... to start with
        files). The local system principal has no account: it names the `owner` (an e-mail)."""
        owner_id = None if owner is None else self._cx._call("user_id", email=owner)
        try:
            return Project._from(
                self._cx._call(
                    "create_project",
                    name=name,
                    slug=slug,
                    description=description,
                    template=template,
                    owner_id=owner_id,
                )
            )
        except Error as e:
            if e.code == "invalid_input" and e.message.startswith("owner:"):
                raise type(e)(
                    e.code,
                    "owner: the local system principal owns no projects; name the owner"
                    " (create(name, owner='you@example.com')) or open as a user"
                    " (cloudx.open(dir, user='you@example.com'))",
                ) from None
            raise

    def list(self, *, all: bool = False, deleted: bool = False) -> list[Project]:  # noqa: A002
        """The caller's projects (`all`: every project, for administrators; `deleted`: those in the bin)."""
        return [Project._from(p) for p in self._cx._call("list_projects", all=all, deleted=deleted)]

    def get(self, project: ProjectRef) -> Project:
        """A project by id or slug."""
        ident = project.id if isinstance(project, Project) else project
        return Project._from(self._cx._call("resolve_project", project=ident))

    def share(
        self, project: ProjectRef, user: str, role: Literal["viewer", "editor", "owner"] = "viewer"
    ) -> Member:
        """Gives the account `user` (an e-mail) `role` on the project (owners only)."""
        return Member._from(self._cx._call("set_member", project=self._cx._project(project), user=user, role=role))

    def unshare(self, project: ProjectRef, user: str) -> None:
        """Takes the account `user` (an e-mail) off the project."""
        self._cx._call("remove_member", project=self._cx._project(project), user=user)

    def members(self, project: ProjectRef) -> list[Member]:
        return [Member._from(m) for m in self._cx._call("members", project=self._cx._project(project))]

    def delete(self, project: ProjectRef) -> None:
        """Moves the project to the bin (`restore` brings it back)."""
        ident = self._cx._project(project)
        self._cx._call("delete_project", project=ident)
        with self._cx._lock:
            self._cx._projects_by_name = {k: v for k, v in self._cx._projects_by_name.items() if v != ident}

    def restore(self, project: Union[Project, str]) -> Project:
        """Brings a deleted project back (by id or Project)."""
        return Project._from(self._cx._call("restore_project", project=_id(project, "project")))


class Files:
    """A project's files: every write makes a new version; older ones stay readable."""

    def __init__(self, cx: Cloudx) -> None:
        self._cx = cx

    def read(self, project: ProjectRef, path: str, *, version: Optional[int] = None) -> bytes:
        """The content of `path` (at `version`, else the latest)."""
        content, _ = self._cx._session.read_all(self._cx._project(project), path, version)
        return content

    def read_text(
        self, project: ProjectRef, path: str, *, version: Optional[int] = None, encoding: str = "utf-8"
    ) -> str:
        return self.read(project, path, version=version).decode(encoding)

    def write(
        self,
        project: ProjectRef,
        path: str,
        data: Union[bytes, bytearray, memoryview, str],
        *,
        expected_version: Optional[int] = None,
        message: Optional[str] = None,
    ) -> FileVersion:
        """Writes a new version of `path` (text as UTF-8). With `expected_version` (0: the file
        must not exist yet) the write fails with PreconditionFailed when the file's latest
        version is another, and nothing is written."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, bytes):
            data = bytes(data)
        return FileVersion._from(
            self._cx._session.write_all(self._cx._project(project), path, data, expected_version, message)
        )

    def write_text(
        self,
        project: ProjectRef,
        path: str,
        text: str,
        *,
        expected_version: Optional[int] = None,
        message: Optional[str] = None,
        encoding: str = "utf-8",
    ) -> FileVersion:
        return self.write(project, path, text.encode(encoding), expected_version=expected_version, message=message)

    def open(
        self,
        project: ProjectRef,
        path: str,
        mode: Literal["rb", "wb"] = "rb",
        *,
        version: Optional[int] = None,
        expected_version: Optional[int] = None,
        message: Optional[str] = None,
    ) -> Union[FileReader, FileWriter]:
        """A binary file-like object streaming the file: `rb` reads a version as it arrives;
        `wb` uploads as you write and makes the new version on `close` (nothing is written when
        the `with` block raises, or on `abort`). Wrap with `io.TextIOWrapper` for text."""
        ident = self._cx._project(project)
        if mode == "rb":
            return FileReader(self._cx._session.open_reader(ident, path, version))
        if mode == "wb":
            if version is not None:
                raise _invalid("version: a file opened for writing makes a new version")
            return FileWriter(self._cx._session.open_writer(ident, path, expected_version, message))
        raise _invalid(f"mode: `{mode}` is not rb or wb")

    def list(
        self, project: ProjectRef, prefix: str = "", *, version: Optional[int] = None, recursive: bool = True
    ) -> list[FileEntry]:
        """The files (and, not recursive, folders) under `prefix`, at the latest version or `version`."""
        tree = self._cx._call(
            "tree", project=self._cx._project(project), prefix=prefix, version=version, recursive=recursive
        )
        return [FileEntry._from(e) for e in tree["entries"]]

    def history(self, project: ProjectRef, path: str, *, limit: int = 100) -> list[FileVersion]:
        """The versions of `path`, newest first."""
        return [
            FileVersion._from(v)
            for v in self._cx._call("history", project=self._cx._project(project), path=path, limit=limit)
        ]

    def restore(self, project: ProjectRef, path: str, version: Optional[int] = None) -> FileVersion:
        """Makes `version` of `path` (by default: the one before its deletion) its latest again."""
        return FileVersion._from(
            self._cx._call("restore_file", project=self._cx._project(project), path=path, version=version)
        )

    def delete(
        self, project: ProjectRef, path: str, *, expected_version: Optional[int] = None, message: Optional[str] = None
    ) -> int:
        """Deletes `path` (its history stays); answers the project's new version."""
        return int(
            self._cx._call(
                "delete_file",
                project=self._cx._project(project),
                path=path,
                expected_version=expected_version,
                message=message,
            )
        )

    def move(self, project: ProjectRef, source: str, destination: str, *, message: Optional[str] = None) -> int:
        """Moves a file or folder; answers the project's new version."""
        return int(
            self._cx._call(
                "move_file", project=self._cx._project(project), message=message, **{"from": source, "to": destination}
            )
        )

    def push(
        self, folder: Union[str, os.PathLike[str]], project: ProjectRef, *, dry_run: bool = False
    ) -> SyncReport:
        """Sends what changed in the local `folder` to the project (as `cloudx push`). Files
        changed on both sides are conflicts: reported, left alone on both sides."""
        return SyncReport._from(
            self._cx._call("push", project=self._cx._project(project), dir=os.fspath(folder), dry_run=dry_run)
        )

    def pull(
        self, project: ProjectRef, folder: Union[str, os.PathLike[str]], *, dry_run: bool = False
    ) -> SyncReport:
        """Fetches what changed in the project into the local `folder` (as `cloudx pull`)."""
        return SyncReport._from(
            self._cx._call("pull", project=self._cx._project(project), dir=os.fspath(folder), dry_run=dry_run)
        )


class FileReader(io.RawIOBase):
    """A version of a file, read as it streams in (binary, not seekable). Iterating it yields
    the content in chunks as they arrive."""

    def __init__(self, native: _cloudx.Reader) -> None:
        super().__init__()
        self._native = native
        self.path: str = native.path
        self.version: int = native.version
        self.size: Optional[int] = native.size

    def readable(self) -> bool:
        return True

    def read(self, size: Optional[int] = -1) -> bytes:
        self._checkClosed()
        return self._native.read(-1 if size is None else size)

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        self._checkClosed()
        view = memoryview(buffer).cast("B")
        data = self._native.read(len(view))
        view[: len(data)] = data
        return len(data)

    def __iter__(self) -> Iterator[bytes]:  # type: ignore[override]
        return self

    def __next__(self) -> bytes:
        self._checkClosed()
        chunk = self._native.read_chunk()
        if not chunk:
            raise StopIteration
        return chunk

    def close(self) -> None:
        if not self.closed:
            self._native.close()
        super().close()

    def __repr__(self) -> str:
        return f"<cloudx.FileReader {self.path} version {self.version}{' (closed)' if self.closed else ''}>"


class FileWriter(io.RawIOBase):
    """A new version of a file, uploaded as it is written; it exists once `close` returns
    (`result` is then its FileVersion). Leaving a `with` block by an exception aborts it, and
    so does dropping the writer unclosed. (A wrapper such as `io.TextIOWrapper` closes, so
    saves, what was written when its own `with` block raises: abort the writer there.)"""

    def __init__(self, native: _cloudx.Writer) -> None:
        super().__init__()
        self._native = native
        self.path: str = native.path
        self.result: Optional[FileVersion] = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        self._checkClosed()
        if isinstance(data, str):
            raise TypeError("write() takes bytes; wrap the writer in io.TextIOWrapper for text")
        return self._native.write(data if isinstance(data, bytes) else bytes(data))

    def close(self) -> Optional[FileVersion]:  # type: ignore[override]
        """Finishes the upload and answers the new version."""
        if not self.closed:
            try:
                version = self._native.finish()
                if version is not None:
                    self.result = FileVersion._from(version)
            finally:
                super().close()
        return self.result

    def abort(self) -> None:
        """Drops the upload: no version is written."""
        if not self.closed:
            try:
                self._native.abort()
            finally:
                super().close()

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if kind is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # io.IOBase would close, that is save, a writer dropped half-written: abort instead.
        try:
            self.abort()
        except Exception:  # noqa: BLE001 - nothing can be reported from a finaliser
            pass

    def __repr__(self) -> str:
        done = f" -> version {self.result.version}" if self.result else (" (closed)" if self.closed else "")
        return f"<cloudx.FileWriter {self.path}{done}>"


class Jobs:
    """The durable job queue: jobs survive restarts and are retried with backoff."""

    def __init__(self, cx: Cloudx) -> None:
        self._cx = cx

    def submit(
        self,
        kind: str,
        payload: Optional[Mapping[str, Any]] = None,
        *,
        project: Optional[ProjectRef] = None,
        priority: int = 0,
        max_attempts: Optional[int] = None,
        idempotency_key: Optional[str] = None,
    ) -> Job:
        """Queues a job (`sandbox_exec`, `test_runner`, `codegen`, or a kind of your own
        workers). With `idempotency_key`, submitting again answers the first job."""
        answer = self._cx._call(
            "submit_job",
            kind=kind,
            payload=dict(payload) if payload is not None else {},
            project=None if project is None else self._cx._project(project),
            priority=priority,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
        )
        return Job._from(answer["job"])

    def get(self, job: Union[Job, str]) -> Job:
        return Job._from(self._cx._call("job", job=_id(job, "job")))

    def list(
        self,
        *,
        status: Optional[str] = None,
        kind: Optional[str] = None,
        project: Optional[ProjectRef] = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs, newest first (without a project: every job, for administrators)."""
        return [
            Job._from(j)
            for j in self._cx._call(
                "list_jobs",
                status=status,
                kind=kind,
                project=None if project is None else self._cx._project(project),
                limit=limit,
            )
        ]

    def wait(self, job: Union[Job, str], *, timeout: Optional[Duration] = None) -> Job:
        """Waits until the job has finished (succeeded, dead or cancelled) and answers it;
        raises TimeoutError after `timeout`."""
        ident = _id(job, "job")
        done = self._cx._call("wait_job", job=ident, timeout=_seconds(timeout, "timeout"))
        if done is None:
            raise TimeoutError(f"job {ident} had not finished after {_seconds(timeout, 'timeout')} s")
        return Job._from(done)

    def events(self, job: Union[Job, str], *, after: int = 0, follow: bool = False) -> Iterator[JobEvent]:
        """The job's events after number `after`; with `follow`, waits for more until it ends."""
        ident = _id(job, "job")
        while True:
            finished = follow and Job._from(self._cx._call("job", job=ident)).finished
            events = self._cx._call("job_events", job=ident, after=after)
            for e in events:
                event = JobEvent._from(e)
                after = event.seq
                yield event
            if not follow or (finished and not events):
                return
            if not events:
                self._cx._call("wait_job", job=ident, timeout=0.2)

    def cancel(self, job: Union[Job, str]) -> Job:
        """Cancels a job: a queued one at once, a running one at its worker's next heartbeat."""
        return Job._from(self._cx._call("cancel_job", job=_id(job, "job")))

    def retry(self, job: Union[Job, str]) -> Job:
        """Queues a dead or cancelled job again."""
        return Job._from(self._cx._call("retry_job", job=_id(job, "job")))


class RunStream:
    """A sandboxed run's output (`Chunk`s) as it comes; `result` once it has ended. Iterable
    and async-iterable. Like a streamed response, a loop that leaves before the end (`break`, an
    exception, Ctrl-C) kills the sandbox, as `cancel` does."""

    def __init__(self, native: _cloudx.RunHandle) -> None:
        self._native = native
        self._result: Optional[RunResult] = None
        self._ended = False
        self._end = threading.Lock()  # threads reading one stream all see its one end

    @property
    def result(self) -> Optional[RunResult]:
        """How the run ended, once the stream has been read to its end (else None)."""
        return self._result

    def __iter__(self) -> Iterator[Chunk]:
        return _until_end(self, self.cancel)

    def __next__(self) -> Chunk:
        if self._ended:
            raise StopIteration
        chunk = self._native.next_chunk()
        if chunk is None:
            with self._end:
                if not self._ended:
                    self._result = RunResult._from(self._native.result())
                    self._ended = True
            raise StopIteration
        return Chunk(chunk[0], chunk[1])

    def wait(self) -> RunResult:
        """Reads the output to its end and answers how the run ended."""
        for _ in self:
            pass
        assert self._result is not None
        return self._result

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return _until_end_async(self, self.cancel)

    async def __anext__(self) -> Chunk:
        # Cancelled, it stops the run: the thread reading it then ends with it.
        return await _next_in_thread(self, self.cancel)

    def cancel(self) -> None:
        """Stops the run (its sandbox is killed; on a daemon, its job cancelled)."""
        self._native.cancel()

    def __repr__(self) -> str:
        return f"<cloudx.RunStream {'ended' if self._ended else 'running'}>"


def _next_or_none(it: Iterator[Any]) -> Any:
    try:
        return next(it)
    except StopIteration:
        return None


async def _next_in_thread(stream: Any, stop: Callable[[], None]) -> Any:
    """`stream`'s next item, read on a thread; `stop()` when the awaiting task is cancelled."""
    import asyncio

    try:
        item = await asyncio.to_thread(_next_or_none, stream)
    except asyncio.CancelledError:
        stop()
        raise
    if item is None:
        raise StopAsyncIteration
    return item


def _until_end(stream: Any, abandon: Callable[[], Any]) -> Iterator[Any]:
    """`stream`'s items; `abandon()` when the loop leaves before the end."""
    ended = False
    try:
        while True:
            try:
                item = stream.__next__()
            except StopIteration:
                ended = True
                return
            yield item
    finally:
        if not ended and not stream._ended:
            try:
                abandon()
            except Exception:  # noqa: BLE001 - closed meanwhile: nothing left to stop
                pass


async def _until_end_async(stream: Any, abandon: Callable[[], Any]) -> AsyncIterator[Any]:
    ended = False
    try:
        while True:
            try:
                item = await stream.__anext__()
            except StopAsyncIteration:
                ended = True
                return
            yield item
    finally:
        if not ended and not stream._ended:
            try:
                abandon()
            except Exception:  # noqa: BLE001
                pass


class ChatStream:
    """The agent's events (`delta` text, `tool_call`, `tool_result`, `file_changed`, `status`,
    `answer`) as they happen, until its task ends. Iterable and async-iterable. Like a streamed
    response, a loop that leaves before the end (`break`, an exception, Ctrl-C) cancels the
    task; `next(stream)` reads without that."""

    _WAIT_MS = 1000

    def __init__(self, cx: Cloudx, conversation: Conversation, task: Task, after: int) -> None:
        self._cx = cx
        self._conversation = conversation
        self._task = task
        self._after = after
        self._buffer: list[Event] = []
        self._ended = False

    @property
    def task(self) -> Task:
        """The task, as last seen (its final state once the stream has ended)."""
        return self._task

    @property
    def conversation(self) -> Conversation:
        """The conversation (pass it to `chat` to follow up)."""
        return self._conversation

    def __iter__(self) -> Iterator[Event]:
        return _until_end(self, self.cancel)

    def __next__(self) -> Event:
        try:
            while not self._buffer:
                if self._ended:
                    raise StopIteration
                events = self._cx._call(
                    "conversation_events", conversation=self._conversation.id, after=self._after, wait_ms=self._WAIT_MS
                )
                for e in events:
                    event = Event._from(e)
                    self._after = event.seq
                    if event.task != self._task.id:
                        continue
                    self._buffer.append(event)
                    if event.kind == "status" and event.data.get("status") in ("succeeded", "failed", "cancelled"):
                        self._ended = True
                        self._task = Task._from(self._cx._call("task", task=self._task.id))
                        break
                if not events and not self._ended:
                    # A task that ended without its last status event (its job ran out of
                    # attempts) ends the stream too.
                    self._task = Task._from(self._cx._call("task", task=self._task.id))
                    if self._task.finished:
                        self._ended = True
            return self._buffer.pop(0)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def __aiter__(self) -> AsyncIterator[Event]:
        # Abandoned in a coroutine: the task is cancelled without waiting for it to end.
        return _until_end_async(self, self._cancel_now)

    def _cancel_now(self) -> None:
        try:
            self._cx._call("cancel_task", task=self._task.id)
        except Error:
            pass  # it had ended already

    async def __anext__(self) -> Event:
        # Cancelled, it cancels the task: the thread reading it sees its last status within a
        # second.
        return await _next_in_thread(self, self._cancel_now)

    def wait(self) -> Task:
        """Reads the stream to its end and answers the finished task."""
        for _ in self:
            pass
        return self._task

    def text(self) -> str:
        """Reads the stream to its end and answers the agent's final answer."""
        return self.wait().answer or ""

    def cancel(self, *, timeout: Duration = 10.0) -> Task:
        """Cancels the task: its model stream and any sandbox stop at once. Answers the task
        once it has ended (as it was after `timeout` seconds otherwise)."""
        try:
            self._task = Task._from(self._cx._call("cancel_task", task=self._task.id))
        except Error as e:
            if e.code != "conflict":  # it had ended already
                raise
        deadline = time.monotonic() + (_seconds(timeout, "timeout") or 0.0)
        while True:
            self._task = Task._from(self._cx._call("task", task=self._task.id))
            if self._task.finished or time.monotonic() >= deadline:
                return self._task
            time.sleep(0.05)

    def __repr__(self) -> str:
        return f"<cloudx.ChatStream task {self._task.id} {self._task.status}>"
