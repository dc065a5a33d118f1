"""One run per workdir: `<workdir>/.lock`, created atomically (O_CREAT | O_EXCL) with the holder's pid and
host, removed when the run ends.

    with workdir_lock(workdir):
        ...  # search, retrain: the checkpoints, genotype.json and exports are this process's alone

A second run on the same workdir is refused (`WorkdirLockedError`, naming the holder and the lock file).
A lock whose holder is gone (its pid runs no more on this host, or now runs another program: pid reuse) is
stale and taken over with a warning. A lock of another host cannot be checked from here: it is refused,
and the message says to delete the file if that run is over.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from absl import logging

from capnas_tf.io_utils import pid_alive

LOCK_FILE = ".lock"
_PARTIAL_WRITE_GRACE_S = 5.0  # a lock file this young and still empty is being written by its holder


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir's lock."""


def _process_start(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, Linux's /proc/<pid>/stat field 22), or None elsewhere;
    tells a live holder from a new process that reused its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_record() -> dict:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": _process_start(pid), "time": time.time()}


def _read(path: str) -> tuple[dict | None, str]:
    """(the holder's record or None if unreadable, the raw text); raises FileNotFoundError if gone."""
    with open(path) as f:
        text = f.read()
    try:
        record = json.loads(text)
        return (record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None), text
    except ValueError:
        return None, text


def _describe(record: dict | None, path: str) -> str:
    if record is None:
        return f"an unreadable lock file {path}"
    return f"pid {record['pid']} on host {record.get('host', '?')} (lock file {path})"


def _is_stale(record: dict | None, path: str) -> bool:
    """Whether the holder of `record` is certainly gone: it ran on this host, and its pid runs no more
    (or runs a process started at another time). An empty or unreadable file is stale once it is older
    than a holder needs to write it."""
    if record is None:
        try:
            return time.time() - os.path.getmtime(path) > _PARTIAL_WRITE_GRACE_S
        except FileNotFoundError:
            return False
    if record.get("host") != socket.gethostname():
        return False
    pid = record["pid"]
    if not pid_alive(pid):
        return True
    started = record.get("started")
    now = _process_start(pid)
    return started is not None and now is not None and now != started


def acquire(workdir: str, *, warn=logging.warning) -> str:
    """Takes `<workdir>/.lock` for this process and returns its path.

    Raises:
      WorkdirLockedError: a live run (or one on another host) holds it; the message names its pid, host and
        the lock file.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    mine = _holder_record()
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
                f.flush()
                os.fsync(f.fileno())
            return path
        try:
            record, text = _read(path)
        except FileNotFoundError:
            continue  # released meanwhile: try again
        if not _is_stale(record, path):
            if record is None:  # being written this very moment: look again
                time.sleep(0.25)
                continue
            same_host = record.get("host") == socket.gethostname()
            raise WorkdirLockedError(
                f"Workdir {workdir} is in use by another run: {_describe(record, path)}. Two runs on one workdir "
                "would overwrite each other's checkpoints; wait for it to finish or use another --workdir."
                + ("" if same_host else f" If that run is over, delete {path}."))
        # Stale: move it aside under a name of our own (only one taker succeeds), and check that what was
        # moved is the lock judged stale, not a fresh one another taker wrote in between.
        aside = f"{path}.stale-{os.getpid()}"
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            continue
        with open(aside) as f:
            moved = f.read()
        if moved != text:  # a fresh lock: put it back unless yet another one appeared, then look again
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
            os.remove(aside)
            continue
        os.remove(aside)
        warn(f"Taking over the stale lock of {_describe(record, path)}: that run ended without releasing it.")
    raise WorkdirLockedError(f"Could not take the lock {path} of workdir {workdir}: it keeps changing hands.")


def release(path: str) -> None:
    """Removes the lock at `path` if this process holds it."""
    try:
        record, _ = _read(path)
    except FileNotFoundError:
        return
    if record is not None and record["pid"] == os.getpid() and record.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def workdir_lock(workdir: str, *, warn=logging.warning):
    """Holds `<workdir>/.lock` for the block (`acquire`, then `release` however the block ends)."""
    path = acquire(workdir, warn=warn)
    try:
        yield path
    finally:
        release(path)
