"""`import capnas_tf` is all a saved captioner needs to load, and the command line starts quietly:
TensorFlow's start-up lines dropped (capnas_tf._startup), `--help` listing the toolkit's flags by section."""
import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "capnas_tf")


def _env(**extra) -> dict:
    """The environment of a fresh process: without TF_CPP_MIN_LOG_LEVEL (conftest sets it for this one)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**env, "PYTHONPATH": REPO, **extra}


def _python(code: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


SAVE = """
    import sys
    import numpy as np
    import tensorflow as tf
    from capnas_tf.captioner import Captioner
    from capnas_tf.decoders import get_decoder
    from capnas_tf.encoders import get_encoder
    from capnas_tf.search_space.discrete import DiscreteEncoder

    out = sys.argv[1]
    V, L = 11, 6
    tf.keras.utils.set_random_seed(0)
    models = {
        "darts_transformer": Captioner(DiscreteEncoder("DARTS_V2", channels=4, num_cells=2),
                                       get_decoder("transformer", vocab_size=V, max_len=L - 1, model_dim=16,
                                                   num_layers=1, num_heads=2, intermediate_dim=16)),
        "conv_lstm": Captioner(get_encoder("conv", filters=(4, 8)),
                               get_decoder("lstm", vocab_size=V, max_len=L - 1, embedding_dim=8, units=8)),
    }
    rng = np.random.default_rng(0)
    images = rng.random((2, 16, 16, 3), dtype=np.float32)
    tokens = rng.integers(1, V, size=(2, L - 1)).astype(np.int32)
    np.save(f"{out}/images.npy", images)
    np.save(f"{out}/tokens.npy", tokens)
    for name, model in models.items():
        np.save(f"{out}/{name}.npy", model(images, tokens, training=False).numpy())
        model.save(f"{out}/{name}.keras")
"""

LOAD = """
    import sys
    import keras, capnas_tf
    import numpy as np

    out = sys.argv[1]
    images, tokens = np.load(f"{out}/images.npy"), np.load(f"{out}/tokens.npy")
    for name in sys.argv[2:]:
        model = keras.saving.load_model(f"{out}/{name}.keras", compile=False)
        np.save(f"{out}/{name}.loaded.npy", model(images, tokens, training=False).numpy())
    print(sorted(m for m in sys.modules if m.startswith("capnas_tf.search.") or m == "capnas_tf.flags"))
