"""Fixed encoders by name: conv (student), gap (layout-blind baseline), darts, and Keras application
backbones (never downloaded) with freeze-then-unfreeze."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.encoders import (
    ENCODERS,
    ApplicationBackbone,
    BackboneEncoder,
    FreezeThenUnfreeze,
    FreezeThenUnfreezeCallback,
    get_encoder,
)
from capnas_tf.search_space.genotypes import DARTS_V1
from tests.search_space.layer_checks import check_layer

IMAGES = tf.random.stateless_uniform([2, 32, 32, 3], seed=[0, 1])


def test_registry_lists_the_encoders_and_rejects_unknown_names():
    assert {"conv", "gap", "blind", "darts", "mobilenet_v3_small", "resnet50"} <= set(ENCODERS)
    with pytest.raises(ValueError, match="unknown encoder name 'vit'.*'conv'"):
        get_encoder("vit")


@pytest.mark.parametrize("name, kwargs, shapes", [
    ("conv", {"filters": (8, 16)}, ((2, 8, 8, 16), (2, 16))),
    ("gap", {"channels": 12}, ((2, 1, 1, 12), (2, 12))),
    ("darts", {"genotype": "DARTS_V1", "channels": 4, "num_cells": 3}, ((2, 8, 8, 64), (2, 64))),
])
def test_small_encoders_follow_the_contract_and_round_trip(name, kwargs, shapes):
    encoder, _ = check_layer(lambda: get_encoder(name, **kwargs), (IMAGES,), expected_shapes=shapes)
    assert encoder.output_channels == shapes[1][1]


def test_blind_encoder_outputs_the_same_zeros_whatever_the_image_and_has_no_weights():
    encoder, (grid, pooled) = check_layer(lambda: get_encoder("blind", grid_shape=(3, 2, 5)), (IMAGES,),
                                          expected_shapes=((2, 3, 2, 5), (2, 5)))
    assert not encoder.weights and encoder.count_params() == 0 and encoder.output_channels == 5
    other_grid, other_pooled = encoder(tf.random.stateless_uniform([2, 32, 32, 3], seed=[7, 8]) * 9.0 - 4.0)
    for a, b in ((grid, other_grid), (pooled, other_pooled)):
        np.testing.assert_array_equal(a, np.zeros_like(a))
        np.testing.assert_array_equal(a, b)
    # the batch follows the images, whatever their size
    assert tuple(encoder(tf.ones([5, 8, 8, 3]))[0].shape) == (5, 3, 2, 5)
    with pytest.raises(ValueError, match="grid_shape must be three positive ints"):
        get_encoder("blind", grid_shape=(4, 4))


def test_conv_encoder_size_is_pinned():
    encoder = get_encoder("conv")
    encoder.build((None, 32, 32, 3))
    # 3·3·3·16 + 3·3·16·32 + 3·3·32·64 kernels, BN (γ, β, mean, var) on 16 + 32 + 64 channels.
    assert encoder.count_params() == 432 + 4608 + 18432 + 4 * 112 == 23_920


def test_darts_encoder_takes_a_genotype():
    assert get_encoder("darts", genotype=DARTS_V1, channels=4, num_cells=3).genotype == DARTS_V1


def test_gap_encoder_ignores_spatial_layout():
    encoder = get_encoder("gap", channels=8)
    grid, pooled = encoder(IMAGES)
    shuffled = tf.reshape(tf.random.experimental.stateless_shuffle(
        tf.reshape(tf.transpose(IMAGES, [1, 2, 0, 3]), [32 * 32, 2, 3]), seed=[3, 4]), [32, 32, 2, 3])
    _, pooled_shuffled = encoder(tf.transpose(shuffled, [2, 0, 1, 3]))
    np.testing.assert_allclose(pooled, pooled_shuffled, atol=1e-5)
    np.testing.assert_array_equal(grid[:, 0, 0, :], pooled)


def test_conv_encoder_sees_spatial_layout():
    encoder = get_encoder("conv", filters=(8,))
    _, pooled = encoder(IMAGES)
    _, flipped = encoder(IMAGES[:, ::-1])
    assert not np.allclose(pooled, flipped, atol=1e-4)


@pytest.fixture(scope="module")
def mobilenet():
    return get_encoder("mobilenet_v3_small", weights=None)


def test_application_backbone_with_random_weights(mobilenet):
    grid, pooled = mobilenet(IMAGES)
    assert tuple(grid.shape) == (2, 1, 1, 576) and tuple(pooled.shape) == (2, 576)
    revived = BackboneEncoder.from_config(mobilenet.get_config())
    assert revived.backbone.application == "MobileNetV3Small" and revived.backbone.weights_path is None


def test_application_weights_load_from_a_local_file(tmp_path, mobilenet):
    path = str(tmp_path / "mobilenet.weights.h5")
    mobilenet.backbone.model.save_weights(path)
    loaded = get_encoder("mobilenet_v3_small", weights=path)
    for a, b in zip(loaded.backbone.model.weights, mobilenet.backbone.model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_application_never_downloads():
    with pytest.raises(FileNotFoundError, match="weights file '/no/such.weights.h5' does not exist"):
        ApplicationBackbone("ResNet50", weights="/no/such.weights.h5")
    with pytest.raises(ValueError, match="would download"):
        ApplicationBackbone("MobileNetV3Small", weights="imagenet")
    with pytest.raises(ValueError, match="unknown application 'VGG16'"):
        ApplicationBackbone("VGG16")


def test_freeze_then_unfreeze_switches_trainability_at_the_given_step(mobilenet):
    schedule = FreezeThenUnfreeze(mobilenet.backbone, freeze_steps=3)
    all_weights = len(mobilenet.trainable_variables)
    assert schedule(0) is True and mobilenet.trainable_variables == []
    assert schedule(2) is False
    assert schedule(3) is True and len(mobilenet.trainable_variables) == all_weights
    assert schedule(10) is False


def test_freeze_then_unfreeze_callback_in_fit():
    backbone = keras.layers.Conv2D(4, 3, padding="same")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(1)(BackboneEncoder(backbone)(inputs)[1]))
    model.compile(keras.optimizers.SGD(0.1), "mse")
    callback = FreezeThenUnfreezeCallback(backbone, freeze_steps=2)
    callback.build_optimizer(model)
    kernel = backbone.kernel.numpy().copy()
    x, y = np.random.default_rng(0).random((8, 8, 8, 3), np.float32), np.ones((8, 1), np.float32)
    model.fit(x, y, batch_size=4, epochs=1, callbacks=[callback], verbose=0)  # steps 0, 1: frozen
    np.testing.assert_array_equal(backbone.kernel.numpy(), kernel)
    model.fit(x, y, batch_size=4, epochs=1, callbacks=[callback], verbose=0)  # steps 2, 3: trained
    assert backbone.trainable and not np.allclose(backbone.kernel.numpy(), kernel)
