"""SearchConfig and SupernetConfig refuse out-of-range settings at construction with a `ConfigError`
naming the field; on the command line any config error is one line `--flag=value: what was expected`,
printed before any data is read, with a non-zero exit status and no traceback."""
import dataclasses
import glob
import math
import os
import subprocess
import sys
import time

import pytest
from absl import flags

from capnas_tf import flags as capnas_flags
from capnas_tf.config import ConfigError, RetrainConfig, SearchConfig, SupernetConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (config class, overrides, the field the error must name)
REFUSED = [
    # SupernetConfig
    (SupernetConfig, dict(channels=0), "channels"),
    (SupernetConfig, dict(num_cells=0), "num_cells"),
    (SupernetConfig, dict(num_nodes=-1), "num_nodes"),
    (SupernetConfig, dict(stem_multiplier=0), "stem_multiplier"),
    (SupernetConfig, dict(primitives=()), "primitives"),
    (SupernetConfig, dict(primitives=("none", "none")), "primitives"),
    (SupernetConfig, dict(primitives=("none", "conv_9x9")), "primitives"),
    (SupernetConfig, dict(primitives="none"), "primitives"),
    (SupernetConfig, dict(relaxation="sparsemax"), "relaxation"),
    (SupernetConfig, dict(max_skip_connect=-1), "max_skip_connect"),
    (SupernetConfig, dict(partial_channels=0), "partial_channels"),
    (SupernetConfig, dict(channels=8, partial_channels=3), "partial_channels"),
    # SearchConfig: names among the registries'
    (SearchConfig, dict(strategy="evolution"), "strategy"),
    (SearchConfig, dict(hypergradient="neumann"), "hypergradient"),
    (SearchConfig, dict(hypergradient_terms="two"), "hypergradient_terms"),
    (SearchConfig, dict(stage2="hard"), "stage2"),
    (SearchConfig, dict(darts_order=0), "darts_order"),
    (SearchConfig, dict(darts_order=3), "darts_order"),
    (SearchConfig, dict(decoder="gru"), "decoder"),
    (SearchConfig, dict(student_encoder="vit"), "student_encoder"),
    (SearchConfig, dict(student_decoder="gru"), "student_decoder"),
    (SearchConfig, dict(decoder_dropout=1.0), "decoder_dropout"),
    (SearchConfig, dict(decoder_dropout=-0.1), "decoder_dropout"),
    (SearchConfig, dict(dtype_policy="float16"), "dtype_policy"),
    # lengths
    (SearchConfig, dict(epochs=0), "epochs"),
    (SearchConfig, dict(steps_per_epoch=-3), "steps_per_epoch"),
    (SearchConfig, dict(warmup_epochs=-1), "warmup_epochs"),
    (SearchConfig, dict(epochs=4, warmup_epochs=4), "warmup_epochs"),
    (SearchConfig, dict(epochs=1, warmup_epochs=5), "warmup_epochs"),
    (SearchConfig, dict(log_every=0), "log_every"),
    (SearchConfig, dict(checkpoint_every=-1), "checkpoint_every"),
    (SearchConfig, dict(eval_images=-1), "eval_images"),
    # rates and step sizes
    (SearchConfig, dict(eta_e=0.0), "eta_e"),
    (SearchConfig, dict(eta_f=-0.1), "eta_f"),
    (SearchConfig, dict(eta_w=0.0), "eta_w"),
    (SearchConfig, dict(weight_lr=-1.0), "weight_lr"),
    (SearchConfig, dict(weight_lr=0.0), "weight_lr"),
    (SearchConfig, dict(weight_lr=math.nan), "weight_lr"),
    (SearchConfig, dict(student_lr=0.0), "student_lr"),
    (SearchConfig, dict(arch_lr=-5.0), "arch_lr"),
    (SearchConfig, dict(arch_lr=math.inf), "arch_lr"),
    (SearchConfig, dict(weight_decay=-1e-4), "weight_decay"),
    (SearchConfig, dict(arch_weight_decay=-1e-3), "arch_weight_decay"),
    (SearchConfig, dict(grad_clip=-1.0), "grad_clip"),
    (SearchConfig, dict(arch_grad_clip=-1.0), "arch_grad_clip"),
    (SearchConfig, dict(arch_weight_decay_mode="l2"), "arch_weight_decay_mode"),
    (SearchConfig, dict(fd_epsilon=0.0), "fd_epsilon"),
    (SearchConfig, dict(loss_scale=-1.0), "loss_scale"),
    (SearchConfig, dict(loss_scale=1000.0), "loss_scale"),
    (SearchConfig, dict(loss_scale=0.5), "loss_scale"),
    # baselines
    (SearchConfig, dict(gdas_tau_min=0.0), "gdas_tau_min"),
    (SearchConfig, dict(gdas_tau_min=0.1, gdas_tau_max=0.05), "gdas_tau_max"),
    (SearchConfig, dict(random_ws_candidates=0), "random_ws_candidates"),
    (SearchConfig, dict(random_ws_rank_batches=0), "random_ws_rank_batches"),
    (SearchConfig, dict(strategy="random_ws", epochs=2, warmup_epochs=1, steps_per_epoch=2,
                        random_ws_rank_batches=3), "random_ws_rank_batches"),
    (SearchConfig, dict(controller_units=0), "controller_units"),
    (SearchConfig, dict(controller_lr=0.0), "controller_lr"),
    (SearchConfig, dict(reinforce_entropy_weight=-1e-4), "reinforce_entropy_weight"),
    (SearchConfig, dict(reinforce_baseline_decay=1.0), "reinforce_baseline_decay"),
    (SearchConfig, dict(reinforce_baseline_decay=-0.1), "reinforce_baseline_decay"),
    (SearchConfig, dict(supernet=None), "supernet"),
]


