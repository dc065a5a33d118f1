"""RetrainConfig.encoder: retrain_job trains a fixed encoder of `capnas_tf.encoders` (the baselines of
benchmarks/dataset_difficulty.py) by the same recipe as a genotype's DiscreteEncoder, which stays the default."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from capnas_tf.config import RetrainConfig
from capnas_tf.encoders import ConvEncoder, GapEncoder
from capnas_tf.config import RunConfig
from capnas_tf.retrain import build_captioner, build_encoder, retrain_job
from capnas_tf.search_space.discrete import DiscreteEncoder
from tests.retrain_fixtures import TINY_RETRAIN, tiny_data


def test_default_encoder_is_the_genotypes_discrete_encoder():
    encoder = build_encoder(dataclasses.replace(TINY_RETRAIN))
    assert TINY_RETRAIN.encoder == RetrainConfig().encoder == "darts"
    assert isinstance(encoder, DiscreteEncoder)


def test_named_encoder_replaces_the_genotype_in_the_captioner():
    config = dataclasses.replace(TINY_RETRAIN, encoder="conv")
    captioner = build_captioner(config, vocab_size=20, max_caption_len=8, image_size=16)
    assert isinstance(captioner.encoder, ConvEncoder)
    assert captioner.encoder.filters == ConvEncoder().filters  # the registry's default sizes


def test_retrain_job_trains_and_saves_a_gap_encoder_captioner(tmp_path):
    data = tiny_data(str(tmp_path))
    config = dataclasses.replace(TINY_RETRAIN, encoder="gap", steps_per_epoch=2, export_saved_model=False,
                                 export_onnx=False, baseline="none", blind_baseline=False)
    lines = []
    result = retrain_job(RunConfig(workdir=str(tmp_path)), config, data, log=lines.append)
    assert lines[0].startswith("Retrain: gap encoder (")
    assert isinstance(result.captioner.encoder, GapEncoder)
    assert result.metrics["config"]["encoder"] == "gap"
    assert set(result.metrics["model"]) == {"test", "test_novel"}


def test_a_saved_fixed_encoder_captioner_loads_in_a_fresh_evaluate_process(tmp_path):
    """As `python -m capnas_tf.evaluate --model=…` loads it: the loader must register GapEncoder itself."""
    captioner = build_captioner(dataclasses.replace(TINY_RETRAIN, encoder="gap"), vocab_size=20, max_caption_len=8,
                                image_size=16)
    captioner.save(os.path.join(str(tmp_path), "captioner.keras"))
    script = ("import json, sys, numpy as np\n"
              "from capnas_tf.evaluation import load_model_for_evaluation\n"
              "model, _ = load_model_for_evaluation(sys.argv[1])\n"
              "print(json.dumps([type(model.encoder).__name__, [float(np.sum(w.numpy(), dtype=np.float64)) "
              "for w in model.weights]]))\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=False,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    encoder_class, sums = json.loads(out.stdout.strip().splitlines()[-1])
    assert encoder_class == "GapEncoder"
    assert sums == [float(np.sum(w.numpy(), dtype=np.float64)) for w in captioner.weights]


def test_unknown_encoder_is_an_error_naming_the_field():
    with pytest.raises(ValueError, match="RetrainConfig.encoder .*'nope'"):
        build_encoder(RetrainConfig(encoder="nope"))


def test_drop_path_needs_the_darts_encoder():
    with pytest.raises(ValueError, match="RetrainConfig.drop_path_prob > 0 needs encoder='darts'"):
        RetrainConfig(encoder="conv", drop_path_prob=0.2)
