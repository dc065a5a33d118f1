"""The candidate ops and the mixed op: shapes at both strides, DARTS' ordering, serialization, and
adding a user candidate."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search_space import ops
from capnas_tf.search_space.mixed_op import MixedOp
from capnas_tf.search_space.ops import OPS, PRIMITIVES, make_op, register_op
from tests.search_space.layer_checks import check_layer

C = 4


def images(side=8, seed=0):
    return tf.random.stateless_normal([2, side, side, C], seed=[seed, 0])


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", PRIMITIVES)
def test_every_primitive_keeps_channels_and_divides_resolution_by_stride(name, stride):
    check_layer(lambda: make_op(name, C, stride, affine=True), (images(),), expected_shapes=(2, 8 // stride, 8 // stride, C))


@pytest.mark.parametrize("name", PRIMITIVES)
def test_stride_two_rounds_odd_sides_up_like_same_padding(name):
    y = make_op(name, C, 2, affine=False)(images(side=7), training=True)
    assert tuple(y.shape) == (2, 4, 4, C)


def test_none_is_zero_at_the_strided_shape():
    y = make_op("none", C, 2)(images())
    assert tuple(y.shape) == (2, 4, 4, C)
    assert np.all(y.numpy() == 0.0)


def test_skip_connect_is_identity_at_stride_one_and_factorized_reduce_at_stride_two():
    x = images()
    identity = make_op("skip_connect", C, 1)
    np.testing.assert_array_equal(identity(x).numpy(), x.numpy())
    assert isinstance(make_op("skip_connect", C, 2), ops.FactorizedReduce)


@pytest.mark.parametrize("name", ["sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"])
def test_convolutions_start_with_relu(name):
    """ReLU → conv → BN: the op cannot tell x from relu(x)."""
    op = make_op(name, C, 1)
    x = images()
    np.testing.assert_allclose(op(x, training=False), op(tf.nn.relu(x), training=False), atol=1e-6)


@pytest.mark.parametrize("name, affine, params", [
    # depthwise 3·3·C + pointwise C·C + BN (γ, β, mean, var)·C, twice
    ("sep_conv_3x3", True, 2 * (9 * C + C * C + 4 * C)),
    ("sep_conv_3x3", False, 2 * (9 * C + C * C + 2 * C)),
    ("sep_conv_5x5", True, 2 * (25 * C + C * C + 4 * C)),
    ("dil_conv_3x3", True, 9 * C + C * C + 4 * C),
    ("dil_conv_5x5", False, 25 * C + C * C + 2 * C),
    ("max_pool_3x3", True, 0),
])
def test_parameter_counts_follow_darts_structure(name, affine, params):
    op = make_op(name, C, 1, affine=affine)
    op.build((None, 8, 8, C))
    assert op.count_params() == params


def test_affine_false_has_no_trainable_batchnorm_parameters():
    op = make_op("dil_conv_3x3", C, 1, affine=False)
    op.build((None, 8, 8, C))
    assert sorted(v.name for v in op.trainable_variables) == ["kernel", "kernel"]


def test_dilated_conv_reaches_five_pixels_away():
    """dil_conv_3x3 (dilation 2) sees a 5×5 window: a single impulse spreads exactly 2 pixels."""
    op = make_op("dil_conv_3x3", C, 1, affine=False)
    x = np.zeros([1, 9, 9, C], np.float32)
    x[0, 4, 4, :] = 1.0
    op.build(x.shape)
    op.depthwise.kernel.assign(tf.ones_like(op.depthwise.kernel))
    response = np.abs(op(tf.constant(x)).numpy()).sum(-1)[0] > 0
    rows = np.where(response.any(1))[0]
    assert set(rows) == {2, 4, 6}


def test_pool_with_batchnorm_round_trips():
    check_layer(lambda: ops.WithBatchNorm(ops.Pool(C, 2, pool_type="avg"), C), (images(),),
                expected_shapes=(2, 4, 4, C))


def test_relu_conv_bn_and_factorized_reduce_round_trip():
    check_layer(lambda: ops.ReLUConvBN(6, 1, True, kernel_size=1), (images(),), expected_shapes=(2, 8, 8, 6))
    check_layer(lambda: ops.FactorizedReduce(5, 2, False), (images(side=7),), expected_shapes=(2, 4, 4, 5))


def value_gradient_and_hvp(fn, x, v, variables=()):
    """fn(x), ∇_x L, ∇_w L and ∇_x ⟨∇_x L, v⟩ for L = Σ y sin y, y = fn(x)."""
    with tf.GradientTape() as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            y = fn(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        grad_x, *grad_w = inner.gradient(loss, [x, *variables])
        gv = tf.reduce_sum(grad_x * v)
    return [y, grad_x, *grad_w, outer.gradient(gv, x)]


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("side", [8, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_dilated_depthwise_is_keras_dilated_conv_to_second_order(stride, side, kernel_size):
    """The sub-image arithmetic of `dilated_depthwise` computes Keras' 'same' depthwise conv with dilation 2
    (odd sides take Keras' path at stride 1): values, gradients and a Hessian-vector product in float64."""
    x = tf.random.stateless_normal([2, side, side + 2, C], seed=[5, 0], dtype=tf.float64)
    v = tf.random.stateless_normal(x.shape, seed=[6, 0], dtype=tf.float64)
    kernel = tf.Variable(tf.random.stateless_normal([kernel_size, kernel_size, C, 1], seed=[7, 0], dtype=tf.float64))
    keras_conv = lambda x: keras.ops.depthwise_conv(x, kernel, strides=stride, padding="same", dilation_rate=2)  # noqa: E731
    ours = value_gradient_and_hvp(lambda x: ops.dilated_depthwise(x, kernel, stride, 2), x, v, [kernel])
    reference = value_gradient_and_hvp(keras_conv, x, v, [kernel])
    for got, want in zip(ours, reference):
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("side", [8, 7])
def test_factorized_reduce_is_two_stride_two_convs_on_x_and_x_shifted(side):
    """One 2×2 kernel computes the two paths: conv_1 on x[::2, ::2], conv_2 on x[1::2, 1::2] (odd sides
    padded with zeros), concatenated, then BN — values and gradients in float64."""
    layer = ops.FactorizedReduce(5, 2, False, dtype="float64")
    x = tf.random.stateless_normal([2, side, side, C], seed=[8, 0], dtype=tf.float64)
    v = tf.random.stateless_normal(x.shape, seed=[9, 0], dtype=tf.float64)
    layer.build(x.shape)

    def two_paths(x):
        x = tf.pad(tf.nn.relu(x), [[0, 0], [0, side % 2], [0, side % 2], [0, 0]])
        y = tf.concat([tf.nn.conv2d(x[:, ::2, ::2], layer.conv_1.kernel, 1, "VALID"),
                       tf.nn.conv2d(x[:, 1::2, 1::2], layer.conv_2.kernel, 1, "VALID")], axis=-1)
        return layer.bn(y, training=True)

    variables = [layer.conv_1.kernel, layer.conv_2.kernel]
    ours = value_gradient_and_hvp(lambda x: layer(x, training=True), x, v, variables)
    reference = value_gradient_and_hvp(two_paths, x, v, variables)
    for got, want in zip(ours, reference):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make_layer, side", [(lambda: ops.FactorizedReduce(5, 2, False), 7),
                                              (lambda: ops.FactorizedReduce(5, 2, False), 8),
                                              (lambda: ops.DilConv(C, 2, False), 8),
                                              (lambda: ops.DilConv(C, 1, False), 8)],
                         ids=["factorized_reduce_odd", "factorized_reduce", "dil_conv_stride_2", "dil_conv_stride_1"])
