"""The agent: events as an iterator and an async iterator, follow-ups, cancel, Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudx


def test_chat_streams_the_agents_events(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    stream = cx.chat(project, "write some notes")
    events = list(stream)
    kinds = [e.kind for e in events]
    assert "tool_call" in kinds and "tool_result" in kinds and "file_changed" in kinds, kinds
    assert any(e.kind == "delta" and e.text for e in events)
    assert events[-1].kind == "status" and events[-1].data["status"] == "succeeded"
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    task = stream.task
    assert task.status == "succeeded" and task.answer and task.steps == 2
    assert cx.files.read_text(project, "notes.md") == "written by the agent\n"
    # A follow-up in the same conversation.
    again = cx.chat(project, "and again", conversation=stream.conversation)
    assert again.wait().status == "succeeded"
    assert again.conversation.id == stream.conversation.id
    third = cx.chat(project, "third", conversation=stream.conversation)
    assert all(e.task == third.task.id for e in third)


def test_chat_as_an_async_iterator(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    async def main() -> list[cloudx.Event]:
        stream = await cx.aio.chat(project, "notes please")
        return [e async for e in stream]

    events = asyncio.run(main())
    assert events[-1].data["status"] == "succeeded"
    assert "".join(e.text for e in events if e.kind == "delta")


def test_cancel_ends_the_task(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    stream = cx.chat(project, "write some notes")
    cancelled = stream.cancel()
    assert cancelled.status in ("cancelled", "succeeded")
    assert stream.wait().finished


CHAT_INTERRUPTED = """
import sys, time, cloudx
cx = cloudx.open(sys.argv[1])
cx.users.create("ada@example.com", "correct horse battery staple")
p = cx.projects.create("p", owner="ada@example.com")
stream = cx.chat(p, "slow answer please")
print("task", stream.task.id, flush=True)
try:
    for event in stream:
        print("event", event.kind, flush=True)
except KeyboardInterrupt:
    print("status", stream.task.status, flush=True)
cx.close()
"""


def test_ctrl_c_cancels_a_chat(tmp_path: Path, llm: str) -> None:
    # A model that streams slowly: 200 pieces 50 ms apart.
    from conftest import Process, binary, llm_env

    slow = Process([binary("cloudx-scripted-llm"), "--tokens", "200", "--interval-ms", "50"], {}, "http://")
    try:
        env = dict(llm_env("http://" + slow.url))
        import os

        child = subprocess.Popen(
            [sys.executable, "-c", CHAT_INTERRUPTED, str(tmp_path / "data")],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, **env),
        )
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith("event delta"):
                break
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=30)
        assert "status cancelled" in out, lines + out.splitlines()
    finally:
        slow.stop()


def test_leaving_the_loop_early_cancels_the_task(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # As closing a streamed response: `break` (or an exception in the loop's body) cancels.
    from conftest import Process, binary, llm_env

    slow = Process([binary("cloudx-scripted-llm"), "--tokens", "200", "--interval-ms", "50"], {}, "http://")
    try:
        for name, value in llm_env("http://" + slow.url).items():
            monkeypatch.setenv(name, value)
        with cloudx.open(tmp_path / "data") as cx:
            cx.users.create("ada@example.com", "correct horse battery staple")
            p = cx.projects.create("p", owner="ada@example.com")
            stream = cx.chat(p, "slow answer please")
            for event in stream:
                if event.kind == "delta":
                    break
            assert stream.task.status == "cancelled"
            late = cx.chat(p, "slow again", conversation=stream.conversation)
            assert late.task.status in ("queued", "running")
            next(late)  # reading one event without a loop leaves the task alone
            assert late.cancel().status == "cancelled"
    finally:
        slow.stop()
