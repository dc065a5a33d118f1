"""The candidate operations of the DARTS search space, as Keras 3 layers (channels-last, NHWC).

Every candidate maps `[B, H, W, C]` to `[B, ⌈H/s⌉, ⌈W/s⌉, C]` for stride s ∈ {1, 2}, so the mixed op
can sum them. Convolutions follow DARTS' ReLU → conv → BatchNorm ordering; `sep_conv_*` applies the
ReLU–depthwise–pointwise–BN block twice (the first with the stride), `dil_conv_*` once with dilation 2.

The search space is data: `PRIMITIVES` (the default candidate list, in DARTS' order) and `OPS`
(name → factory). `register_op` adds a user candidate that the supernet can then search over.

Reference: Liu, Simonyan, Yang, "DARTS: Differentiable Architecture Search", ICLR 2019,
arXiv:1806.09055 (operations.py of the reference code).
"""
from __future__ import annotations

import contextlib
import inspect
import math
from typing import Callable

import keras
import tensorflow as tf

from capnas_tf.registry import Registry

# PyTorch's BatchNorm2d(momentum=0.1, eps=1e-5), in Keras' convention (moving = m·moving + (1−m)·batch).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
FUSED_MIN_EPSILON = 1.001e-5  # tf.compat.v1.nn.fused_batch_norm's floor for cuDNN

STRIDES = (1, 2)


def _check_stride(layer_name: str, stride) -> int:
    if stride not in STRIDES:
        raise ValueError(f"{layer_name}: stride must be 1 or 2; received {stride!r}.")
    return int(stride)


def _check_channels(layer_name: str, channels) -> int:
    if int(channels) < 1:
        raise ValueError(f"{layer_name}: channels must be >= 1; received {channels!r}.")
    return int(channels)


if not callable(getattr(keras.layers.BatchNormalization, "_moments", None)):  # pragma: no cover
    raise ImportError("capnas_tf.search_space.ops: keras.layers.BatchNormalization no longer has the "
                      "`_moments` method that ExactBatchNormalization overrides; this Keras version "
                      f"({keras.__version__}) needs a new exact-Hessian BatchNorm.")


def _cross_replica_context():
    """The replica context of a replica among several (inside `Strategy.run`), else None."""
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


@contextlib.contextmanager
def second_order_batch_norm(models, enabled: bool = True):
    """Every `ExactBatchNormalization` of `models` (Keras layers or models, searched through their
    sublayers) takes the `_moments` path instead of the fused kernel while the block runs: for the
    passes an outer tape differentiates a second time (the exact hypergradients). `enabled=False` makes
    it a no-op, for callers that decide per estimator.
    Both are exact to second order there, but the fused kernel's second derivative re-derives its
    closed-form gradient under a fresh tape, which made the default config's exact three-stage step
    about 1.3× slower, while first-order steps run about 1.3× faster with it (docs/performance.md).

    Read when a step is traced (a Python setting baked into the graph). A count on each layer rather
    than a thread-local, because tf.distribute traces each replica in a thread of its own: a replica
    outside such a pass may then take the `_moments` path too, which is only slower, never wrong."""
    layers = [layer for model in models for layer in model._flatten_layers()
              if isinstance(layer, ExactBatchNormalization)] if enabled else []
    for layer in layers:
        layer.second_order_passes += 1
    try:
        yield
    finally:
        for layer in layers:
            layer.second_order_passes -= 1


