"""A float64 supernet captioner with the real layers, for the checks of the hypergradients' numerics: the
project's own cells (a stem and two reduction cells, BatchNorm in training mode, sep_conv's ReLU → convs → BN,
skip_connect's FactorizedReduce, max-pooling followed by its BN), a tiny LSTM decoder F and a toy student W.
`build_supernet64()` is served once per session by the `supernet64` fixture (tests/search/conftest.py)."""
import keras
import numpy as np
import tensorflow as tf

from capnas_tf.captioner import Captioner
from capnas_tf.decoders.losses import caption_loss
from capnas_tf.search import hypergradient as hg
from capnas_tf.search.captioning import SearchModels, supernet_logits
from capnas_tf.search.stateless import bind, values_of
from capnas_tf.search_space.supernet import SupernetEncoder
from tests.search.test_captioning import L, tiny_decoder, toy_batches
from tests.search.toy_models import ToyConvEncoder

# Stem and cells with BatchNorm (training mode), sep_conv's ReLU, max-pooling (a reduction cell too).
PRIMITIVES = ("max_pool_3x3", "sep_conv_3x3", "skip_connect")
ETA = hg.InnerLearningRates(0.5, 0.5, 0.5)


def build_supernet64():
    """(models, batches, A, E, F, W): a two-cell supernet E (both cells reductions), F, W, A and the batches,
    all float64."""
    keras.config.set_floatx("float64")
    keras.mixed_precision.set_global_policy("float64")
    try:
        keras.utils.set_random_seed(1)
        # A away from uniform, so that the op weights' derivatives differ between candidates.
        encoder = SupernetEncoder(channels=2, num_cells=2, num_nodes=1, stem_multiplier=1, primitives=PRIMITIVES,
                                  alpha_init_scale=0.5, seed=0)
        decoder, student = tiny_decoder("lstm"), Captioner(ToyConvEncoder(), tiny_decoder("lstm"))
        images = tf.zeros((1, 8, 8, 3), tf.float64)
        decoder(encoder(images), tf.ones((1, L - 1), tf.int32))
        student(images, tf.ones((1, L - 1), tf.int32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
        keras.config.set_floatx("float32")
    models = SearchModels(encoder, decoder, student, lambda A: (tf.nn.softmax(A[0]), tf.nn.softmax(A[1])))
    # A in float64 too (the supernet keeps its variables float32), so no float32 rounding enters ∇_A.
    A = [tf.cast(a, tf.float64) for a in values_of(models.A)]
    E, F, W = (values_of(v) for v in (models.E, models.F, models.W))
    return models, toy_batches(), A, E, F, W


def flat(values):
    return np.concatenate([np.asarray(v).ravel() for v in values])


def darts_losses(models, batches):
    """(L_train(w, A), L_val(w, A)) of DARTS on the supernet captioner, w = E + F."""
    def loss_on(batch):
        def loss(w, A):
            n = len(models.E)
            with bind((models.E, w[:n]), (models.F, w[n:])):
                logits = supernet_logits(models, batch["image"], batch["tokens"][:, :-1], A)
            return caption_loss(logits, batch["tokens"])
        return loss
    return loss_on(batches["train"]), loss_on(batches["val"])
