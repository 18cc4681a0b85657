"""Fixtures: an embedded instance in a temporary folder, a real daemon (`cloudx serve`) started
on loopback, and the scripted OpenAI-compatible server the agent talks to.

The binaries come from `CLOUDX_TEST_BIN_DIR` (the test command sets it to cargo's target folder),
else from `PATH`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cloudx

PASSWORD = "correct horse battery staple"


def binary(name: str) -> str:
    folder = os.environ.get("CLOUDX_TEST_BIN_DIR")
    path = os.path.join(folder, name) if folder else shutil.which(name)
    if not path or not os.path.exists(path):
        pytest.fail(f"the {name} binary was not found (set CLOUDX_TEST_BIN_DIR to cargo's target folder)")
    return path


class Process:
    """A child process whose first stdout line is its URL; stopped at the end."""

    def __init__(self, argv: list[str], env: dict[str, str], marker: str) -> None:
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if marker in line:
                self.url = line.split(marker, 1)[1].split()[0]
                break
        else:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"{argv[0]} did not start: {err[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def llm() -> Iterator[str]:
    """The scripted model: each answer calls `write_file` once, then streams text."""
    args = json.dumps({"path": "notes.md", "content": "written by the agent\n"})
    p = Process(
        [binary("cloudx-scripted-llm"), "--tokens", "5", "--interval-ms", "20", "--tool", "write_file", "--arguments", args],
        dict(os.environ),
        "http://",
    )
    p.url = "http://" + p.url
    yield p.url
    p.stop()


def llm_env(url: str) -> dict[str, str]:
    return {"CLOUDX_LLM__BASE_URL": url, "CLOUDX_LLM__MODEL": "scripted", "CLOUDX_LLM__API_KEY": "sk-test"}


def http(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


class Daemon:
    def __init__(self, url: str, process: Process) -> None:
        self.url = url
        self.process = process

    def user(self, email: str) -> str:
        """Registers `email` (the first account is the administrator) and answers an API key."""
        http(
            "POST",
            f"{self.url}/api/v1/auth/register",
            {"email": email, "password": PASSWORD, "display_name": email.split("@")[0]},
        )
        login = http("POST", f"{self.url}/api/v1/auth/login", {"email": email, "password": PASSWORD})
        created = http(
            "POST",
            f"{self.url}/api/v1/api-keys",
            {"name": "pytest", "scopes": ["read", "write", "exec"]},
            token=login["access_token"],
        )
        return created["secret"]


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory, llm: str) -> Iterator[Daemon]:
    """`cloudx serve` on a free loopback port, on a data folder of its own, with its worker."""
    data = tmp_path_factory.mktemp("daemon")
    env = dict(os.environ, CLOUDX_AUTH__REGISTRATION="open", **llm_env(llm))
    env.pop("CLOUDX_API_KEY", None)
    p = Process(
        [binary("cloudx"), "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data / "data")],
        env,
        "listening on ",
    )
    d = Daemon(p.url, p)
    d.admin_key = d.user("admin@example.com")
    yield d
    p.stop()


@pytest.fixture
def embedded(tmp_path: Path, llm: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[cloudx.Cloudx]:
    """An embedded instance as the local system principal, with one account, ada (admin)."""
    for key, value in llm_env(llm).items():
        monkeypatch.setenv(key, value)
    cx = cloudx.open(tmp_path / "data")
    cx.users.create("ada@example.com", PASSWORD, role="admin")
    yield cx
    cx.close()


@pytest.fixture(params=["embedded", "remote"])
def cx(request: pytest.FixtureRequest, tmp_path: Path, llm: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[cloudx.Cloudx]:
    """The same API in both modes: embedded as ada, or a daemon's client with ada's key there."""
    if request.param == "embedded":
        for key, value in llm_env(llm).items():
            monkeypatch.setenv(key, value)
        root = cloudx.open(tmp_path / "data")
        root.users.create("ada@example.com", PASSWORD, role="admin")
        root.close()
        instance = cloudx.open(tmp_path / "data", user="ada@example.com")
    else:
        d: Daemon = request.getfixturevalue("daemon")
        instance = cloudx.connect(d.url, api_key=d.admin_key)
    yield instance
    instance.close()


@pytest.fixture
def project(cx: cloudx.Cloudx) -> cloudx.Project:
    return cx.projects.create("test", slug=f"t-{uuid.uuid4().hex[:10]}")
