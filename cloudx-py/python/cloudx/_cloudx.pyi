"""The native module (pyo3): the core in-process or a client of a daemon. The classes users see
are in `cloudx` (`cloudx._api`); they call this. Every blocking call releases the GIL, and a
pending KeyboardInterrupt stops it within a tenth of a second (dropping what it was doing)."""

from typing import Any, Optional

__version__: str

def open_embedded(data_dir: Optional[str], user: Optional[str] = None, config: Optional[str] = None, worker: bool = True) -> Session:
    """The core in this process on `data_dir`, as the local system principal or the account `user` (an e-mail)."""

def connect_remote(url: str, api_key: str) -> Session:
    """A client of the daemon at `url`, with an API key."""

class Session:
    """One instance of cloudx, shared by any number of threads."""

    @property
    def mode(self) -> str:
        """`embedded` or `remote`."""
    @property
    def location(self) -> str:
        """The data folder, or the daemon's URL."""
    @property
    def actor(self) -> str:
        """Who acts."""
    @property
    def closed(self) -> bool: ...
    def call(self, op: str, args: Optional[dict[str, Any]] = None) -> Any:
        """One call by name (`list_projects`, `create_project`, `tree`, `submit_job`, ...); the
        answer is the core's JSON form as plain Python values."""
    def read_all(self, project: str, path: str, version: Optional[int] = None) -> tuple[bytes, int]:
        """A file's whole content and its version."""
    def write_all(
        self,
        project: str,
        path: str,
        data: bytes,
        expected_version: Optional[int] = None,
        message: Optional[str] = None,
    ) -> dict[str, Any]:
        """Writes `data` as a new version (without copying it); the FileVersion's JSON form."""
    def open_reader(self, project: str, path: str, version: Optional[int] = None) -> Reader: ...
    def open_writer(
        self, project: str, path: str, expected_version: Optional[int] = None, message: Optional[str] = None
    ) -> Writer: ...
    def exec(self, project: Optional[str], request: dict[str, Any]) -> dict[str, Any]:
        """Runs a command in the sandbox; the ProjectRun's JSON form."""
    def exec_stream(self, project: Optional[str], request: dict[str, Any]) -> RunHandle: ...
    def as_user(self, email: str) -> Session:
        """The same embedded core acting as the account `email`."""
    def close(self) -> None: ...

class Reader:
    """A file read as it streams in."""

    path: str
    version: int
    size: Optional[int]
    def read(self, size: int = -1) -> bytes: ...
    def read_chunk(self, size: Optional[int] = None) -> bytes: ...
    def close(self) -> None: ...

class Writer:
    """A new version of a file, uploaded as it is written."""

    path: str
    def write(self, data: bytes) -> int: ...
    def finish(self) -> Optional[dict[str, Any]]: ...
    def abort(self) -> None: ...

class RunHandle:
    """A run in progress."""

    def next_chunk(self) -> Optional[tuple[str, bytes]]: ...
    def result(self) -> dict[str, Any]: ...
    def cancel(self) -> None: ...
