"""One run per workdir: `<workdir>/.lock` (pid and host of the holder), refused to a second process, taken
over from a holder that is gone, released at the end of the run."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from capnas_tf import jobs, locking
from capnas_tf.config import RunConfig
from capnas_tf.locking import WorkdirLockedError, acquire, release, workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}

HOLDER = textwrap.dedent("""
    import sys
    from capnas_tf.locking import workdir_lock
    with workdir_lock(sys.argv[1]) as path:
        print(path, flush=True)
        sys.stdin.read()  # holds the lock until the test closes stdin
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of `tmp_path / "run"`; yields (process, lock path)."""
    workdir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        path = process.stdout.readline().strip()
        assert path == str(workdir / ".lock"), process.communicate(timeout=60)
        yield process, path
    finally:
        if process.poll() is None:
            process.stdin.close()
            process.wait(timeout=60)


def test_a_second_run_on_a_locked_workdir_is_refused_naming_the_holder_until_it_ends(holder):
    process, path = holder
    workdir = os.path.dirname(path)
    with open(path) as f:
        assert json.load(f)["pid"] == process.pid
    expected = rf"in use by another run: pid {process.pid} on host {socket.gethostname()} \(lock file {path}\)"
    with pytest.raises(WorkdirLockedError, match=expected):
        acquire(workdir)
    # jobs.run refuses before anything is read or written (data=None would fail at once otherwise)
    with pytest.raises(WorkdirLockedError, match=expected):
        jobs.run("search", run=RunConfig(workdir=workdir), data=None, search=None)
    assert sorted(os.listdir(workdir)) == [".lock"]

    process.stdin.close()
    assert process.wait(timeout=60) == 0
    assert not os.path.exists(path)  # released when the holder's run ended
    with workdir_lock(workdir) as mine:
        with open(mine) as f:
            assert json.load(f)["pid"] == os.getpid()
    assert not os.path.exists(path)


def test_the_cli_refuses_a_locked_workdir_with_exit_status_1(holder):
    process, path = holder
    done = subprocess.run([sys.executable, "-m", "capnas_tf.train", "--mode=search",
                           f"--workdir={os.path.dirname(path)}"], capture_output=True, text=True, env=ENV, cwd=REPO,
                          timeout=300)
    assert done.returncode == 1, done.stderr
    assert f"pid {process.pid} on host" in done.stderr and path in done.stderr
    assert "Traceback" not in done.stderr


def test_a_stale_lock_of_a_dead_process_on_this_host_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / ".lock"
    path.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": None}))
    warnings = []
    taken = acquire(str(tmp_path), warn=warnings.append)
    assert taken == str(path) and json.loads(path.read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"stale lock of pid {dead.pid} on host" in warnings[0]
    release(taken)
    assert sorted(os.listdir(tmp_path)) == []

    # an empty lock file (a holder killed between creating and writing it), once old enough
    path.write_text("")
    os.utime(path, (0, 0))
    with workdir_lock(str(tmp_path), warn=warnings.append):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "unreadable lock file" in warnings[-1]


def test_a_lock_of_another_host_is_refused_with_how_to_clear_it(tmp_path):
    path = tmp_path / ".lock"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "started": None}))
    expected = rf"pid 1 on host elsewhere.example .*If that run is over, delete {path}"
    with pytest.raises(WorkdirLockedError, match=expected):
        acquire(str(tmp_path))
    assert json.loads(path.read_text())["host"] == "elsewhere.example"  # untouched


def test_only_the_chief_of_a_multi_worker_job_takes_the_lock(monkeypatch):
    run = RunConfig(workdir="w", distribution="multi_worker")
    cluster = {"worker": ["a:1", "b:1"]}
    for task, holds in (({"type": "worker", "index": 0}, True), ({"type": "worker", "index": 1}, False)):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert jobs.holds_workdir_lock(run) is holds
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"chief": ["c:1"], **cluster},
                                                "task": {"type": "worker", "index": 0}}))
    assert not jobs.holds_workdir_lock(run)
    assert jobs.holds_workdir_lock(RunConfig(workdir="w"))
    assert locking.LOCK_FILE == ".lock"
