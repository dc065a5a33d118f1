"""Start-up of the command-line entry points: TensorFlow's start-up chatter kept off the terminal.

`python -m capnas_tf.train` (`.evaluate`, `.caption`, `.genotype`) imports the package before it runs
the module, and the package imports TensorFlow, so `capnas_tf/__init__` calls `quiet_tensorflow_startup`
first, when `entry_point_module()` says a `capnas_tf` module is being started that way. Library use
(`import capnas_tf` in a program or a test) is left alone. Imports nothing heavy.

What it silences, only where the user has not set `TF_CPP_MIN_LOG_LEVEL` themselves:

* TensorFlow's C++ INFO and WARNING lines, by `TF_CPP_MIN_LOG_LEVEL=2`. TensorFlow 2.21 logs through
  Abseil, and the lines its libraries log while they load (oneDNN, `cpu_feature_guard`, `cudart_stub`,
  "All log messages before absl::InitializeLog() …") come out before TensorFlow reads that variable:
  those are dropped from stderr while `import tensorflow` runs (`filtered_stderr`).
* On a machine without an NVIDIA driver (no /proc/driver/nvidia, no `nvidia-smi`), the
  "failed call to cuInit" error of TensorFlow's CUDA probe. Hiding the GPUs does not stop it
  (`CUDA_VISIBLE_DEVICES=""` still calls cuInit, which fails the same way without a driver), and
  `TF_CPP_MIN_LOG_LEVEL=3` would hide every error; so the probe is run once here
  (`tf.config.list_physical_devices`) with that one line dropped. With a driver, a failed cuInit is
  a real error and stays.

Everything else written to stderr meanwhile (errors, Python warnings) passes through unchanged and in
order. The filter is a forked copy of this process reading a pipe: if TensorFlow aborts while loading
(a fatal "F…" line), the filter still gets and prints everything it wrote.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time

PACKAGE = "capnas_tf"

# A line of TensorFlow's C++ logging: Abseil's "I0000 00:00:1714… 1234 port.cc:153] …" or TSL's own
# "2025-09-17 14:44:05.157831: I external/…/cudart_stub.cc:32] …" (Abseil writes the seconds since the epoch
# where the clock time goes while it is not initialised); group 1 or 2 is the severity.
_LOG_LINE = rb"^(?:([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: ([IWEF]) )\S+:\d+\] "
_BELOW_ERROR = re.compile(_LOG_LINE.replace(rb"[IWEF]", rb"[IW]"))
_CUINIT_FAILED = re.compile(_LOG_LINE.replace(rb"[IWEF]", rb"E") + rb"failed call to cuInit")
# An error line that is a notice: on a CPU without AVX-512, oneDNN falls back to Eigen for int64 ops (same
# results), and says so as an error the first time a step runs.
_ONEDNN_INT64 = re.compile(_LOG_LINE.replace(rb"[IWEF]", rb"E") + rb"oneDNN supports DT_INT64 only on platforms")
_START_UP_LINES = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    # The second line of cpu_feature_guard's INFO line.
    re.compile(rb"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.$"),
)


def entry_point_module() -> str | None:
    """The module of `python -m capnas_tf.<module> …` while Python imports the package to find that
    module (`sys.argv[0]` is "-m" then), else None: a program or test importing `capnas_tf`, or the
    package imported by `python -m` of another package."""
    if sys.argv[:1] != ["-m"]:
        return None
    argv = list(getattr(sys, "orig_argv", ()))[1:]
    for i, arg in enumerate(argv):
        if arg == "-m" and i + 1 < len(argv):
            module = argv[i + 1]
        elif arg.startswith("-m") and len(arg) > 2:
            module = arg[2:]
        else:
            continue
        return module if module == PACKAGE or module.startswith(PACKAGE + ".") else None
    return None


def nvidia_driver_present() -> bool:
    """An NVIDIA driver is installed: its /proc entry (Linux) or `nvidia-smi` exists."""
    return os.path.exists("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None


def is_start_up_noise(line: bytes, *, cuinit: bool) -> bool:
    """Whether `filtered_stderr` drops `line` (no newline): a C++ INFO or WARNING log line, Abseil's
    pre-initialisation notice, the second line of cpu_feature_guard's notice, and with `cuinit` the
    failed-cuInit error."""
    return (bool(_BELOW_ERROR.match(line)) or any(p.match(line) for p in _START_UP_LINES)
            or (cuinit and bool(_CUINIT_FAILED.match(line))))


def is_runtime_noise(line: bytes) -> bool:
    """Whether `quiet_runtime` drops `line`: oneDNN's int64 fallback notice, logged as an error."""
    return bool(_ONEDNN_INT64.match(line))


@contextlib.contextmanager
def quiet_runtime():
    """Around a whole job of an entry point: stderr without `is_runtime_noise` lines, where
    `quiet_tensorflow_startup` quietened the start-up (not where the user set `TF_CPP_MIN_LOG_LEVEL`)."""
    if not _quietened:
        yield
        return
    with filtered_stderr(is_runtime_noise):
        yield


_quietened = False  # set by quiet_tensorflow_startup when it chose the log level


def quiet_tensorflow_startup() -> None:
    """Imports TensorFlow with its start-up lines dropped (see the module docstring). Does nothing where
    `TF_CPP_MIN_LOG_LEVEL` is set (the user chose what to see) or TensorFlow is already imported."""
    global _quietened
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    _quietened = True
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cuinit = not nvidia_driver_present()
    with filtered_stderr(lambda line: is_start_up_noise(line, cuinit=cuinit)):
        import tensorflow as tf

        if cuinit:
            tf.config.list_physical_devices("GPU")  # the CUDA probe, and its cuInit error, happen here


@contextlib.contextmanager
def filtered_stderr(drop, *, wait_s: float = 10.0):
    """Within the block, lines written to file descriptor 2 (by Python or by C++ libraries) reach the
    real stderr unless `drop(line)` (bytes, no newline) is true. A forked child copies them, and is
    waited for on exit (at most `wait_s`, in case a process started inside the block holds the pipe),
    so that what follows the block comes after them. Without `os.fork`, the block runs unfiltered."""
    if not hasattr(os, "fork"):
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: copy until every writer has closed the pipe, then exit without clean-up
        status = 0
        try:
            os.close(write_end)
            _copy_lines(read_end, 2, drop)
        except BaseException:  # noqa: BLE001  (never run the parent's code in the child)
            status = 1
        finally:
            os._exit(status)
    os.close(read_end)
    saved = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes this process's last write end: the child reads the end of the pipe
        os.close(saved)
        deadline = time.monotonic() + wait_s
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
                time.sleep(0.005)


def _copy_lines(source: int, target: int, drop) -> None:
    pending = b""
    while True:
        chunk = os.read(source, 1 << 16)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        _write_all(target, b"".join(line + b"\n" for line in lines if not drop(line)))
    if pending and not drop(pending):
        _write_all(target, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
