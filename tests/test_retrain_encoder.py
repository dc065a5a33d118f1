"""RetrainConfig.encoder: retrain_job trains a fixed encoder of `capnas_tf.encoders` (the baselines of
benchmarks/dataset_difficulty.py) by the same recipe as a genotype's DiscreteEncoder, which stays the default;
and that DiscreteEncoder's operations are the supernet's candidates (pooling followed by BatchNorm)."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.config import RetrainConfig
from capnas_tf.encoders import ConvEncoder, GapEncoder
from capnas_tf.config import RunConfig
from capnas_tf.retrain import architecture_of, build_captioner, build_encoder, check_architecture, retrain_job
from capnas_tf.search_space.cells import edge_index
from capnas_tf.search_space.discrete import DiscreteEncoder, load_supernet_weights
from capnas_tf.search_space.genotypes import genotype_op_weights
from capnas_tf.search_space.ops import WithBatchNorm
from capnas_tf.search_space.supernet import SupernetEncoder
from tests.retrain_fixtures import TINY_RETRAIN, tiny_data
from tests.search_space.tiny_space import ALL_OPS_GENOTYPE, TINY, images, supernet_with_random_statistics


def test_default_encoder_is_the_genotypes_discrete_encoder():
    encoder = build_encoder(dataclasses.replace(TINY_RETRAIN))
    assert TINY_RETRAIN.encoder == RetrainConfig().encoder == "darts"
    assert isinstance(encoder, DiscreteEncoder)


def test_named_encoder_replaces_the_genotype_in_the_captioner():
    config = dataclasses.replace(TINY_RETRAIN, encoder="conv")
    captioner = build_captioner(config, vocab_size=20, max_caption_len=8, image_size=16)
    assert isinstance(captioner.encoder, ConvEncoder)
    assert captioner.encoder.filters == ConvEncoder().filters  # the registry's default sizes


@pytest.mark.slow  # 20–70 s on 2 cores; CI runs it after the default suite (.ci/run)
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


# --- The operations retrained are the operations searched ---------------------------------------------

@pytest.fixture(scope="module")
def searched_and_retrained(tmp_path_factory):
    """A tiny supernet (BN statistics away from (0, 1)) and the encoder `build_encoder` builds to retrain
    ALL_OPS_GENOTYPE at its size (affine cells, the default RetrainConfig), holding the supernet's weights."""
    supernet = supernet_with_random_statistics(stem_multiplier=3)  # RetrainConfig's DiscreteEncoder: 3
    path = tmp_path_factory.mktemp("genotype") / "genotype.json"
    ALL_OPS_GENOTYPE.save(str(path))
    encoder = build_encoder(RetrainConfig(genotype=str(path), channels=TINY["channels"], num_cells=TINY["num_cells"]))
    load_supernet_weights(encoder, supernet)
    return supernet, encoder


def test_each_pooling_op_retrained_is_the_supernets_candidate_up_to_bn_gamma_and_beta(searched_and_retrained):
    """Pooling, then BN: affine-free in the supernet (DARTS), with γ, β in the affine retrained cell; at
    γ = 1, β = 0 the same function, in training (batch statistics) and inference mode. Pooling alone
    (DARTS' final network, --retrain_pool_batchnorm=false) is another function."""
    supernet, encoder = searched_and_retrained
    strides = set()
    for i, (source, target) in enumerate(zip(supernet.cells, encoder.cells)):
        for slot, (name, index) in enumerate(target.op_list):
            if "pool" not in name:
                continue
            op = target.node_ops[slot]
            candidate = source.edges[edge_index(slot // 2, index)].candidates[supernet.primitives.index(name)]
            assert op.bn.scale and op.bn.center and not candidate.bn.scale  # γ, β as the cell's other BNs
            x = 1.0 + 3.0 * tf.random.stateless_normal([2, 8, 8, op.channels], seed=[i, slot])
            for training in (True, False):
                np.testing.assert_allclose(op(x, training=training), candidate(x, training=training),
                                           rtol=1e-5, atol=1e-5)
            assert np.abs(op.op(x) - candidate(x, training=True)).max() > 0.5
            strides.add((name, target.stride_of(index)))
    assert strides == {("avg_pool_3x3", 1), ("max_pool_3x3", 2)}  # the genotype's pools, in 3 cells


def test_the_retrained_encoder_computes_the_supernet_at_the_genotypes_one_hot_weights(searched_and_retrained):
    """The whole network: the retrained encoder at the supernet's weights (γ = 1, β = 0) is the supernet at
    one-hot op weights, in training mode."""
    supernet, encoder = searched_and_retrained
    op_weights = genotype_op_weights(ALL_OPS_GENOTYPE, supernet.primitives)
    x = images()
    expected = tf.function(lambda x: supernet(x, training=True, op_weights=op_weights))(x)
    actual = tf.function(lambda x: encoder(x, training=True))(x)
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(a, b, atol=1e-4 * float(tf.reduce_max(tf.abs(b))))
    assert float(tf.reduce_max(tf.abs(expected[0]))) > 0.1


def test_pooling_without_bn_stays_reachable_and_is_not_the_searched_op():
    config = dataclasses.replace(TINY_RETRAIN, pool_batchnorm=False)
    encoder = build_encoder(config)
    assert not encoder.pool_batchnorm and build_encoder(TINY_RETRAIN).pool_batchnorm
    assert not any(isinstance(layer, WithBatchNorm) for layer in encoder._flatten_layers())
    supernet = SupernetEncoder(channels=4, num_cells=2, num_nodes=4, stem_multiplier=3)
    with pytest.raises(ValueError, match="pool_batchnorm=False: its pooling ops have no BN"):
        load_supernet_weights(encoder, supernet)


def test_a_workdir_retrained_with_bn_after_pooling_is_refused_without_it(tmp_path):
    """The BN after pooling adds variables that checkpoints restore by position: the recorded architecture
    names it. A record without the key is pooling alone."""
    with_bn, without = architecture_of(TINY_RETRAIN), architecture_of(dataclasses.replace(TINY_RETRAIN,
                                                                                             pool_batchnorm=False))
    assert with_bn == {**without, "pool_batchnorm": True} and "pool_batchnorm" not in without
    check_architecture(str(tmp_path), with_bn)
    with pytest.raises(ValueError, match=r"pool_batchnorm differs .*--retrain_pool_batchnorm"):
        check_architecture(str(tmp_path), without)