@pytest.mark.parametrize("cls, overrides, field", REFUSED,
                         ids=[f"{c.__name__}-{'-'.join(f'{k}={v}' for k, v in o.items())}" for c, o, _ in REFUSED])
def test_out_of_range_settings_are_refused_naming_the_field(cls, overrides, field):
    with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.{field} must be ") as info:
        cls(**overrides)
    assert (info.value.config, info.value.field) == (cls.__name__, field)
    assert isinstance(info.value, ValueError)


# The edges of the ranges, and the zeros that mean something (see SearchConfig.__post_init__).
ACCEPTED = [
    (SupernetConfig, dict(max_skip_connect=None)),
    (SupernetConfig, dict(max_skip_connect=0)),
    (SupernetConfig, dict(channels=8, partial_channels=8)),
    (SupernetConfig, dict(channels=6, partial_channels=3, primitives=("none", "skip_connect"))),
    (SearchConfig, dict(steps_per_epoch=0, warmup_epochs=0, grad_clip=0.0, arch_grad_clip=0.0, weight_decay=0.0,
                        arch_weight_decay=0.0,
                        checkpoint_every=0, eval_images=0, loss_scale=0.0, reinforce_entropy_weight=0.0,
                        reinforce_baseline_decay=0.0)),
    (SearchConfig, dict(epochs=1, warmup_epochs=0, darts_order=1, loss_scale=1.0)),
    (SearchConfig, dict(loss_scale=1024.0, dtype_policy="mixed_float16")),
    (SearchConfig, dict(gdas_tau_min=0.5, gdas_tau_max=0.5)),
    (SearchConfig, dict(decoder_dropout=0.0)),
    (SearchConfig, dict(strategy="random_ws", epochs=2, warmup_epochs=1, steps_per_epoch=2, random_ws_rank_batches=2)),
    (SearchConfig, dict(strategy="random_ws", steps_per_epoch=0, random_ws_rank_batches=1000)),  # checked at run time
]


@pytest.mark.parametrize("cls, overrides", ACCEPTED)
def test_edges_of_the_ranges_are_accepted(cls, overrides):
    cls(**overrides)


def test_every_default_passes_validation():
    search, supernet = SearchConfig(), SupernetConfig()
    for cls, config in ((SearchConfig, search), (SupernetConfig, supernet)):
        for field in dataclasses.fields(cls):  # each default, also as the one value given
            cls(**{field.name: getattr(config, field.name)})
    assert dataclasses.replace(search) == search


# -- the command line ---------------------------------------------------------------------------------

def _parsed(*args):
    FLAGS = flags.FLAGS
    FLAGS.unparse_flags()
    FLAGS(["train", *args])
    return FLAGS


