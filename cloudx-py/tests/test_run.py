"""Sandboxed runs: results, streaming, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import cloudx


def test_run_gives_a_result_with_the_isolation_record(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    cx.files.write(project, "main.py", "import sys\nprint('hi'); print('oops', file=sys.stderr); sys.exit(3)\n")
    r = cx.run(["python3", "main.py"], project=project)
    assert (r.exit_code, r.ok, r.stdout, r.stderr) == (3, False, "hi\n", "oops\n")
    assert r.wall_time.total_seconds() > 0 and r.version == 1
    assert "user" in r.isolation.namespaces and r.isolation.network == "none"
    assert "exit 3" in repr(r)
    limited = cx.run(["sleep", "5"], project=project, timeout=0.5)
    assert limited.timed_out and limited.limit == "wall_time"
    # Refused before it is sent anywhere, in both modes, by the error's own class.
    with pytest.raises(cloudx.InvalidInput, match="argv: give a program"):
        cx.run([], project=project)


def test_a_run_commits_what_it_changed(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    cx.files.write(project, "in.txt", "data\n")
    r = cx.run(["sh", "-c", "tr a-z A-Z < in.txt > out.txt"], project=project, commit=True, message="upper")
    assert r.ok and r.written == ["out.txt"] and r.committed_version == 2
    assert cx.files.read_text(project, "out.txt") == "DATA\n"
    assert cx.files.history(project, "out.txt")[0].message == "upper"


def test_run_stream_yields_output_as_it_comes(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    stream = cx.run_stream(["sh", "-c", "echo one; sleep 0.3; echo two >&2; echo three"], project=project)
    chunks = list(stream)
    assert b"".join(c.data for c in chunks if c.stream == "stdout") == b"one\nthree\n"
    assert [c.text for c in chunks if c.stream == "stderr"] == ["two\n"]
    assert stream.result is not None and stream.result.ok

    async def main() -> list[str]:
        s = cx.run_stream(["sh", "-c", "echo a; echo b"], project=project)
        return [c.text async for c in s]

    assert "".join(asyncio.run(main())) == "a\nb\n"


def test_embedded_runs_without_a_project(embedded: cloudx.Cloudx) -> None:
    r = embedded.run(["sh", "-c", "echo $GREETING; pwd; ls -A | wc -l"], env={"GREETING": "hello"}, stdin="x")
    lines = r.stdout.split()
    assert r.ok and lines[0] == "hello" and lines[-1] == "0"
    assert embedded.run(["cat"], stdin="piped").stdout == "piped"


def test_a_daemon_needs_a_project(daemon) -> None:  # type: ignore[no-untyped-def]
    with cloudx.connect(daemon.url, api_key=daemon.admin_key) as cx:
        with pytest.raises(cloudx.InvalidInput, match="project"):
            cx.run(["true"])


def test_cancel_kills_a_streaming_run(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    stream = cx.run_stream(["sh", "-c", "echo started; sleep 60"], project=project)
    first = next(stream)
    assert first.text == "started\n"
    began = time.monotonic()
    stream.cancel()
    with pytest.raises(cloudx.Error):
        list(stream)
        if stream.result is not None:
            raise AssertionError("a cancelled run has no result")
    assert time.monotonic() - began < 15



def test_cancelling_an_awaited_run_kills_it(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cx.aio.run(["sh", "-c", "echo x > mark.txt; sleep 60"], project=project, commit=True), 2)

    began = time.monotonic()
    asyncio.run(main())  # returns once the reading thread has ended, so only if the run was killed
    assert time.monotonic() - began < 20
    with pytest.raises(cloudx.NotFound):
        cx.files.read(project, "mark.txt")  # a killed run commits nothing


INTERRUPTED = """
import os, sys, time, cloudx
cx = cloudx.open(sys.argv[1], worker=False)
print("ready", flush=True)
began = time.monotonic()
try:
    cx.run(["sh", "-c", "echo $$ > /dev/null; exec sleep 41.5"])
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - began:.2f}", flush=True)
cx.close()
"""


def test_ctrl_c_interrupts_a_run_and_kills_its_sandbox(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 20
    while not sandboxed_sleep() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandboxed_sleep(), "the sandboxed command never started"
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=30)
    assert out.startswith("interrupted after"), out
    assert float(out.split()[-1]) < 40
    # The sandbox went with it.
    deadline = time.monotonic() + 10
    while sandboxed_sleep() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sandboxed_sleep()


def sandboxed_sleep(seconds: bytes = b"41.5") -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read() == b"sleep\x00" + seconds + b"\x00":
                        return True
            except OSError:
                pass
    return False


REMOTE_INTERRUPTED = """
import os, sys, time, cloudx
cx = cloudx.connect(sys.argv[1], api_key=sys.argv[2])
print("ready", flush=True)
try:
    cx.run(["sh", "-c", "exec sleep 41.7"], project=sys.argv[3])
except KeyboardInterrupt:
    print("interrupted", flush=True)
    os._exit(0)  # at once: nothing runs after the interrupted call
"""


def test_ctrl_c_cancels_a_daemons_run(daemon) -> None:  # type: ignore[no-untyped-def]
    # The program ends right after Ctrl-C: the job's cancel must have left before it did.
    with cloudx.connect(daemon.url, api_key=daemon.admin_key) as cx:
        p = cx.projects.create("interrupted remotely")
        child = subprocess.Popen(
            [sys.executable, "-c", REMOTE_INTERRUPTED, daemon.url, daemon.admin_key, p.id],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        while not sandboxed_sleep(b"41.7") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sandboxed_sleep(b"41.7"), "the daemon's sandboxed command never started"
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=30)
        assert out.strip() == "interrupted", out
        [job] = cx.jobs.list(project=p)
        assert cx.jobs.wait(job, timeout=30).status == "cancelled"
        deadline = time.monotonic() + 20
        while sandboxed_sleep(b"41.7") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not sandboxed_sleep(b"41.7")
