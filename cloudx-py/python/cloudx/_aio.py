"""The API for asyncio: each blocking call runs in a thread (the GIL is released while it
waits), so the event loop keeps running."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar, Union

from ._api import _seconds
from ._types import Conversation, FileEntry, FileVersion, Job, Member, Project, RunResult, SyncReport

if TYPE_CHECKING:
    import os

    from ._api import ChatStream, Cloudx, Duration, ProjectRef, RunStream

R = TypeVar("R")


async def _in_thread(fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


class AsyncCloudx:
    """`cx.aio`: the API of `cx` with `async` methods. Streams (`run_stream`, `chat`) are
    async-iterable already; their `aio` forms start them without blocking the loop."""

    def __init__(self, cx: Cloudx) -> None:
        self.sync = cx
        """The blocking API this wraps."""
        self.projects = AsyncProjects(cx)
        self.files = AsyncFiles(cx)
        self.jobs = AsyncJobs(cx)

    async def run(self, argv: Sequence[str], **options: Any) -> RunResult:
        """`Cloudx.run`, awaited (the same options). Cancelling the awaiting task kills the run."""
        stream = await _in_thread(self.sync.run_stream, argv, **options)
        async for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    async def run_stream(self, argv: Sequence[str], **options: Any) -> RunStream:
        """`Cloudx.run_stream`: read it with `async for`."""
        return await _in_thread(self.sync.run_stream, argv, **options)

    async def chat(
        self, project: ProjectRef, message: str, *, conversation: Optional[Union[Conversation, str]] = None
    ) -> ChatStream:
        """`Cloudx.chat`: read it with `async for`."""
        return await _in_thread(self.sync.chat, project, message, conversation=conversation)

    async def close(self) -> None:
        await _in_thread(self.sync.close)

    async def __aenter__(self) -> AsyncCloudx:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<cloudx.AsyncCloudx of {self.sync!r}>"


class AsyncProjects:
    def __init__(self, cx: Cloudx) -> None:
        self._sync = cx.projects

    async def create(self, name: str, **options: Any) -> Project:
        return await _in_thread(self._sync.create, name, **options)

    async def list(self, **options: Any) -> list[Project]:
        return await _in_thread(self._sync.list, **options)

    async def get(self, project: ProjectRef) -> Project:
        return await _in_thread(self._sync.get, project)

    async def share(self, project: ProjectRef, user: str, role: str = "viewer") -> Member:
        return await _in_thread(self._sync.share, project, user, role)  # type: ignore[arg-type]

    async def unshare(self, project: ProjectRef, user: str) -> None:
        await _in_thread(self._sync.unshare, project, user)

    async def members(self, project: ProjectRef) -> list[Member]:
        return await _in_thread(self._sync.members, project)

    async def delete(self, project: ProjectRef) -> None:
        await _in_thread(self._sync.delete, project)

    async def restore(self, project: Union[Project, str]) -> Project:
        return await _in_thread(self._sync.restore, project)


class AsyncFiles:
    def __init__(self, cx: Cloudx) -> None:
        self._sync = cx.files

    async def read(self, project: ProjectRef, path: str, **options: Any) -> bytes:
        return await _in_thread(self._sync.read, project, path, **options)

    async def read_text(self, project: ProjectRef, path: str, **options: Any) -> str:
        return await _in_thread(self._sync.read_text, project, path, **options)

    async def write(
        self, project: ProjectRef, path: str, data: Union[bytes, bytearray, memoryview, str], **options: Any
    ) -> FileVersion:
        return await _in_thread(self._sync.write, project, path, data, **options)

    async def write_text(self, project: ProjectRef, path: str, text: str, **options: Any) -> FileVersion:
        return await _in_thread(self._sync.write_text, project, path, text, **options)

    async def list(self, project: ProjectRef, prefix: str = "", **options: Any) -> list[FileEntry]:
        return await _in_thread(self._sync.list, project, prefix, **options)

    async def history(self, project: ProjectRef, path: str, **options: Any) -> list[FileVersion]:
        return await _in_thread(self._sync.history, project, path, **options)

    async def restore(self, project: ProjectRef, path: str, version: Optional[int] = None) -> FileVersion:
        return await _in_thread(self._sync.restore, project, path, version)

    async def delete(self, project: ProjectRef, path: str, **options: Any) -> int:
        return await _in_thread(self._sync.delete, project, path, **options)

    async def push(self, folder: Union[str, os.PathLike[str]], project: ProjectRef, **options: Any) -> SyncReport:
        return await _in_thread(self._sync.push, folder, project, **options)

    async def pull(self, project: ProjectRef, folder: Union[str, os.PathLike[str]], **options: Any) -> SyncReport:
        return await _in_thread(self._sync.pull, project, folder, **options)


class AsyncJobs:
    def __init__(self, cx: Cloudx) -> None:
        self._sync = cx.jobs

    async def submit(self, kind: str, payload: Optional[Mapping[str, Any]] = None, **options: Any) -> Job:
        return await _in_thread(self._sync.submit, kind, payload, **options)

    async def get(self, job: Union[Job, str]) -> Job:
        return await _in_thread(self._sync.get, job)

    async def list(self, **options: Any) -> list[Job]:
        return await _in_thread(self._sync.list, **options)

    async def wait(self, job: Union[Job, str], *, timeout: Optional[Duration] = None) -> Job:
        # In slices of a second, so that a cancelled task leaves no thread waiting behind it.
        loop = asyncio.get_running_loop()
        limit = _seconds(timeout, "timeout")
        deadline = None if limit is None else loop.time() + limit
        while True:
            left = 1.0 if deadline is None else max(0.0, min(1.0, deadline - loop.time()))
            try:
                return await _in_thread(self._sync.wait, job, timeout=left)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    raise TimeoutError(f"job {getattr(job, 'id', job)} had not finished after {limit} s") from None

    async def cancel(self, job: Union[Job, str]) -> Job:
        return await _in_thread(self._sync.cancel, job)

    async def retry(self, job: Union[Job, str]) -> Job:
        return await _in_thread(self._sync.retry, job)