def _cli_error(*args) -> str:
    try:
        _parsed(*args)
        with pytest.raises(ValueError) as info:
            capnas_flags.configs_from_flags()
        return capnas_flags.describe_config_error(info.value)  # reads the flags' values
    finally:
        flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("args, message", [
    (["--weight_lr=-1"], "--weight_lr=-1.0: must be > 0"),
    (["--arch_lr=0"], "--arch_lr=0.0: must be > 0"),
    (["--search_epochs=0"], "--search_epochs=0: must be >= 1"),
    (["--steps_per_epoch=-3"], "--steps_per_epoch=-3: must be >= 0 (0: one pass over D_tr)"),
    (["--log_every=0"], "--log_every=0: must be >= 1"),
    # the other fields an error mentions are named by their flags too
    (["--warmup_epochs=5", "--search_epochs=1"], "--warmup_epochs=5: must be >= 0 and < --search_epochs (1)"),
    (["--partial_channels=3"], "--partial_channels=3: must be >= 1 and a divisor of --supernet_channels (8)"),
    (["--primitives=none,conv_9x9"], "--primitives=none,conv_9x9: must be names of registered ops"),
    (["--max_skip_connect=-1", "--supernet_nodes=0"], "--supernet_nodes=0: must be >= 1"),
    # DataConfig's and RetrainConfig's own rules, named by flag the same way
    (["--image_size=0"], "--image_size=0: must be >= 1"),
    (["--max_caption_len=1"], "--max_caption_len=1: must be >= 2"),
    (["--retrain_lr=-1"], "--retrain_lr=-1.0: must be > 0"),
    (["--retrain_epochs=0"], "--retrain_epochs=0: must be >= 1"),
    (["--retrain_drop_path_prob=1.5"], "--retrain_drop_path_prob=1.5: must be in [0, 1)"),
    (["--scheduled_sampling=exponential"],
     "--scheduled_sampling_k=0.0: must be in (0, 1) for --scheduled_sampling 'exponential'"),
    (["--scheduled_sampling=inverse_sigmoid", "--scheduled_sampling_k=0.5"],
     "--scheduled_sampling_k=0.5: must be >= 1 for --scheduled_sampling 'inverse_sigmoid'"),
    (["--scheduled_sampling=linear", "--scheduled_sampling_min=2"], "--scheduled_sampling_min=2.0: must be in [0, 1]"),
    (["--retrain_encoder_weights=/no/such.weights.h5"],
     "--retrain_encoder_weights=/no/such.weights.h5: must be '' or the path of an existing local weights file"),
    (["--freeze_encoder_epochs=1"], "--freeze_encoder_epochs=1: must be 0 without --retrain_encoder_weights"),
    # errors that name their flags already are printed as they are
    (["--mode=pipeline", "--retrain_encoder=conv"], "--retrain_encoder=conv cannot be used with --mode=pipeline"),
    (["--search_strategy=gdas", "--dtype_policy=mixed_bfloat16"], "--dtype_policy=mixed_bfloat16 is implemented"),
])
def test_config_errors_name_the_flag_and_its_value(args, message):
    assert _cli_error(*args).startswith(message)


def test_every_config_field_set_by_a_flag_maps_back_to_that_flag():
    from capnas_tf.config import DataConfig

    for cls, table in ((SearchConfig, capnas_flags.SEARCH_FLAGS), (SupernetConfig, capnas_flags.SUPERNET_FLAGS),
                       (DataConfig, capnas_flags.DATA_FLAGS), (RetrainConfig, capnas_flags.RETRAIN_FLAGS)):
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(table) <= fields, cls
        for field in table:
            flag = capnas_flags.FLAG_OF_FIELD[cls.__name__, field]
            assert flag in flags.FLAGS, flag
    # everything but the supernet (its own config) and stem_multiplier has a flag
    assert {f.name for f in dataclasses.fields(SearchConfig)} - set(capnas_flags.SEARCH_FLAGS) == {"supernet"}
    assert {f.name for f in dataclasses.fields(SupernetConfig)} - set(capnas_flags.SUPERNET_FLAGS) == {
        "stem_multiplier"}


def test_the_command_lines_defaults_are_the_configs_defaults():
    """One source of truth: with no flag given, every config built from flags equals its dataclass default."""
    from capnas_tf.config import DataConfig, RunConfig

    try:
        _parsed()
        built = capnas_flags.configs_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert built == dict(run=RunConfig(), data=DataConfig(), search=SearchConfig(), retrain=RetrainConfig())
    assert SearchConfig().eval_images == flags.FLAGS["search_eval_images"].default == 100


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.cfg"))),
                         ids=os.path.basename)
def test_flagfiles_build_valid_configs(path):
    try:
        _parsed(f"--flagfile={path}")
        configs = capnas_flags.configs_from_flags()
    finally:
        flags.FLAGS.unparse_flags()
    assert set(configs) == {"run", "data", "search", "retrain"}
    assert isinstance(configs["search"], SearchConfig) and isinstance(configs["retrain"], RetrainConfig)


def test_bad_flag_exits_before_reading_data_without_a_traceback(tmp_path):
    workdir = tmp_path / "run"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "capnas_tf.train", "--mode=search", "--weight_lr=-1",
                           f"--workdir={workdir}", f"--data_dir={tmp_path / 'tfds'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "--weight_lr=-1" in proc.stderr, output
    assert "Traceback" not in output, output
    assert not workdir.exists() and not (tmp_path / "tfds").exists()  # no data generated, nothing written
    assert elapsed < 120, elapsed  # the time to import TensorFlow, not to generate a dataset


def test_a_bad_annotation_file_stops_the_cli_naming_it_without_a_traceback(tmp_path):
    """Errors found while the data loads name the file (and the flag); the CLI prints them, not a traceback."""
    annotations, images = tmp_path / "captions.json", tmp_path / "images"
    annotations.write_text('{"images": [], "annotations": [')  # cut off mid-file
    images.mkdir()
    proc = subprocess.run([sys.executable, "-m", "capnas_tf.train", "--mode=search", "--dataset=coco",
                           f"--annotations={annotations}", f"--image_dir={images}", f"--workdir={tmp_path / 'run'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("Error: --annotations: ") and str(annotations) in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
