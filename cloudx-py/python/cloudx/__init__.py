"""cloudx from Python: projects with versioned files, sandboxed runs, a durable job queue and
a coding agent, in this process (`cloudx.open`) or on a daemon (`cloudx.connect`).

    import cloudx
    with cloudx.open("./cloudx-data") as cx:
        p = cx.projects.create("demo")
        cx.files.write(p, "hello.py", "print('hello')")
        print(cx.run(["python3", "hello.py"], project=p).stdout)
"""

from ._aio import AsyncCloudx
from ._api import (
    ChatStream,
    Cloudx,
    FileReader,
    Files,
    FileWriter,
    Jobs,
    Projects,
    RunStream,
    Users,
    connect,
    open,
)
from ._cloudx import __version__
from ._errors import (
    Conflict,
    Error,
    Internal,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    PreconditionFailed,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from ._types import (
    Chunk,
    Conversation,
    Event,
    FileEntry,
    FileVersion,
    Isolation,
    Job,
    JobEvent,
    Member,
    Project,
    RunResult,
    SyncedFile,
    SyncReport,
    Task,
)

__all__ = [
    "AsyncCloudx",
    "ChatStream",
    "Chunk",
    "Cloudx",
    "Conflict",
    "Conversation",
    "Error",
    "Event",
    "FileEntry",
    "FileReader",
    "FileVersion",
    "FileWriter",
    "Files",
    "Internal",
    "InvalidInput",
    "Isolation",
    "Job",
    "JobEvent",
    "Jobs",
    "Member",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PreconditionFailed",
    "Project",
    "Projects",
    "QuotaExceeded",
    "RateLimited",
    "RunResult",
    "RunStream",
    "SyncReport",
    "SyncedFile",
    "Task",
    "Unauthenticated",
    "Unavailable",
    "Users",
    "__version__",
    "connect",
    "open",
]
