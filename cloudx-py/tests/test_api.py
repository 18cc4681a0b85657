"""Projects, files and jobs: the same calls embedded and against a daemon."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from pathlib import Path

import pytest

import cloudx


def test_projects_files_and_history(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    assert cx.projects.get(project.slug).id == project.id
    assert project.id in [p.id for p in cx.projects.list()]
    v1 = cx.files.write(project, "src/app.py", "print('one')\n", message="first")
    v2 = cx.files.write(project.slug, "src/app.py", b"print('two')\n")
    assert (v1.version, v2.version) == (1, 2)
    assert v1.message == "first" and v2.size == len(b"print('two')\n")
    assert cx.files.read_text(project, "src/app.py") == "print('two')\n"
    assert cx.files.read(project, "src/app.py", version=1) == b"print('one')\n"
    assert [e.path for e in cx.files.list(project)] == ["src/app.py"]
    assert [v.version for v in cx.files.history(project, "src/app.py")] == [2, 1]
    restored = cx.files.restore(project, "src/app.py", 1)
    assert restored.version == 3 and cx.files.read_text(project, "src/app.py") == "print('one')\n"
    assert cx.files.delete(project, "src/app.py") == 4
    with pytest.raises(cloudx.NotFound) as e:
        cx.files.read(project, "src/app.py")
    assert e.value.code == "not_found" and "src/app.py" in e.value.message
    assert "Project" in repr(project) and project.slug in repr(project)


def test_errors_are_one_class_per_kind(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    with pytest.raises(cloudx.InvalidInput, match="path"):
        cx.files.write(project, "../escape", b"x")
    cx.files.write(project, "a.txt", b"1")
    with pytest.raises(cloudx.PreconditionFailed) as e:
        cx.files.write(project, "a.txt", b"2", expected_version=0)
    assert isinstance(e.value, cloudx.Error) and e.value.code == "precondition_failed"
    assert cx.files.read(project, "a.txt") == b"1"  # nothing written
    with pytest.raises(cloudx.NotFound):
        cx.projects.get("no-such-project")
    with pytest.raises(cloudx.Conflict):
        cx.projects.create("again", slug=project.slug)
    with pytest.raises(cloudx.InvalidInput, match="argv"):
        cx.run("ls -l", project=project)  # type: ignore[arg-type]


def test_large_files_stream_as_file_objects(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    block = os.urandom(1 << 20)
    with cx.files.open(project, "big.bin", "wb") as w:
        for _ in range(6):
            w.write(block)
    assert w.result is not None and w.result.size == 6 << 20
    with cx.files.open(project, "big.bin") as r:
        assert isinstance(r, io.RawIOBase) and r.size == 6 << 20
        head = r.read(10)
        buffer = bytearray(1000)
        assert r.readinto(buffer) == 1000
        rest = b"".join(r)
    assert head + bytes(buffer) + rest == block * 6
    # A `with` block that raises writes nothing.
    with pytest.raises(RuntimeError):
        with cx.files.open(project, "half.bin", "wb") as w:
            w.write(b"partial")
            raise RuntimeError("stop")
    assert "half.bin" not in [e.path for e in cx.files.list(project)]
    # Text through the standard wrappers.
    with cx.files.open(project, "big.bin") as raw:
        assert io.BufferedReader(raw).read(3) == block[:3]


def test_sharing_gives_exactly_the_role(embedded: cloudx.Cloudx) -> None:
    embedded.users.create("bob@example.com", "another long passphrase")
    p = embedded.projects.create("shared", owner="ada@example.com")
    embedded.files.write(p, "README.md", "# shared\n")
    member = embedded.projects.share(p, "bob@example.com", "viewer")
    assert member.role == "viewer" and member.email == "bob@example.com"
    bob = embedded.as_user("bob@example.com")
    assert bob.files.read_text(p, "README.md") == "# shared\n"
    with pytest.raises(cloudx.PermissionDenied):
        bob.files.write(p, "README.md", "mine now")
    embedded.projects.unshare(p, "bob@example.com")
    with pytest.raises(cloudx.NotFound):
        bob.files.read(p.id, "README.md")
    bob.close()
    # The system principal names an owner: it has no account of its own.
    with pytest.raises(cloudx.InvalidInput, match="owner"):
        embedded.projects.create("orphan")


def test_push_and_pull_a_folder(cx: cloudx.Cloudx, project: cloudx.Project, tmp_path: Path) -> None:
    here = tmp_path / "here"
    (here / "src").mkdir(parents=True)
    (here / "src" / "main.py").write_text("print(1)\n")
    (here / "README.md").write_text("readme\n")
    dry = cx.files.push(here, project, dry_run=True)
    assert dry.dry_run and sorted(f.path for f in dry.transferred) == ["README.md", "src/main.py"]
    assert cx.files.list(project) == []
    sent = cx.files.push(here, project)
    assert sorted(f.path for f in sent.transferred) == ["README.md", "src/main.py"] and not sent.conflicts
    cx.files.write(project, "src/main.py", "print(2)\n")
    there = tmp_path / "there"
    fetched = cx.files.pull(project, there)
    assert sorted(f.path for f in fetched.transferred) == ["README.md", "src/main.py"]
    assert (there / "src" / "main.py").read_text() == "print(2)\n"
    # Changed on both sides: a conflict, left alone.
    (here / "src" / "main.py").write_text("print(3)\n")
    conflicted = cx.files.push(here, project)
    assert conflicted.conflicts and "src/main.py" in conflicted.conflicts[0]
    assert cx.files.read_text(project, "src/main.py") == "print(2)\n"


def test_jobs_submit_wait_and_events(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    job = cx.jobs.submit("sandbox_exec", {"argv": ["sh", "-c", "echo out; echo err >&2"]}, project=project)
    assert job.status in ("queued", "running") and job.kind == "sandbox_exec"
    done = cx.jobs.wait(job, timeout=60)
    assert done.status == "succeeded", done.last_error
    assert done.result["outcome"]["exit_code"] == 0
    assert done.result["outcome"]["stderr"] == "err\n"
    kinds = {(e.kind, e.data) for e in cx.jobs.events(done)}
    assert ("stdout", "out\n") in kinds
    followed = list(cx.jobs.events(done, follow=True))
    assert [e.seq for e in followed] == sorted(e.seq for e in followed)
    assert done.id in [j.id for j in cx.jobs.list(project=project)]
    # Idempotency: the same key answers the same job.
    a = cx.jobs.submit("sandbox_exec", {"argv": ["true"]}, project=project, idempotency_key="once")
    b = cx.jobs.submit("sandbox_exec", {"argv": ["true"]}, project=project, idempotency_key="once")
    assert a.id == b.id
    with pytest.raises(TimeoutError):
        slow = cx.jobs.submit("sandbox_exec", {"argv": ["sleep", "20"]}, project=project)
        cx.jobs.wait(slow, timeout=0.3)
    cancelled = cx.jobs.cancel(slow)
    assert cancelled.cancel_requested or cancelled.status == "cancelled"


def test_threads_share_one_instance(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                cx.files.write(project, f"t{n}/{i}.txt", f"{n}-{i}")
                assert cx.files.read_text(project, f"t{n}/{i}.txt") == f"{n}-{i}"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(cx.files.list(project)) == 30
    assert cx.projects.get(project).version == 30
    # Runs from several threads at once, and one stream read by two threads.
    outputs: list[str] = []
    runners = [
        threading.Thread(target=lambda n=n: outputs.append(cx.run(["echo", str(n)], project=project).stdout))
        for n in range(4)
    ]
    stream = cx.run_stream(["sh", "-c", "for i in 1 2 3 4 5 6; do echo $i; done"], project=project)
    texts: list[str] = []
    readers = [threading.Thread(target=lambda: texts.extend(c.text for c in stream)) for _ in range(2)]
    for t in runners + readers:
        t.start()
    for t in runners + readers:
        t.join(60)
    assert sorted(outputs) == [f"{n}\n" for n in range(4)]
    assert sorted("".join(texts).split()) == ["1", "2", "3", "4", "5", "6"]
    assert stream.result is not None and stream.result.ok


def test_async_variants(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    async def main() -> None:
        aio = cx.aio
        v = await aio.files.write(project, "async.txt", "hello")
        text, listing = await asyncio.gather(aio.files.read_text(project, "async.txt"), aio.files.list(project))
        assert v.version == 1 and text == "hello" and [e.path for e in listing] == ["async.txt"]
        job = await aio.jobs.submit("sandbox_exec", {"argv": ["true"]}, project=project)
        assert (await aio.jobs.wait(job, timeout=60)).status == "succeeded"

    asyncio.run(main())


def test_closed_instances_say_so(tmp_path: Path) -> None:
    cx = cloudx.open(tmp_path / "data", worker=False)
    assert cx.mode == "embedded" and "embedded" in repr(cx)
    cx.users.create("eve@example.com", "a long enough passphrase")
    eve = cx.as_user("eve@example.com")
    cx.close()
    with pytest.raises(cloudx.InvalidInput, match="closed"):
        cx.projects.list()
    with pytest.raises(cloudx.InvalidInput, match="instance it acts for was closed"):
        eve.projects.list()
    with pytest.raises(cloudx.NotFound, match="nobody@example.com"):
        cloudx.open(tmp_path / "data", user="nobody@example.com")
    with pytest.raises(cloudx.InvalidInput, match="api_key"):
        cloudx.connect("http://127.0.0.1:9", api_key="")


def test_a_daemon_refuses_a_bad_key(daemon) -> None:  # type: ignore[no-untyped-def]
    cx = cloudx.connect(daemon.url, api_key="cxk_not_a_real_key")
    with pytest.raises(cloudx.Unauthenticated):
        cx.projects.list()
    cx.close()
    gone = cloudx.connect("http://127.0.0.1:9", api_key="cxk_x")
    with pytest.raises(cloudx.Unavailable):
        gone.projects.list()


def test_configuration_is_read_as_the_daemon_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The client's key may sit in the environment of a notebook that also opens an instance.
    monkeypatch.setenv("CLOUDX_API_KEY", "cxk_for_connect")
    cloudx.open(tmp_path / "a", worker=False).close()
    monkeypatch.setenv("CLOUDX_SANDBOX__ENABLD", "true")
    with pytest.raises(cloudx.InvalidInput, match="CLOUDX_SANDBOX__ENABLD"):
        cloudx.open(tmp_path / "b", worker=False)
    monkeypatch.delenv("CLOUDX_SANDBOX__ENABLD")
    (tmp_path / "cloudx.toml").write_text("[http]\nbindd = 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cloudx.InvalidInput, match="bindd"):
        cloudx.open(tmp_path / "c", worker=False)


def test_errors_pickle_and_an_unclosed_writer_writes_nothing(cx: cloudx.Cloudx, project: cloudx.Project) -> None:
    import gc
    import pickle

    e = pickle.loads(pickle.dumps(cloudx.RateLimited("rate_limited", "slow down", 2.0)))
    assert (type(e), e.code, e.message, e.retry_after) == (cloudx.RateLimited, "rate_limited", "slow down", 2.0)
    w = cx.files.open(project, "dropped.bin", "wb")
    w.write(b"half")
    del w
    gc.collect()
    with pytest.raises(cloudx.NotFound):
        cx.files.read(project, "dropped.bin")