@keras.saving.register_keras_serializable(package="capnas_tf")
class ExactBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose batch statistics are differentiable to any order.

    In training mode Keras takes the batch mean μ and variance σ² from `tf.nn.moments`, which
    computes σ² = mean((x − stop_gradient(μ))²). The first derivative is right (∂σ²/∂μ = 0 at the
    mean) but the Hessian loses its coupling term,

        ∂²σ²/∂x_i∂x_j = 2(δ_ij − 1/n)/n   (true)      2δ_ij/n   (tf.nn.moments),

    so a second derivative through a normalised activation — the hypergradient of A, which
    differentiates through a gradient step of the supernet — is silently wrong (measured: a mixed
    derivative of an affine-free ReLU-conv-BN off by orders of magnitude against float64 finite
    differences). This layer computes the same statistics without `stop_gradient`. Same arguments,
    weights and moving-statistics updates as the Keras layer; masks and `synchronized` are not
    supported.

    In training mode on float32 (and mixed-precision) NHWC inputs the layer runs TensorFlow's fused
    kernel, `FusedBatchNormV3`: one op forward and one backward instead of ~20 elementwise ops and
    reductions (BatchNorm was a quarter of a search step's op time). Its second derivative is
    TensorFlow's own, which differentiates the closed-form gradient
        ∂L/∂x = γ/√(σ²+ε) · (g − mean(g) − x̂·mean(g·x̂)),   x̂ = (x − μ)/√(σ²+ε),   g = ∂L/∂y,
    and needs only first derivatives of σ², where `stop_gradient(μ)` does no harm (Σ(x − μ) = 0): exact
    to second order — all the hypergradient takes — but not to third. float64 (the gradient checks) has
    no fused kernel and takes `_moments` below, exact to any order, as does every pass traced inside
    `second_order_batch_norm()`, where it is faster.

    Under tf.distribute with several replicas (MirroredStrategy, MultiWorkerMirroredStrategy), the
    batch statistics are those of the global batch: each replica's sums are all-reduced (two passes, as
    on one device), so a step on a global batch split over replicas equals the step on one device, and
    its derivatives of any order stay exact (the all-reduce's gradient is an all-reduce). The fused
    kernel, which sees one replica's shard only, is not used there.
    """

    fused = True  # an instance may set False to take the `_moments` path (tests compare the two)
    second_order_passes = 0  # > 0 while a pass that a tape differentiates twice is traced (`second_order_batch_norm`)

    def call(self, inputs, training=None, mask=None):
        if training and self.trainable and mask is None and self._fused_applies(inputs):
            return self._fused_training_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def _fused_applies(self, inputs) -> bool:
        return (self.fused and not self.second_order_passes and _cross_replica_context() is None
                and not self.renorm and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and inputs.dtype in (tf.float32, tf.float16, tf.bfloat16))

    def _fused_training_call(self, inputs):
        x = tf.cast(inputs, tf.float32)  # as the Keras layer: statistics in float32
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
        empty = tf.constant([], tf.float32)
        # cuDNN refuses ε below 1e-5, and DARTS' 1e-5 rounds to just below it in float32: the floor that
        # TensorFlow's own wrapper applies (a 0.1 % larger ε, against variances of order 1).
        epsilon = max(self.epsilon, FUSED_MIN_EPSILON)
        y, mean, unbiased_variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        # The kernel reports the variance with Bessel's correction; Keras' moving variance averages the
        # biased one (the one it normalises with).
        n = (float(math.prod(x.shape[:3])) if x.shape[:3].is_fully_defined()  # static: no ops in the graph
             else tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32))
        variance = unbiased_variance * (n - 1.0) / n
        m = self.momentum
        self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * m + mean * (1.0 - m))
        self.moving_variance.assign(tf.cast(self.moving_variance, tf.float32) * m + variance * (1.0 - m))
        return tf.cast(y, self.compute_dtype)

    def _moments(self, inputs, mask):
        if mask is not None or self.synchronized:
            raise ValueError("ExactBatchNormalization: masks and synchronized=True are not supported.")
        ctx = _cross_replica_context()
        if ctx is None:
            mean = tf.reduce_mean(inputs, axis=self._reduction_axes, keepdims=True)
            variance = tf.reduce_mean(tf.square(inputs - mean), axis=self._reduction_axes, keepdims=True)
        else:  # the global batch's statistics: Σx and the count, then Σ(x − μ)², over all replicas
            axes = self._reduction_axes
            count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)
            total, count = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                          [tf.reduce_sum(inputs, axis=axes, keepdims=True), count])
            mean = total / count
            squares = ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                     tf.reduce_sum(tf.square(inputs - mean), axis=axes, keepdims=True))
            variance = squares / count
        return tf.squeeze(mean, self._reduction_axes), tf.squeeze(variance, self._reduction_axes)


def batch_norm(affine: bool, dtype, name: str | None = None) -> keras.layers.BatchNormalization:
    """BatchNorm as DARTS uses it, with exact second derivatives; `affine=False` drops γ and β
    (the supernet's setting)."""
    return ExactBatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, center=affine, scale=affine, dtype=dtype, name=name
    )


def _conv(filters: int, kernel_size: int, stride: int, dtype, dilation: int = 1) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="same",
                               dilation_rate=dilation, use_bias=False, dtype=dtype)