"""


@pytest.mark.slow  # 20–70 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_a_saved_captioner_loads_after_import_capnas_tf_alone(tmp_path):
    names = ("darts_transformer", "conv_lstm")
    _python(SAVE, str(tmp_path))
    loaded = _python(LOAD, str(tmp_path), *names)
    assert loaded.stdout.strip() == "[]"  # light: neither the search nor the flags came along
    for name in names:
        before, after = np.load(tmp_path / f"{name}.npy"), np.load(tmp_path / f"{name}.loaded.npy")
        assert before.shape == (2, 5, 11)
        np.testing.assert_array_equal(after, before, err_msg=name)


def _registering_modules() -> list[str]:
    """Every capnas_tf module that decorates a class with keras.saving.register_keras_serializable."""
    pattern = re.compile(r"^\s*@keras\.saving\.register_keras_serializable\(", re.MULTILINE)
    modules = []
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            path = os.path.join(folder, file)
            if file.endswith(".py") and pattern.search(open(path, encoding="utf-8").read()):
                relative = os.path.relpath(path, REPO)[: -len(".py")]
                modules.append(relative.replace(os.sep, ".").removesuffix(".__init__"))
    return sorted(modules)


def test_import_capnas_tf_registers_every_class_the_package_registers():
    modules = _registering_modules()
    assert "capnas_tf.captioner" in modules and "capnas_tf.encoders" in modules
    result = _python("""
        import importlib, sys
        import keras, capnas_tf

        def ours():
            return {k for k in keras.saving.get_custom_objects() if k.startswith("capnas_tf>")}

        at_import = ours()
        for module in sys.argv[1:]:
            importlib.import_module(module)
        print(len(at_import), sorted(ours() - at_import))
    """, *modules)
    count, missing = result.stdout.split(maxsplit=1)
    assert missing.strip() == "[]", f"registered only when their module is imported: {missing}"
    assert int(count) >= 20


def test_train_help_lists_the_toolkits_flags_by_section_and_starts_quietly():
    result = subprocess.run([sys.executable, "-m", "capnas_tf.train", "--help"], env=_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result.stderr  # absl's --help exit status
    out = result.stdout
    headings = [line for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert headings == ["flags:", "run (every --mode):", "data (every --mode):",
                        "search (--mode=search | pipeline):", "retrain and evaluation (--mode=retrain | pipeline):",
                        "export of the retrained captioner (--mode=retrain | pipeline):"]
    for flag in ("--weight_lr", "--retrain_decoder", "--dataset", "--workdir", "--[no]export_onnx"):
        assert flag in out
    assert out.index("--weight_lr") < out.index("retrain and evaluation") < out.index("--retrain_decoder")
    for library_flag in ("tt_check_filter", "test_srcdir", "--verbosity", "helpfull:"):
        assert library_flag not in out
    assert "cuInit" not in result.stderr
    assert not re.search(r"^[IW]\d{4} |oneDNN|cpu_feature_guard|absl::InitializeLog", result.stderr, re.MULTILINE), \
        result.stderr

    full = subprocess.run([sys.executable, "-m", "capnas_tf.train", "--helpfull"], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=240).stdout
    assert "--[no]tt_check_filter" in full and "--weight_lr" in full and "capnas_tf.flags:" in full


def _startup_module():
    """capnas_tf._startup without importing the package (which imports TensorFlow)."""
    spec = importlib.util.spec_from_file_location("capnas_startup", os.path.join(PACKAGE, "_startup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_start_up_noise_is_tensorflows_info_and_warning_lines_and_cuinit_only_without_a_driver():
    startup = _startup_module()
    noise = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        b"I0000 00:00:1796547517.503157    5973 port.cc:153] oneDNN custom operations are on.",
        b"I0000 00:00:1796547517.503688    5973 cudart_stub.cc:31] Could not find cuda drivers on your machine.",
        b"I0000 00:00:1796547517.545278    5973 cpu_feature_guard.cc:227] This TensorFlow binary is optimized",
        b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the "
        b"appropriate compiler flags.",
        b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda",
        b"W0000 00:00:1758131045.228000 3722035 computation_placer.cc:177] computation placer already registered.",
    ]
    cuinit = (b"E0000 00:00:1796547543.717070    6111 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
              b"CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
    kept = [b"E0000 00:00:1796547543.717070    6111 cuda_dnn.cc:8579] Unable to register cuDNN factory",
            b"F0000 00:00:1796547543.717070    6111 cpu_feature_guard.cc:99] The TensorFlow library was compiled",
            b"Traceback (most recent call last):", b"UserWarning: something", b""]
    for line in noise:
        assert startup.is_start_up_noise(line, cuinit=False) and startup.is_start_up_noise(line, cuinit=True), line
    assert startup.is_start_up_noise(cuinit, cuinit=True) and not startup.is_start_up_noise(cuinit, cuinit=False)
    for line in kept:
        assert not startup.is_start_up_noise(line, cuinit=True), line


def test_runtime_noise_is_onednns_int64_fallback_notice_only():
    startup = _startup_module()
    assert startup.is_runtime_noise(b"E0000 00:00:1796554122.395145   32519 util.cc:131] oneDNN supports DT_INT64 "
                                    b"only on platforms with AVX-512. Falling back to the default Eigen-based "
                                    b"implementation if present.")
    for line in (b"E0000 00:00:1796547543.717070    6111 cuda_dnn.cc:8579] Unable to register cuDNN factory",
                 b"oneDNN supports DT_INT64 only on platforms with AVX-512", b"Traceback (most recent call last):"):
        assert not startup.is_runtime_noise(line), line


def test_filtered_stderr_passes_every_other_line_in_order():
    result = _python(f"""
        import importlib.util, os, sys
        spec = importlib.util.spec_from_file_location("s", {os.path.join(PACKAGE, "_startup.py")!r})
        startup = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(startup)
        print("before", file=sys.stderr, flush=True)
        with startup.filtered_stderr(lambda line: line.startswith(b"drop")):
            os.write(2, b"keep 1\\ndrop 2\\nkee")
            print("p 3", file=sys.stderr)
            os.write(2, b"drop 4\\nkeep 5 (no newline)")
        print("", file=sys.stderr)
        print("after", file=sys.stderr)
    """)
    assert result.stderr == "before\nkeep 1\nkeep 3\nkeep 5 (no newline)\nafter\n"


def test_entry_point_module_is_the_capnas_tf_module_run_with_python_dash_m():
    # sys.argv[0] is "-m" only while Python locates the module, i.e. while it imports the module's package.
    for module, expected in (("capnas_tf.train", "capnas_tf.train"), ("json.tool", None)):
        result = _python(f"""
            import importlib.util, os, sys
            spec = importlib.util.spec_from_file_location("s", {os.path.join(PACKAGE, "_startup.py")!r})
            startup = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(startup)
            sys.argv[0], sys.orig_argv = "-m", [sys.executable, "-X", "utf8", "-m", {module!r}, "--help"]
            print(startup.entry_point_module())
        """)
        assert result.stdout.strip() == str(expected)
    assert _startup_module().entry_point_module() is None  # this test process
