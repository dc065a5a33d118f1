"""A new search strategy or dataset is one registered class (or function) in a module of one's own plus
its flagfile: `python -m capnas_tf.train --flagfile=…` with `--plugins=<module>` imports the module
before the configs are built, and the names it registers are chosen like the toolkit's own."""
import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from capnas_tf import flags as capnas_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PLUGIN = '''
"""A lab's own parts: a DARTS variant and a dataset of coloured squares."""
import numpy as np
import tensorflow as tf

from capnas_tf.data.pipeline import SplitSource, register_dataset
from capnas_tf.search.strategies import DartsStrategy, register_strategy

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 220)}


@register_strategy("plugin_darts")
class PluginDarts(DartsStrategy):
    """DARTS as it is, announcing itself, so that the run's log shows which strategy ran."""

    def describe(self) -> str:
        return "plugin_darts (a registered subclass) of " + super().describe()


def _split(name, first_id, count, image_size):
    names = [list(COLOURS)[i % len(COLOURS)] for i in range(count)]
    images = np.stack([np.full((image_size, image_size, 3), COLOURS[n], np.uint8) for n in names])
    ids = np.arange(first_id, first_id + count, dtype=np.int64)
    captions = [(f"a {n} square",) for n in names]

    def elements():
        return tf.data.Dataset.from_tensor_slices({"image": images, "image_id": ids, "captions": np.array(captions)})

    return SplitSource(name, tuple(int(i) for i in ids), tuple(captions), elements, origin="coloured squares")


def squares(config, bad):
    """Twelve training, six validation and six test images of one colour each, captioned by it."""
    return {"train": _split("train", 0, 12, config.image_size),
            "validation": _split("validation", 100, 6, config.image_size),
            "test": _split("test", 200, 6, config.image_size)}


register_dataset("plugin_squares", squares)
'''


@pytest.mark.slow  # 20–70 s on 2 cores; CI runs it after the default suite (.ci/run)
def test_a_registered_strategy_and_dataset_run_from_their_flagfile(tmp_path):
    (tmp_path / "lab_parts.py").write_text(PLUGIN)
    workdir = tmp_path / "run"
    flagfile = tmp_path / "plugin_search.cfg"
    flagfile.write_text(textwrap.dedent(f"""\
        # python -m capnas_tf.train --flagfile={flagfile}
        --plugins=lab_parts
        --search_strategy=plugin_darts
        --dataset=plugin_squares
        --mode=search
        --workdir={workdir}
        --image_size=16
        --batch_size=4
        --min_word_count=1
        --max_caption_len=6
        --search_epochs=1
        --warmup_epochs=0
        --steps_per_epoch=1
        --darts_order=1
        --decoder=lstm
        --student_decoder=lstm
        --supernet_channels=4
        --supernet_cells=3
        --supernet_nodes=2
        --primitives=none,skip_connect,avg_pool_3x3
        --search_eval_images=0
        --log_every=1
        """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), REPO]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-m", "capnas_tf.train", f"--flagfile={flagfile}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Search: plugin_darts (a registered subclass) of " in output, output[-3000:]
    assert "Data: plugin_squares, 12 training images (12 captions)" in output, output[-3000:]
    assert (workdir / "search" / "genotype.json").is_file()


def _cli_error(*args) -> str:
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", *args])
        with pytest.raises(ValueError) as info:
            capnas_flags.configs_from_flags()
        return capnas_flags.describe_config_error(info.value)
    finally:
        flags.FLAGS.unparse_flags()


def test_a_name_no_registry_holds_is_refused_naming_the_flag_and_the_registered_names():
    assert _cli_error("--search_strategy=plugin_darts") == (
        "--search_strategy=plugin_darts: must be one of ['darts', 'gdas', 'random_ws', 'reinforce', 'three_stage']")
    message = _cli_error("--dataset=plugin_squares")
    assert message.startswith("--dataset=plugin_squares: must be one of ['capnas_shapes', 'coco', "), message


def test_a_plugin_that_cannot_be_imported_is_named_with_its_flag():
    assert _cli_error("--plugins=no_such_lab_module").startswith(
        "--plugins: cannot import 'no_such_lab_module': No module named 'no_such_lab_module'")
