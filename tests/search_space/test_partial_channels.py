"""PC-DARTS partial channels: 1/K of an edge's channels through the candidates, the rest bypassing
them (max-pooled on stride-2 edges), then a channel shuffle with K groups. Each output channel is
checked against the channel of the input (or of the candidates' mixture) it must come from."""
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search_space.mixed_op import MixedOp, channel_shuffle
from capnas_tf.search_space.supernet import SupernetEncoder
from tests.search_space.layer_checks import check_layer
from tests.search_space.tiny_space import SMALL, TINY_GRID, images

PRIMS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


def test_channel_shuffle_interleaves_the_groups():
    x = tf.reshape(tf.range(6, dtype=tf.float32), [1, 1, 1, 6])  # groups [0 1 2] [3 4 5]
    np.testing.assert_array_equal(channel_shuffle(x, 2).numpy().ravel(), [0, 3, 1, 4, 2, 5])
    np.testing.assert_array_equal(channel_shuffle(x, 3).numpy().ravel(), [0, 2, 4, 1, 3, 5])


@pytest.mark.parametrize("stride", [1, 2])
def test_candidates_see_one_kth_of_the_channels_and_the_rest_bypass_them(stride):
    C, K = 8, 4
    op = MixedOp(C, stride, PRIMS, partial_channels=K)
    x = tf.random.stateless_normal([2, 6, 6, C], seed=[0, 1])
    w = tf.constant([0.1, 0.2, 0.3, 0.4])
    out = op(x, w, training=True).numpy()
    side = 6 // stride
    assert out.shape == (2, side, side, C)
    depthwise = [v for v in op.candidates[3].trainable_variables if "depthwise" in v.path]
    assert depthwise and all(v.shape[2] == C // K for v in depthwise)

    # Block 0 of the shuffle is the candidates' mixture on the first C/K channels ...
    x_ops = x[..., : C // K]
    mixture = sum(float(w[k]) * cand(x_ops, training=True) for k, cand in enumerate(op.candidates)).numpy()
    np.testing.assert_allclose(out[..., 0::K], mixture, rtol=1e-5, atol=1e-6)
    # ... and block g ≥ 1 is input channels g·C/K … (g+1)·C/K − 1, untouched (max-pooled at stride 2).
    bypass = x if stride == 1 else tf.nn.max_pool2d(x, 2, 2, "SAME")
    for g in range(1, K):
        np.testing.assert_array_equal(out[..., g::K], bypass.numpy()[..., g * C // K : (g + 1) * C // K])


def test_partial_channel_supernet_round_trips_and_keeps_its_shapes():
    model, _ = check_layer(lambda: SupernetEncoder(**SMALL, partial_channels=2), (images(),),
                           expected_shapes=(TINY_GRID, TINY_GRID[::3]))
    assert model.partial_channels == 2
    assert all(edge.partial_channels == 2 for cell in model.cells for edge in cell.edges)


def test_partial_channels_must_divide_the_supernet_channels():
    with pytest.raises(ValueError, match=r"--partial_channels.*--supernet_channels\) = 4; received 3"):
        SupernetEncoder(**dict(SMALL, channels=4), partial_channels=3)