def _depthwise(kernel_size: int, stride: int, dtype) -> keras.layers.DepthwiseConv2D:
    return keras.layers.DepthwiseConv2D(kernel_size, strides=stride, padding="same", use_bias=False, dtype=dtype)


def _same_padding(size, stride: int, extent: int):
    """(before, after) of TF's 'same' padding of a side of `size` for a window of `extent` pixels."""
    out = -(-size // stride)
    total = tf.maximum((out - 1) * stride + extent - size, 0) if isinstance(size, tf.Tensor) \
        else max((out - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def _side(x, axis: int):
    return x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]


def _subsample(x, stride: int):
    """x[:, ::s, ::s, :] as a 1×1 average pooling: the same values, and a gradient several times cheaper
    on the CPU than StridedSliceGrad's, also twice differentiable under XLA."""
    return tf.nn.avg_pool2d(x, ksize=1, strides=stride, padding="VALID")


def _to_phases(x, d: int):
    """[B, H, W, C] → [d²·B, H/d, W/d, C]: the d × d interleaved sub-images, phase (p, q) = x[:, p::d, q::d]."""
    b, h, w, c = (_side(x, i) for i in range(4))
    x = tf.reshape(x, [b, h // d, d, w // d, d, c])
    return tf.reshape(tf.transpose(x, [2, 4, 0, 1, 3, 5]), [d * d * b, h // d, w // d, c])


def _from_phases(y, d: int, batch):
    """The inverse of `_to_phases`."""
    h, w, c = (_side(y, i) for i in range(1, 4))
    y = tf.reshape(y, [d, d, batch, h, w, c])
    return tf.reshape(tf.transpose(y, [2, 3, 0, 4, 1, 5]), [batch, h * d, w * d, c])


def dilated_depthwise(x, kernel, stride: int, dilation: int):
    """Keras' `depthwise_conv(x, kernel, stride, "same", dilation)`, by the same arithmetic on sub-images.

    A dilation-d convolution reads only pixels d apart, so it is a plain convolution of each of the d × d
    interleaved sub-images of the padded input; at stride s = d it reads only the first of them. TF runs a
    dilated depthwise conv through SpaceToBatchND / BatchToSpaceND, and Keras runs stride > 1 with
    dilation > 1 at stride 1 before a strided slice: both several times slower on the CPU than this. The
    values are equal to the last bit; the kernel's gradient at stride 2 sums in another order (float32
    rounding). Shapes it does not cover take Keras' path."""
    height, width = _side(x, 1), _side(x, 2)
    static = isinstance(height, int) and isinstance(width, int)
    strided = stride > 1 and dilation == stride
    on_phases = stride == 1 and dilation > 1 and static and height % dilation == 0 and width % dilation == 0
    if not (strided or on_phases):
        return keras.ops.depthwise_conv(x, kernel, strides=stride, padding="same", dilation_rate=dilation)
    extent = dilation * (kernel.shape[0] - 1) + 1
    pads = [_same_padding(height, stride, extent), _same_padding(width, stride, extent)]
    padded = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
    if strided:
        return tf.nn.depthwise_conv2d(_subsample(padded, stride), kernel, [1, 1, 1, 1], "VALID")
    y = tf.nn.depthwise_conv2d(_to_phases(padded, dilation), kernel, [1, 1, 1, 1], "VALID")
    return _from_phases(y, dilation, _side(x, 0))


class _Op(keras.layers.Layer):
    """Base of the candidates: stores `channels`, `stride`, `affine` and serializes them."""

    def __init__(self, channels: int, stride: int = 1, affine: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.channels = _check_channels(type(self).__name__, channels)
        self.stride = _check_stride(type(self).__name__, stride)
        self.affine = bool(affine)

    def compute_output_shape(self, input_shape):
        batch, height, width = input_shape[:3]
        ceil = lambda n: None if n is None else -(-n // self.stride)  # noqa: E731
        return (batch, ceil(height), ceil(width), self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, stride=self.stride, affine=self.affine)
        return config


@keras.saving.register_keras_serializable(package="capnas_tf")
class Zero(_Op):
    """`none`: the zero map, at the strided shape `[B, ⌈H/s⌉, ⌈W/s⌉, C]`.

    Example:

        Zero(channels=4, stride=2)(tf.ones([2, 8, 8, 4])).shape  # (2, 4, 4, 4), all zeros
    """

    def call(self, x):
        return tf.zeros_like(x[:, :: self.stride, :: self.stride, :])


@keras.saving.register_keras_serializable(package="capnas_tf")
class Identity(_Op):
    """`skip_connect` at stride 1: y = x."""

    def __init__(self, channels: int, stride: int = 1, affine: bool = True, **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        if self.stride != 1:
            raise ValueError("Identity: stride must be 1 (skip_connect uses FactorizedReduce at "
                             f"stride 2); received {stride!r}.")

    def call(self, x):
        return x


@keras.saving.register_keras_serializable(package="capnas_tf")
class FactorizedReduce(_Op):
    """Halves the resolution without losing every other pixel: two stride-2 1×1 convs, one on x and
    one on x shifted by one pixel, concatenated along channels, then BN.

    `skip_connect` at stride 2, and the preprocessing of a cell that follows a reduction cell. Maps
    any `[B, H, W, C_in]` to `[B, ⌈H/2⌉, ⌈W/2⌉, channels]`.

    Args:
      channels: output channels (split ⌊c/2⌋ + ⌈c/2⌉ between the two paths).
      stride: must be 2 (accepted for the common factory signature).
      affine: learn BN's γ, β.
    """

    def __init__(self, channels: int, stride: int = 2, affine: bool = True, **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        if self.stride != 2:
            raise ValueError(f"FactorizedReduce: stride must be 2; received {stride!r}.")
        half = self.channels // 2
        self.conv_1 = keras.layers.Conv2D(half, 1, strides=2, use_bias=False, dtype=self.dtype_policy)
        self.conv_2 = keras.layers.Conv2D(self.channels - half, 1, strides=2, use_bias=False,
                                          dtype=self.dtype_policy)
        self.bn = batch_norm(self.affine, self.dtype_policy)

    def build(self, input_shape):
        self.conv_1.build(input_shape)
        self.conv_2.build(input_shape)
        self.bn.build(tuple(input_shape[:-1]) + (self.channels,))

    def call(self, x, training=None):
        x = tf.nn.relu(x)
        # Odd sides get a zero row/column, so that both paths keep ⌈H/2⌉ (the shifted one reads it).
        x = tf.pad(x, [[0, 0], [0, _side(x, 1) % 2], [0, _side(x, 2) % 2], [0, 0]])
        return self.bn(tf.nn.conv2d(x, self._paths_kernel(x.dtype), 2, "VALID"), training=training)

    def _paths_kernel(self, dtype):
        """Both paths as one 2×2 stride-2 kernel: conv_1's weights at tap (0, 0) into the first ⌊c/2⌋
        outputs, conv_2's at tap (1, 1) (the pixel shifted by one) into the others, zeros elsewhere.
        The same sums as two 1×1 convs on x[:, ::2, ::2] and x[:, 1::2, 1::2] concatenated, without the
        strided slices whose gradients cost more on the CPU than the convolutions."""
        k1, k2 = (tf.cast(conv.kernel, dtype)[0, 0] for conv in (self.conv_1, self.conv_2))  # (C_in, ·)
        first = tf.concat([k1, tf.zeros_like(k2)], axis=-1)  # (C_in, c)
        second = tf.concat([tf.zeros_like(k1), k2], axis=-1)
        zero = tf.zeros_like(first)
        return tf.stack([tf.stack([first, zero]), tf.stack([zero, second])])  # (2, 2, C_in, c)


@keras.saving.register_keras_serializable(package="capnas_tf")
class ReLUConvBN(_Op):
    """ReLU → k×k conv (stride s, 'same') → BN; maps `[B, H, W, C_in]` to `[B, ⌈H/s⌉, ⌈W/s⌉, channels]`.

    Args:
      channels: output channels.
      stride: 1 or 2.
      affine: learn BN's γ, β.
      kernel_size: k (1 for the cells' preprocessing).
    """

    def __init__(self, channels: int, stride: int = 1, affine: bool = True, kernel_size: int = 1,
                 **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        self.kernel_size = int(kernel_size)
        self.conv = _conv(self.channels, self.kernel_size, self.stride, self.dtype_policy)
        self.bn = batch_norm(self.affine, self.dtype_policy)

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(tuple(self.conv.compute_output_shape(input_shape)))

    def call(self, x, training=None):
        return self.bn(self.conv(tf.nn.relu(x)), training=training)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="capnas_tf")
class DilConv(_Op):
    """ReLU → depthwise k×k (stride s, dilation d) → pointwise 1×1 → BN.

    Args:
      channels: C (input and output).
      stride: 1 or 2.
      affine: learn BN's γ, β.
      kernel_size: k.
      dilation: d (2 in DARTS' `dil_conv_*`).
    """

    def __init__(self, channels: int, stride: int = 1, affine: bool = True, kernel_size: int = 3,
                 dilation: int = 2, **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        self.kernel_size = int(kernel_size)
        self.dilation = int(dilation)
        # Holds the k×k kernel; the stride and dilation are applied by `dilated_depthwise`.
        self.depthwise = keras.layers.DepthwiseConv2D(self.kernel_size, padding="same", use_bias=False,
                                                      dtype=self.dtype_policy)
        self.pointwise = _conv(self.channels, 1, 1, self.dtype_policy)
        self.bn = batch_norm(self.affine, self.dtype_policy)

    def build(self, input_shape):
        self.depthwise.build(input_shape)
        shape = tuple(self.compute_output_shape(input_shape))[:-1] + (input_shape[-1],)
        self.pointwise.build(shape)
        self.bn.build(shape[:-1] + (self.channels,))

    def call(self, x, training=None):
        kernel = tf.cast(self.depthwise.kernel, x.dtype)
        x = dilated_depthwise(tf.nn.relu(x), kernel, self.stride, self.dilation)
        return self.bn(self.pointwise(x), training=training)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size, "dilation": self.dilation}


@keras.saving.register_keras_serializable(package="capnas_tf")
class SepConv(_Op):
    """Two ReLU → depthwise k×k → pointwise 1×1 → BN blocks; only the first has the stride.

    Args:
      channels: C (input and output).
      stride: 1 or 2.
      affine: learn BN's γ, β.
      kernel_size: k.
    """

    def __init__(self, channels: int, stride: int = 1, affine: bool = True, kernel_size: int = 3,
                 **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        self.kernel_size = int(kernel_size)
        policy = self.dtype_policy
        self.depthwise_1 = _depthwise(self.kernel_size, self.stride, policy)
        self.pointwise_1 = _conv(self.channels, 1, 1, policy)
        self.bn_1 = batch_norm(self.affine, policy)
        self.depthwise_2 = _depthwise(self.kernel_size, 1, policy)
        self.pointwise_2 = _conv(self.channels, 1, 1, policy)
        self.bn_2 = batch_norm(self.affine, policy)

    def build(self, input_shape):
        self.depthwise_1.build(input_shape)
        shape = tuple(self.depthwise_1.compute_output_shape(input_shape))
        self.pointwise_1.build(shape)
        shape = shape[:-1] + (self.channels,)
        for layer in (self.bn_1, self.depthwise_2, self.pointwise_2, self.bn_2):
            layer.build(shape)

    def call(self, x, training=None):
        x = self.bn_1(self.pointwise_1(self.depthwise_1(tf.nn.relu(x))), training=training)
        return self.bn_2(self.pointwise_2(self.depthwise_2(tf.nn.relu(x))), training=training)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="capnas_tf")
class Pool(_Op):
    """3×3 max or average pooling, 'same' padding; the average excludes the padding (as
    `count_include_pad=False` in DARTS). No weights.

    Args:
      channels: C (unchanged; kept for the common factory signature).
      stride: 1 or 2.
      affine: unused (no BN here; the cells add BN after pooling: `make_candidate`).
      pool_type: "max" or "avg".
    """

    def __init__(self, channels: int, stride: int = 1, affine: bool = True, pool_type: str = "max",
                 **kwargs):
        super().__init__(channels, stride, affine, **kwargs)
        if pool_type not in ("max", "avg"):
            raise ValueError(f"Pool: pool_type must be 'max' or 'avg'; received {pool_type!r}.")
        self.pool_type = pool_type

    def call(self, x):
        pool = tf.nn.max_pool2d if self.pool_type == "max" else tf.nn.avg_pool2d
        return pool(x, ksize=3, strides=self.stride, padding="SAME")

    def get_config(self):
        return {**super().get_config(), "pool_type": self.pool_type}


@keras.saving.register_keras_serializable(package="capnas_tf")
class WithBatchNorm(keras.layers.Layer):
    """`op` followed by BN over its `channels` outputs.

    DARTS' search cell puts an affine-free BN after each pooling candidate, so that the weight-free
    pooling outputs are on the same scale as the convolutions' before they are mixed. The retrained
    cells keep it (with γ, β when their other BNs have them), so that the op retrained is the op searched.

    Args:
      op: the wrapped layer.
      channels: its output channels.
      affine: learn BN's γ, β.
    """

    def __init__(self, op: keras.layers.Layer, channels: int, affine: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(op, dict):
            op = keras.saving.deserialize_keras_object(op)
        self.op = op
        self.channels = _check_channels("WithBatchNorm", channels)
        self.affine = bool(affine)
        self.bn = batch_norm(self.affine, self.dtype_policy)

    def build(self, input_shape):
        self.op.build(input_shape)
        self.bn.build(tuple(self.op.compute_output_shape(input_shape)))

    def call(self, x, training=None):
        return self.bn(self.op(x, training=training), training=training)

    def compute_output_shape(self, input_shape):
        return self.op.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(op=keras.saving.serialize_keras_object(self.op), channels=self.channels,
                      affine=self.affine)
        return config


def _skip_connect(channels, stride, affine=True, **kwargs):
    if stride == 1:
        return Identity(channels, 1, affine, **kwargs)
    return FactorizedReduce(channels, stride, affine, **kwargs)


# name → factory(channels, stride, affine, **layer_kwargs) -> keras.Layer
OPS = Registry("op", register_name="register_op", lookup_name="make_op", entries={
    "none": lambda c, s, affine=True, **kw: Zero(c, s, affine, **kw),
    "max_pool_3x3": lambda c, s, affine=True, **kw: Pool(c, s, affine, pool_type="max", **kw),
    "avg_pool_3x3": lambda c, s, affine=True, **kw: Pool(c, s, affine, pool_type="avg", **kw),
    "skip_connect": _skip_connect,
    "sep_conv_3x3": lambda c, s, affine=True, **kw: SepConv(c, s, affine, kernel_size=3, **kw),
    "sep_conv_5x5": lambda c, s, affine=True, **kw: SepConv(c, s, affine, kernel_size=5, **kw),
    "dil_conv_3x3": lambda c, s, affine=True, **kw: DilConv(c, s, affine, kernel_size=3, dilation=2, **kw),
    "dil_conv_5x5": lambda c, s, affine=True, **kw: DilConv(c, s, affine, kernel_size=5, dilation=2, **kw),
})

# DARTS' candidate list, in the reference code's order (the column order of A).
PRIMITIVES: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


def register_op(name: str, factory: Callable[..., keras.layers.Layer], *, overwrite: bool = False) -> None:
    """Makes `factory` a candidate named `name`, usable in `primitives=` and in genotypes.

    Args:
      name: the candidate's name (a JSON string in genotypes).
      factory: `factory(channels, stride, affine, **layer_kwargs) -> keras.Layer`, mapping
        `[B, H, W, channels]` to `[B, ⌈H/stride⌉, ⌈W/stride⌉, channels]`. `layer_kwargs` carries
        `dtype` (the parent's dtype policy); a factory without `**kwargs` is called without it. The
        layer should be registered with `keras.saving.register_keras_serializable` so that models
        using it round-trip through `get_config`.
      overwrite: replace an existing candidate of that name (otherwise an error).

    Example:

        register_op("conv_3x3", lambda c, s, affine=True, **kw: ReLUConvBN(c, s, affine, kernel_size=3, **kw))
        SupernetEncoder(primitives=PRIMITIVES + ("conv_3x3",))
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_op: name must be a non-empty string; received {name!r}.")
    if not callable(factory):
        raise TypeError(f"register_op: factory for {name!r} must be callable; received {factory!r}.")
    if overwrite:
        OPS.pop(name, None)
    OPS.register(name, factory)


def check_primitives(primitives, where: str) -> tuple[str, ...]:
    """`primitives` as a tuple of known, distinct op names; a clear error otherwise."""
    if isinstance(primitives, str):
        raise TypeError(f"{where}: primitives must be a sequence of op names, not the string {primitives!r}.")
    primitives = tuple(primitives)
    unknown = [p for p in primitives if p not in OPS]
    if unknown:
        raise ValueError(f"{where}: unknown op(s) {unknown} in primitives; known ops: {sorted(OPS)}.")
    if len(set(primitives)) != len(primitives) or not primitives:
        raise ValueError(f"{where}: primitives must be a non-empty list of distinct names; "
                         f"received {list(primitives)}.")
    return primitives


def _accepts_layer_kwargs(factory: Callable) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD or p.name == "dtype" for p in params)


def make_op(name: str, channels: int, stride: int, affine: bool = True, **layer_kwargs) -> keras.layers.Layer:
    """Builds the candidate `name` (see `OPS`); `layer_kwargs` (e.g. `dtype`) are passed on when
    the factory accepts them."""
    factory = OPS.lookup(name, f"make_op: unknown op {name!r}; known ops: {sorted(OPS)}.")
    if layer_kwargs and _accepts_layer_kwargs(factory):
        return factory(channels, stride, affine, **layer_kwargs)
    return factory(channels, stride, affine)


def make_candidate(name: str, channels: int, stride: int, affine: bool, *, pool_batchnorm: bool,
                   pool_affine: bool = False, **layer_kwargs) -> keras.layers.Layer:
    """The op as a cell uses it: when `pool_batchnorm`, a pooling op is followed by BN, with γ, β if
    `pool_affine` (the supernet's is DARTS' affine-free one; a retrained cell's follows its `affine`)."""
    op = make_op(name, channels, stride, affine, **layer_kwargs)
    if pool_batchnorm and "pool" in name:
        op = WithBatchNorm(op, channels, affine=pool_affine, **layer_kwargs)
    return op
