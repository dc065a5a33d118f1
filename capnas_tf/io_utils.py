"""Writing files so that a crash never leaves a half-written artifact: write a temp file (or directory)
in the same directory, then `os.replace` it over the target (atomic on POSIX).

`tempfile.mkstemp` / `mkdtemp` create their results private (0600 / 0700) whatever the umask; the
temp file or directory is given the permissions a plain `open` / `os.mkdir` would have given it
(0666 / 0777 less the umask) before it takes the target's name, so that the artifacts (exports, vocab,
genotype) are readable by a model server running as another user exactly when the user's umask says so.

Temp names carry the writer's pid (`.tmp-…pid<N>-…`, `.old-pid<N>-…`): `remove_stale_temps` deletes those
a killed process left behind, and never those of a live writer.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux's /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (briefly) and put it back
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permissions of a file created by `open(path, "w")`: 0666 less the umask."""
    return 0o666 & ~current_umask()


def default_dir_mode() -> int:
    """The permissions of a directory created by `os.mkdir(path)`: 0777 less the umask."""
    return 0o777 & ~current_umask()


def _tagged(prefix: str) -> str:
    """`prefix` + this process's pid tag: `.tmp-` → `.tmp-pid1234-`."""
    return f"{prefix}pid{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_TEMP_NAME = re.compile(r"^\.(tmp|old)-")
_TEMP_PID = re.compile(r"pid(\d+)-")


def remove_stale_temps(directory: str) -> list[str]:
    """Deletes the temp files and directories (`.tmp-*`, `.old-*`) in `directory` that a killed write left:
    those whose pid tag names no live process, and untagged ones (written before temps were tagged).
    Returns the paths removed."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if not _TEMP_NAME.match(name):
            continue
        tag = _TEMP_PID.search(name)
        if tag and pid_alive(int(tag.group(1))):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(path)
    return removed


def make_temp_dir(parent: str, prefix: str = ".tmp-") -> str:
    """`tempfile.mkdtemp(prefix=prefix, dir=parent)` with the permissions of `os.mkdir`, not 0700; the name
    carries this process's pid (`remove_stale_temps`)."""
    path = tempfile.mkdtemp(prefix=_tagged(prefix), dir=parent)
    os.chmod(path, default_dir_mode())
    return path


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tagged(".tmp-"), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), default_file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def replace_dir(src: str, target: str) -> None:
    """Moves directory `src` to `target`; an older `target` is moved aside first and then deleted."""
    old = None
    if os.path.exists(target):
        old = tempfile.mkdtemp(prefix=_tagged(".old-"), dir=os.path.dirname(os.path.abspath(target)))
        os.replace(target, os.path.join(old, "previous"))
    os.replace(src, target)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str, prefix: str = ".tmp-"):
    """Yields an empty temp directory beside `path` to fill; when the block ends without an error it
    replaces `path` (with `os.mkdir`'s permissions), otherwise it is deleted and `path` is untouched.

        with atomic_directory("export/saved_model/1") as tmp:
            tf.saved_model.save(model, tmp)
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = make_temp_dir(parent, prefix)
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str):
    """Yields a temp file name beside `path` (same suffix, so writers that check it accept it) to write;
    when the block ends without an error it replaces `path` (with `open`'s permissions), otherwise it is
    deleted and `path` is untouched.

        with atomic_file("retrain/captioner.keras") as tmp:
            model.save(tmp)
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=_tagged(".tmp-"), suffix=suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_keras_atomically(model, path: str) -> None:
    """`model.save(path)` (a `.keras` file) through a temp file beside it and `os.replace`."""
    with atomic_file(path) as tmp:
        model.save(tmp, overwrite=True)
