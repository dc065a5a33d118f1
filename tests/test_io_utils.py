"""capnas_tf.io_utils: atomic writes end with the permissions the umask gives a plain file or directory
(not mkstemp's 0600 / mkdtemp's 0700), and a failed write leaves the target untouched."""
import os
import stat

import pytest

from capnas_tf import io_utils


@pytest.fixture
def umask():
    """Sets the process umask for one test and restores it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                        (0o002, 0o664, 0o775)])
def test_atomic_writes_get_the_umask_permissions(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert io_utils.current_umask() == mask
    for name, write in (("a.bin", lambda p: io_utils.atomic_write_bytes(p, b"\x00\x01")),
                        ("vocab.txt", lambda p: io_utils.atomic_write_text(p, "a\nb\n")),
                        ("metrics.json", lambda p: io_utils.atomic_write_json(p, {"x": 1}))):
        path = tmp_path / "out" / name
        write(str(path))
        assert _mode(path) == file_mode, name
        write(str(path))  # replacing an existing file: the new one gets the same permissions
        assert _mode(path) == file_mode, name
    assert (tmp_path / "out" / "vocab.txt").read_text() == "a\nb\n"

    target = tmp_path / "export" / "saved_model" / "1"
    for content in ("first", "second"):  # written, then replaced
        with io_utils.atomic_directory(str(target)) as tmp:
            with open(os.path.join(tmp, "saved_model.pb"), "w") as f:
                f.write(content)
        assert _mode(target) == dir_mode
        assert (target / "saved_model.pb").read_text() == content
    assert _mode(io_utils.make_temp_dir(str(tmp_path))) == dir_mode
    assert sorted(os.listdir(tmp_path / "export" / "saved_model")) == ["1"]  # no temp or old dirs left
    assert sorted(os.listdir(tmp_path / "out")) == ["a.bin", "metrics.json", "vocab.txt"]


def test_failed_atomic_writes_leave_the_target_untouched(tmp_path):
    path = tmp_path / "genotype.json"
    io_utils.atomic_write_text(str(path), "old")
    with pytest.raises(TypeError):
        io_utils.atomic_write_json(str(path), {"x": object()})
    assert path.read_text() == "old"

    target = tmp_path / "1"
    with io_utils.atomic_directory(str(target)) as tmp:
        open(os.path.join(tmp, "a"), "w").close()
    with pytest.raises(RuntimeError):
        with io_utils.atomic_directory(str(target)) as tmp:
            open(os.path.join(tmp, "b"), "w").close()
            raise RuntimeError("crash while writing")
    assert os.listdir(target) == ["a"]
    assert sorted(os.listdir(tmp_path)) == ["1", "genotype.json"]


KILLED_WRITER = """
import os, signal, sys
from capnas_tf import io_utils
with io_utils.atomic_directory(sys.argv[1], prefix=".tmp-1-") as tmp:
    open(os.path.join(tmp, "saved_model.pb"), "w").close()
    os.kill(os.getpid(), signal.SIGKILL)  # killed half-way through an export
"""


def test_remove_stale_temps_deletes_what_killed_writers_left_and_nothing_of_live_ones(tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = tmp_path / "saved_model"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(base / "1")], cwd=repo,
                          env={**os.environ, "PYTHONPATH": repo, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == -9
    (killed,) = os.listdir(base)
    assert killed.startswith(".tmp-1-pid")
    (base / ".tmp-untagged").mkdir()  # written before temps carried a pid
    (base / ".tmp-abc.keras").write_text("x")
    (base / ".old-xyz").mkdir()
    live = io_utils.make_temp_dir(str(base), ".tmp-1-")  # this process's: being written
    (base / "1").mkdir()
    (base / "notes.tmp-").write_text("kept")
    removed = io_utils.remove_stale_temps(str(base))
    assert sorted(os.path.basename(p) for p in removed) == sorted([killed, ".tmp-untagged", ".tmp-abc.keras",
                                                                  ".old-xyz"])
    assert sorted(os.listdir(base)) == sorted([os.path.basename(live), "1", "notes.tmp-"])
    assert io_utils.remove_stale_temps(str(tmp_path / "missing")) == []


def test_save_keras_atomically_replaces_the_file_whole_or_not_at_all(tmp_path, monkeypatch):
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    path = str(tmp_path / "captioner.keras")
    io_utils.save_keras_atomically(model, path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())
    assert _mode(path) == io_utils.default_file_mode()
    before = open(path, "rb").read()

    def crash(filepath, **kwargs):  # a save that dies half-way
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half")
        raise OSError("No space left on device")
    monkeypatch.setattr(model, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        io_utils.save_keras_atomically(model, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["captioner.keras"]