def test_strided_and_dilated_ops_are_twice_differentiable_under_xla(make_layer, side):
    # The exact hypergradient differentiates the layer's gradient, also under jit_compile. Under XLA,
    # tf.slice's gradient is XlaDynamicUpdateSlice, which has no gradient: these ops must not use tf.slice
    # (docs/performance.md, Profiles).
    layer = make_layer()
    x = tf.random.stateless_normal([2, side, side, C], seed=[3, 0])
    v = tf.random.stateless_normal([2, side, side, C], seed=[4, 0])
    layer.build(x.shape)

    def hessian_vector_product(x, v):  # ∇_x ⟨∇_x L, v⟩, L = Σ y sin y
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * tf.sin(y))
            gv = tf.reduce_sum(inner.gradient(loss, x) * v)
        return outer.gradient(gv, x)

    plain = tf.function(hessian_vector_product)(x, v)
    xla = tf.function(hessian_vector_product, jit_compile=True)(x, v)
    np.testing.assert_allclose(xla.numpy(), plain.numpy(), atol=1e-4 * float(tf.reduce_max(tf.abs(plain))))


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_round_trips(stride):
    weights = tf.nn.softmax(tf.random.stateless_normal([len(PRIMITIVES)], seed=[1, 2]))
    check_layer(lambda: MixedOp(C, stride), (images(), weights), expected_shapes=(2, 8 // stride, 8 // stride, C))


def test_mixed_op_is_the_weighted_sum_of_its_candidates():
    op = MixedOp(C, 1, primitives=("skip_connect", "max_pool_3x3", "sep_conv_3x3"))
    x = images()
    basis = [op(x, tf.one_hot(k, 3), training=False) for k in range(3)]
    mixed = op(x, tf.constant([0.2, 0.3, 0.5]), training=False)
    np.testing.assert_allclose(mixed, 0.2 * basis[0] + 0.3 * basis[1] + 0.5 * basis[2], atol=1e-5)
    np.testing.assert_allclose(basis[0], x, atol=0)  # one-hot on skip_connect is the identity


def test_mixed_op_puts_affine_free_batchnorm_after_pooling_only():
    op = MixedOp(C, 1)
    kinds = {name: type(c).__name__ for name, c in zip(PRIMITIVES, op.candidates)}
    assert kinds["max_pool_3x3"] == kinds["avg_pool_3x3"] == "WithBatchNorm"
    assert kinds["sep_conv_3x3"] == "SepConv" and kinds["none"] == "Zero"


def test_mixed_op_rejects_weights_of_the_wrong_rank():
    with pytest.raises(ValueError, match=r"weights must have shape \[K=8\]"):
        MixedOp(C, 1)(images(), tf.ones([2, 8]))


def test_unknown_primitive_error_lists_known_ops():
    with pytest.raises(ValueError, match="unknown op.*'conv_7x7'.*known ops.*sep_conv_3x3"):
        MixedOp(C, 1, primitives=("sep_conv_3x3", "conv_7x7"))


@pytest.fixture
def conv_3x3_registered():
    register_op("conv_3x3", lambda c, s, affine=True, **kw: ops.ReLUConvBN(c, s, affine, kernel_size=3, **kw))
    yield "conv_3x3"
    del OPS["conv_3x3"]


def test_a_registered_op_becomes_a_searchable_candidate(conv_3x3_registered):
    primitives = PRIMITIVES + (conv_3x3_registered,)
    op = MixedOp(C, 2, primitives=primitives)
    y = op(images(), tf.one_hot(len(PRIMITIVES), len(primitives)))
    assert tuple(y.shape) == (2, 4, 4, C) and np.abs(y.numpy()).sum() > 0
    assert isinstance(op.candidates[-1], ops.ReLUConvBN) and op.candidates[-1].kernel_size == 3
    revived = MixedOp.from_config(op.get_config())
    assert revived.primitives == primitives


def test_register_op_refuses_to_shadow_an_existing_name():
    with pytest.raises(ValueError, match="already taken"):
        register_op("sep_conv_3x3", lambda c, s, affine=True: ops.Identity(c))


def test_a_factory_without_layer_kwargs_still_works():
    register_op("plain_identity", lambda c, s, affine: ops.Identity(c, s))
    try:
        layer = ops.make_op("plain_identity", C, 1, dtype="float64")
        assert isinstance(layer, ops.Identity)
    finally:
        del OPS["plain_identity"]


def test_ops_follow_the_parent_dtype_policy():
    op = MixedOp(C, 1, dtype="float64")
    y = op(tf.cast(images(), tf.float64), tf.fill([len(PRIMITIVES)], 1.0 / len(PRIMITIVES)))
    assert y.dtype == tf.float64
    assert all(v.dtype == "float64" for v in op.weights)


def test_bad_stride_is_rejected_with_the_layer_name():
    with pytest.raises(ValueError, match="SepConv: stride must be 1 or 2; received 3"):
        ops.SepConv(C, 3)
    with pytest.raises(ValueError, match="Identity: stride must be 1"):
        ops.Identity(C, 2)


def _mixed_derivative_of_batchnorm(layer, jit_compile=False):
    """(analytic, central difference) of d/ds ⟨∇_u L(u), v⟩ at u = s·x, L(u) = Σ BN(u)·p, training mode,
    in the layer's dtype (the same x, p, v whatever the dtype: drawn in float64, then cast)."""
    dtype = layer.compute_dtype
    def draw(seed):
        return tf.cast(tf.random.stateless_normal([4, 3, 3, 2], seed=seed, dtype=tf.float64), dtype)

    x, p, v = draw([1, 2]), draw([4, 3]), 1.0 + draw([5, 3])  # v's mean shift couples to μ
    if not layer.built:
        layer.build(x.shape)

    def directional_grad(s):
        u = s * x
        with tf.GradientTape() as inner:
            inner.watch(u)
            loss = tf.reduce_sum(layer(u, training=True) * p)
        return tf.reduce_sum(inner.gradient(loss, u) * v)

    @tf.function(jit_compile=jit_compile, autograph=False)
    def mixed_derivative(s):
        with tf.GradientTape() as outer:
            outer.watch(s)
            g = directional_grad(s)
        return outer.gradient(g, s)

    s = tf.constant(1.3, dtype)
    h = 1e-6
    return float(mixed_derivative(s)), float((directional_grad(s + h) - directional_grad(s - h)) / (2 * h))


def _op_types(layer, x):
    graph = tf.function(lambda u: layer(u, training=True)).get_concrete_function(x).graph
    return {op.type for op in graph.get_operations()}


def test_batchnorm_second_derivatives_are_exact():
    analytic, numeric = _mixed_derivative_of_batchnorm(ops.batch_norm(True, "float64"))
    assert isinstance(ops.batch_norm(True, "float64"), ops.ExactBatchNormalization)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fused_float32_batchnorm_second_derivatives_are_the_exact_ones(affine, jit_compile):
    """float32 runs TensorFlow's fused kernel (float64 has none): its second derivative, TensorFlow's
    differentiated closed-form gradient, against the float64 one checked above, on the same inputs."""
    fused = ops.batch_norm(affine, "float32")
    assert "FusedBatchNormV3" in _op_types(fused, tf.zeros([4, 3, 3, 2]))
    assert "FusedBatchNormV3" not in _op_types(ops.batch_norm(affine, "float64"), tf.zeros([4, 3, 3, 2], tf.float64))
    analytic32, _ = _mixed_derivative_of_batchnorm(fused, jit_compile=jit_compile)
    analytic64, numeric64 = _mixed_derivative_of_batchnorm(ops.batch_norm(affine, "float64"))
    np.testing.assert_allclose(analytic64, numeric64, rtol=1e-6)
    np.testing.assert_allclose(analytic32, analytic64, rtol=1e-5)


def test_fused_batchnorm_computes_what_the_moments_path_computes_in_mixed_precision():
    x = images(seed=3)
    fused, moments = ops.batch_norm(True, "mixed_bfloat16"), ops.batch_norm(True, "mixed_bfloat16")
    moments.fused = False
    y_fused, y_moments = fused(tf.cast(x, tf.bfloat16), training=True), moments(tf.cast(x, tf.bfloat16), training=True)
    assert y_fused.dtype == tf.bfloat16 and fused.moving_variance.dtype == "float32"
    np.testing.assert_allclose(tf.cast(y_fused, tf.float32), tf.cast(y_moments, tf.float32), atol=1e-2)
    np.testing.assert_allclose(fused.moving_mean, moments.moving_mean, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, moments.moving_variance, atol=1e-6)


def test_keras_batchnorm_would_get_second_derivatives_wrong():
    """Why ExactBatchNormalization exists: tf.nn.moments' stop_gradient(μ) corrupts the Hessian."""
    keras_bn = keras.layers.BatchNormalization(epsilon=ops.BN_EPSILON, dtype="float64")
    analytic, numeric = _mixed_derivative_of_batchnorm(keras_bn)
    assert abs(analytic - numeric) > 1e-2 * abs(numeric)  # measured: 5 % off


def test_exact_batchnorm_computes_what_keras_batchnorm_computes():
    x = images()
    exact, plain = ops.batch_norm(True, "float32"), keras.layers.BatchNormalization(momentum=ops.BN_MOMENTUM,
                                                                                    epsilon=ops.BN_EPSILON)
    for training in (True, False):
        np.testing.assert_allclose(exact(x, training=training), plain(x, training=training), atol=1e-5)
    assert "FusedBatchNormV3" in _op_types(exact, x)  # float32: the fused kernel
    np.testing.assert_allclose(exact.moving_mean, plain.moving_mean, atol=1e-6)
    np.testing.assert_allclose(exact.moving_variance, plain.moving_variance, atol=1e-6)


def test_second_order_batch_norm_reaches_only_the_given_models_and_nests():
    """The BatchNorms of the models passed take the `_moments` path inside the block (and again after an
    inner block ends), any other BatchNorm keeps the fused kernel, and all are back to it afterwards."""
    inside, outside = ops.SepConv(C, 1), ops.ReLUConvBN(C, 1, kernel_size=3)
    x = images()
    inside(x), outside(x)
    bns = {"inside": [inside.bn_1, inside.bn_2], "outside": [outside.bn]}

    def fused():
        return {name: [bn._fused_applies(x) for bn in layers] for name, layers in bns.items()}

    assert fused() == {"inside": [True, True], "outside": [True]}
    with ops.second_order_batch_norm([inside]):
        with ops.second_order_batch_norm([inside]):
            assert fused() == {"inside": [False, False], "outside": [True]}
        assert fused() == {"inside": [False, False], "outside": [True]}
        with ops.second_order_batch_norm([outside], enabled=False):
            assert fused() == {"inside": [False, False], "outside": [True]}
    assert fused() == {"inside": [True, True], "outside": [True]}
