"""What the API answers: frozen dataclasses read from the core's JSON forms."""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Optional, TypeVar

T = TypeVar("T", bound="_Record")

_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$")


def _when(value: Any) -> Optional[datetime]:
    """An RFC 3339 timestamp (`2026-12-01T10:00:00.123456789Z`) as an aware datetime."""
    if value is None or isinstance(value, datetime):
        return value
    m = _TIMESTAMP.match(value)
    if not m:
        raise ValueError(f"not a timestamp: {value!r}")
    day, clock, fraction, zone = m.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    at = datetime.strptime(f"{day}T{clock}", "%Y-%m-%dT%H:%M:%S").replace(microsecond=micros)
    if zone in (None, "Z"):
        return at.replace(tzinfo=timezone.utc)
    sign = 1 if zone[0] == "+" else -1
    digits = zone[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return at.replace(tzinfo=timezone(sign * offset))


@dataclasses.dataclass(frozen=True)
class _Record:
    _times: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _from(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for name in cls._times:
            if name in values:
                values[name] = _when(values[name])
        for f in dataclasses.fields(cls):
            if f.name not in values:
                values[f.name] = None
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Project(_Record):
    """A project: versioned files, members with roles, a sandbox policy."""

    id: str
    slug: str
    name: str
    description: str
    owner_id: str
    role: Optional[str]
    """The caller's role: viewer, editor or owner (None for an administrator who is no member)."""
    version: int
    """The latest version: each change to the files makes one."""
    bytes: int
    files: int
    quota_bytes: int
    quota_files: int
    created_at: datetime
    updated_at: datetime
    deleted_at: Optional[datetime]
    _times: ClassVar[tuple[str, ...]] = ("created_at", "updated_at", "deleted_at")

    def __repr__(self) -> str:
        return f"<Project {self.slug} ({self.name!r}) version {self.version}, {self.files} files, id {self.id}>"


@dataclasses.dataclass(frozen=True)
class Member(_Record):
    """A member of a project and their role."""

    user_id: str
    email: str
    display_name: str
    role: str
    is_owner: bool
    added_at: datetime
    _times: ClassVar[tuple[str, ...]] = ("added_at",)

    def __repr__(self) -> str:
        return f"<Member {self.email} {self.role}>"


@dataclasses.dataclass(frozen=True)
class FileVersion(_Record):
    """One version of a file (the project's version at which it was written)."""

    path: str
    version: int
    size: int
    content_type: str
    sha256: Optional[str]
    deleted: bool
    author_id: Optional[str]
    message: Optional[str]
    created_at: datetime
    _times: ClassVar[tuple[str, ...]] = ("created_at",)

    def __repr__(self) -> str:
        what = "deleted" if self.deleted else f"{self.size} bytes"
        return f"<FileVersion {self.path} version {self.version}, {what}>"


@dataclasses.dataclass(frozen=True)
class FileEntry(_Record):
    """A file or folder of a listing."""

    path: str
    folder: bool
    size: int
    version: int
    """The version at which it last changed."""
    content_type: Optional[str]
    modified_at: datetime
    _times: ClassVar[tuple[str, ...]] = ("modified_at",)

    def __repr__(self) -> str:
        if self.folder:
            return f"<FileEntry {self.path}/>"
        return f"<FileEntry {self.path} {self.size} bytes, version {self.version}>"


@dataclasses.dataclass(frozen=True)
class Isolation(_Record):
    """How a run was confined: what the sandbox applied (and anything it could not)."""

    namespaces: list[str]
    uid: int
    gid: int
    host_uid: int
    host_gid: int
    setgroups_denied: bool
    mounts: list[str]
    landlock_abi: int
    landlock_rules: list[str]
    landlock_scopes: list[str]
    seccomp_denied: list[str]
    memory_limit: str
    process_limit: str
    rlimits: list[str]
    network: str
    capabilities: str
    no_new_privs: bool
    degraded: list[str]
    """What could not be applied on this host (empty when fully confined)."""

    def __repr__(self) -> str:
        degraded = f", degraded: {'; '.join(self.degraded)}" if self.degraded else ""
        return f"<Isolation namespaces={','.join(self.namespaces)} landlock ABI {self.landlock_abi} network {self.network}{degraded}>"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a sandboxed run ended. A command that fails is a result (see `ok`), not an error."""

    exit_code: Optional[int]
    """The exit code; None when a signal ended it."""
    signal: Optional[int]
    timed_out: bool
    oom_killed: bool
    limit: Optional[str]
    """The limit that ended it (`wall_time`, `cpu_time`, `memory`, `output`, ...), if one did."""
    stdout: str
    """The output (invalid UTF-8 replaced), up to the output limit."""
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_time: timedelta
    cpu_time: timedelta
    peak_memory: int
    isolation: Isolation
    version: Optional[int]
    """The project version it ran on (None for a run without a project)."""
    committed_version: Optional[int]
    """With `commit`: the version the changed files became (None when nothing changed)."""
    written: list[str]
    deleted: list[str]

    @property
    def ok(self) -> bool:
        """Whether it exited 0."""
        return self.exit_code == 0

    @classmethod
    def _from(cls, data: dict[str, Any]) -> RunResult:
        outcome = data["outcome"]
        commit = data.get("commit") or {}
        return cls(
            exit_code=outcome.get("exit_code"),
            signal=outcome.get("signal"),
            timed_out=outcome.get("timed_out", False),
            oom_killed=outcome.get("oom_killed", False),
            limit=outcome.get("limit"),
            stdout=outcome.get("stdout", ""),
            stderr=outcome.get("stderr", ""),
            stdout_truncated=outcome.get("stdout_truncated", False),
            stderr_truncated=outcome.get("stderr_truncated", False),
            wall_time=timedelta(milliseconds=outcome.get("wall_time") or 0),
            cpu_time=timedelta(milliseconds=outcome.get("cpu_time") or 0),
            peak_memory=outcome.get("peak_memory", 0),
            isolation=Isolation._from(outcome.get("isolation") or {}),
            version=data.get("version"),
            committed_version=commit.get("version"),
            written=list(commit.get("written", [])),
            deleted=list(commit.get("deleted", [])),
        )

    def __repr__(self) -> str:
        how = f"exit {self.exit_code}" if self.exit_code is not None else f"signal {self.signal}"
        if self.limit:
            how += f", {self.limit} limit"
        return f"<RunResult {how} in {self.wall_time.total_seconds() * 1000:.1f} ms, {len(self.stdout)} chars of stdout>"


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A piece of a run's output as it came."""

    stream: str
    """`stdout` or `stderr`."""
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Chunk {self.stream} {self.data[:40]!r}{'...' if len(self.data) > 40 else ''}>"


@dataclasses.dataclass(frozen=True)
class Job(_Record):
    """A job of the queue."""

    id: str
    kind: str
    project: Optional[str]
    created_by: str
    status: str
    """queued, running, succeeded, dead or cancelled."""
    priority: int
    payload: Any
    result: Any
    last_error: Optional[str]
    attempts: int
    max_attempts: int
    run_at: datetime
    lease_until: Optional[datetime]
    worker: Optional[str]
    cancel_requested: bool
    idempotency_key: Optional[str]
    created_at: datetime
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    _times: ClassVar[tuple[str, ...]] = ("run_at", "lease_until", "created_at", "started_at", "finished_at")

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "dead", "cancelled")

    def __repr__(self) -> str:
        return f"<Job {self.kind} {self.status} attempt {self.attempts}/{self.max_attempts}, id {self.id}>"


@dataclasses.dataclass(frozen=True)
class JobEvent(_Record):
    """An event a job's worker recorded (`stdout`, `stderr`, progress, ...)."""

    seq: int
    at: datetime
    kind: str
    data: Any
    attempt: int
    _times: ClassVar[tuple[str, ...]] = ("at",)

    def __repr__(self) -> str:
        return f"<JobEvent #{self.seq} {self.kind} {self.data!r:.60}>"


@dataclasses.dataclass(frozen=True)
class Conversation(_Record):
    """A conversation with the agent, in a project."""

    id: str
    project: str
    user: str
    title: str
    active_task: Optional[str]
    created_at: datetime
    updated_at: datetime
    _times: ClassVar[tuple[str, ...]] = ("created_at", "updated_at")

    def __repr__(self) -> str:
        return f"<Conversation {self.title!r} id {self.id}>"


@dataclasses.dataclass(frozen=True)
class Task(_Record):
    """One answer of the agent to one message: its status, its answer and what it cost."""

    id: str
    conversation: str
    project: str
    job: str
    created_by: str
    mode: str
    replay_of: Optional[str]
    prompt: str
    status: str
    """queued, running, succeeded, failed or cancelled."""
    reason: Optional[str]
    answer: Optional[str]
    steps: int
    prompt_tokens: int
    completion_tokens: int
    report: Any
    created_at: datetime
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    _times: ClassVar[tuple[str, ...]] = ("created_at", "started_at", "finished_at")

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")

    def __repr__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"<Task {self.status}{why}, {self.steps} steps, id {self.id}>"


@dataclasses.dataclass(frozen=True)
class Event(_Record):
    """Something the agent did, as it happened: `delta` (answer text as it streams), `tool_call`,
    `tool_result`, `file_changed`, `status`, `answer`, `message`, `step`, `retry`."""

    seq: int
    at: datetime
    task: str
    kind: str
    data: Any
    _times: ClassVar[tuple[str, ...]] = ("at",)

    @property
    def text(self) -> str:
        """The text of a `delta`, `answer` or `message` event; empty for the others."""
        if isinstance(self.data, dict):
            value = self.data.get("text")
            if isinstance(value, str):
                return value
        return ""

    def __repr__(self) -> str:
        return f"<Event #{self.seq} {self.kind} {self.data!r:.60}>"


@dataclasses.dataclass(frozen=True)
class SyncedFile(_Record):
    path: str
    version: Optional[int]


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """What a push or pull did (with `dry_run`, would do)."""

    project: str
    dry_run: bool
    transferred: list[SyncedFile]
    """Files sent (push) or fetched (pull)."""
    deleted: list[SyncedFile]
    """Files deleted on the other side."""
    conflicts: list[str]
    """Files changed on both sides, left alone: `path: why`."""
    skipped: list[str]

    @classmethod
    def _from(cls, data: dict[str, Any]) -> SyncReport:
        return cls(
            project=data["project"],
            dry_run=data["dry_run"],
            transferred=[SyncedFile._from(f) for f in data.get("transferred", [])],
            deleted=[SyncedFile._from(f) for f in data.get("deleted", [])],
            conflicts=list(data.get("conflicts", [])),
            skipped=list(data.get("skipped", [])),
        )

    def __repr__(self) -> str:
        what = "would move" if self.dry_run else "moved"
        return (
            f"<SyncReport {what} {len(self.transferred)} files, {len(self.deleted)} deletions,"
            f" {len(self.conflicts)} conflicts>"
        )
