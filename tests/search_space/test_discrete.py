"""The discrete encoder of a genotype: sizes, contract, drop-path, a backbone stem, and weight
sharing with the supernet (one-hot op weights ≡ the derived network with copied weights)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search_space.cells import drop_path
from capnas_tf.search_space.discrete import DiscreteEncoder, discrete_from_supernet
from capnas_tf.search_space.genotypes import DARTS_V2, derive_genotype, genotype_op_weights
from capnas_tf.search_space.supernet import SupernetEncoder
from tests.search_space.layer_checks import check_layer
from tests.search_space.tiny_space import ALL_OPS_GENOTYPE, TINY, images, supernet_with_random_statistics


def parameter_counts(model):
    model.build((None, 32, 32, 3))
    return model.count_params(), sum(int(np.prod(v.shape)) for v in model.trainable_variables)


# With BN after pooling (the default), each of DARTS_V2's 5 max-pools per reduction cell adds 4·C weights
# (γ, β trainable; the moving mean and variance not) at that cell's C: 2C and 4C.
@pytest.mark.parametrize("channels, num_cells, pool_batchnorm, total, trainable", [
    (8, 5, True, 38_384, 36_208),
    (8, 5, False, 37_424, 35_728),
    (16, 8, True, 251_760, 244_496),
    (16, 8, False, 249_840, 243_536),
])
def test_darts_v2_size_is_pinned(channels, num_cells, pool_batchnorm, total, trainable):
    encoder = DiscreteEncoder(DARTS_V2, channels, num_cells, pool_batchnorm=pool_batchnorm)
    assert parameter_counts(encoder) == (total, trainable)


def test_darts_v2_cifar_network_matches_the_reference_parameter_count():
    """DARTS' CIFAR-10 network (C = 36, 20 cells; pooling without BN) has 3,349,342 parameters with its
    576 → 10 classifier, the count of the reference implementation (the paper's 3.3M)."""
    _, trainable = parameter_counts(DiscreteEncoder(DARTS_V2, 36, 20, pool_batchnorm=False))
    assert trainable + 576 * 10 + 10 == 3_349_342


def test_discrete_encoder_round_trips():
    check_layer(lambda: DiscreteEncoder(ALL_OPS_GENOTYPE, channels=4, num_cells=3, stem_multiplier=2),
                (images(),), expected_shapes=((2, 4, 4, 32), (2, 32)))


def test_genotype_by_name_and_config_is_self_contained(tmp_path):
    encoder = DiscreteEncoder("DARTS_V2", channels=4, num_cells=3)
    assert encoder.genotype == DARTS_V2
    config = encoder.get_config()
    assert config["genotype"]["normal"][0] == ["sep_conv_3x3", 0]  # the genotype itself, not a name
    path = tmp_path / "g.json"
    DARTS_V2.save(str(path))
    assert DiscreteEncoder(str(path), channels=4, num_cells=3).genotype == DARTS_V2


def test_output_channels_follow_the_concat_of_the_last_cell():
    encoder = DiscreteEncoder(DARTS_V2, channels=4, num_cells=3)
    grid, pooled = encoder(images())
    assert encoder.output_channels == 4 * 4 * 4 == grid.shape[-1] == pooled.shape[-1]


# --- Weight sharing with the supernet --------------------------------------------------------------

@pytest.mark.parametrize("training", [False, True])
def test_supernet_at_one_hot_weights_equals_the_discrete_encoder_with_copied_weights(training):
    supernet = supernet_with_random_statistics()
    encoder = discrete_from_supernet(supernet, ALL_OPS_GENOTYPE)
    op_weights = genotype_op_weights(ALL_OPS_GENOTYPE, supernet.primitives)
    x = images()
    # Traced once each: two eager passes of the supernet would be slower than tracing.
    expected = tf.function(lambda x: supernet(x, training=training, op_weights=op_weights))(x)
    actual = tf.function(lambda x: encoder(x, training=training))(x)
    for a, b in zip(actual, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-4 * float(tf.reduce_max(tf.abs(b))))
    assert float(tf.reduce_max(tf.abs(expected[0]))) > 0.1  # not trivially zero
    # The copied network is smaller: only the chosen ops' weights came along.
    assert encoder.count_params() < supernet.count_params()


def test_discrete_from_supernet_derives_the_genotype_from_A_by_default():
    supernet = SupernetEncoder(**TINY)
    rng = np.random.default_rng(1)
    for a in supernet.arch_variables:
        a.assign(rng.normal(size=a.shape))
    encoder = discrete_from_supernet(supernet)
    alpha_normal, alpha_reduce = (a.numpy() for a in supernet.arch_variables)
    assert encoder.genotype == derive_genotype(alpha_normal, alpha_reduce, supernet.primitives)


def test_discrete_from_supernet_rejects_a_genotype_of_another_size():
    with pytest.raises(ValueError, match="normal cell has 4 nodes, the supernet 2"):
        discrete_from_supernet(SupernetEncoder(**TINY), DARTS_V2)


# --- Drop-path --------------------------------------------------------------------------------------

def test_drop_path_zeroes_whole_examples_and_rescales_the_rest():
    x = tf.ones([64, 2, 2, 3])
    y = drop_path(x, 0.5).numpy()
    per_example = y.reshape(64, -1)
    assert set(np.unique(per_example)) <= {0.0, 2.0}
    assert (per_example == per_example[:, :1]).all()  # one decision per example
    assert 10 < (per_example[:, 0] == 0).sum() < 54
    np.testing.assert_array_equal(drop_path(x, 0.0), x)


def test_drop_path_is_off_by_default_and_only_in_training():
    x = images()
    plain = DiscreteEncoder(DARTS_V2, channels=4, num_cells=3)
    assert plain.drop_path_prob is None
    np.testing.assert_array_equal(plain(x, training=True)[0], plain(x, training=True)[0])
    dropping = DiscreteEncoder(DARTS_V2, channels=4, num_cells=3, drop_path_prob=0.5)
    np.testing.assert_array_equal(dropping(x)[0], dropping(x)[0])  # inference: deterministic
    assert not np.array_equal(dropping(x, training=True)[0], dropping(x, training=True)[0])
    dropping.set_drop_path_prob(0.0)
    np.testing.assert_allclose(dropping(x, training=True)[0], dropping(x, training=True)[0], atol=1e-6)
    with pytest.raises(ValueError, match="built with drop_path_prob=0"):
        plain.set_drop_path_prob(0.1)


# --- Backbone ---------------------------------------------------------------------------------------

def test_a_backbone_replaces_the_stem():
    backbone = keras.layers.Conv2D(5, 3, strides=2, padding="same")
    encoder = DiscreteEncoder(DARTS_V2, channels=4, num_cells=3, backbone=backbone)
    grid, _ = encoder(images())
    assert tuple(grid.shape) == (2, 2, 2, 64)  # 16 → 8 by the backbone, then two reductions
    assert type(encoder.stem).__name__ == "BackboneStem"
    revived = DiscreteEncoder.from_config(encoder.get_config())
    assert isinstance(revived.backbone, keras.layers.Conv2D) and revived.backbone.filters == 5
