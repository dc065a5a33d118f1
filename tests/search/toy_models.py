"""A miniature of the supernet contract for tests of the search math: a conv stem, two mixed edges of
three candidate ops (normal) and one (reduce), architecture A as non-trainable variables, and
`call(images, training, op_weights) -> (grid, pooled)`. No BatchNorm, so float64 checks are exact."""
import keras
import tensorflow as tf


class ToyMixedEncoder(keras.Model):
    primitives = ("conv", "avg_pool", "skip")

    def __init__(self, channels=4, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.stem = keras.layers.Conv2D(channels, 3, padding="same", dtype=self.dtype_policy)
        self.convs = [keras.layers.Conv2D(channels, 3, padding="same", dtype=self.dtype_policy)
                      for _ in range(3)]

    def build(self, input_shape):
        self.stem.build(input_shape)
        shape = tuple(input_shape[:-1]) + (self.channels,)
        for c in self.convs:
            c.build(shape)
        init = keras.initializers.RandomNormal(stddev=0.5, seed=3)
        self.alpha_normal = self.add_weight(shape=(2, 3), initializer=init, trainable=False, name="alpha_normal")
        self.alpha_reduce = self.add_weight(shape=(1, 3), initializer=init, trainable=False, name="alpha_reduce")

    @property
    def arch_variables(self):
        return [self.alpha_normal, self.alpha_reduce]

    def _mixed(self, x, weights, conv):
        candidates = [tf.tanh(conv(x)), tf.nn.avg_pool2d(x, 3, 1, "SAME"), x]
        return tf.add_n([weights[k] * candidates[k] for k in range(3)])

    def call(self, images, training=False, op_weights=None):
        if op_weights is None:
            op_weights = (tf.nn.softmax(self.alpha_normal), tf.nn.softmax(self.alpha_reduce))
        w_normal, w_reduce = (tf.cast(w, self.compute_dtype) for w in op_weights)
        x = tf.tanh(self.stem(images - 0.5))
        x = self._mixed(x, w_normal[0], self.convs[0])
        x = self._mixed(x, w_normal[1], self.convs[1])
        x = self._mixed(x, w_reduce[0], self.convs[2])
        x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
        return x, tf.reduce_mean(x, axis=[1, 2])


class ToyConvEncoder(keras.Model):
    """The fixed student encoder in miniature."""

    def __init__(self, channels=4, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(channels, 3, strides=2, padding="same", dtype=self.dtype_policy)

    def call(self, images, training=False):
        x = tf.tanh(self.conv(images - 0.5))
        return x, tf.reduce_mean(x, axis=[1, 2])


def toy_search_models(vocab_size: int, max_caption_len: int, seed: int = 4):
    """E, F, W, A of the search in miniature (BN-free, dropout-free): ToyMixedEncoder + LSTM decoder
    as the supernet captioner, ToyConvEncoder + LSTM decoder as the student. Built on 16×16 images."""
    from capnas_tf.captioner import Captioner
    from capnas_tf.decoders.show_and_tell import ShowAndTellDecoder
    from capnas_tf.search.captioning import SearchModels

    keras.utils.set_random_seed(seed)
    L = max_caption_len
    encoder = ToyMixedEncoder()
    decoder = ShowAndTellDecoder(vocab_size, L - 1, embedding_dim=8, units=8, dropout=0.0)
    student = Captioner(ToyConvEncoder(), ShowAndTellDecoder(vocab_size, L - 1, embedding_dim=8, units=8,
                                                             dropout=0.0))
    images, tokens = tf.zeros([1, 16, 16, 3]), tf.ones([1, L - 1], tf.int32)
    decoder(encoder(images), tokens)
    student(images, tokens)
    relax = lambda A: (tf.nn.softmax(A[0]), tf.nn.softmax(A[1]))  # noqa: E731
    return SearchModels(encoder, decoder, student, relax)
