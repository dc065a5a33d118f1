"""The supernet E with its architecture A: sizes, A's separation from the weights, and
differentiability where the search needs it (stateless_call, nested tapes, XLA, MirroredStrategy,
mixed precision)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.search_space.cells import SearchCell, reduction_indices
from capnas_tf.search_space.relaxations import relax_architecture
from capnas_tf.search_space.supernet import SupernetEncoder
from tests.search_space.layer_checks import check_layer
from tests.search_space.tiny_space import ONE_NODE, SMALL, TINY, TINY_GRID, images


def built(dtype=None, **config):
    model = SupernetEncoder(**config, dtype=dtype)
    model.build((None, 16, 16, 3))
    return model


def random_op_weights(model, seed=0, dtype=tf.float32):
    shape = [model.num_edges, len(model.primitives)]
    return tuple(tf.nn.softmax(tf.random.stateless_normal(shape, seed=[seed, i], dtype=dtype)) for i in range(2))


def test_default_supernet_size_is_pinned():
    model = SupernetEncoder()
    model.build((None, 32, 32, 3))
    assert model.count_params() == 417_672  # incl. BN moving statistics and the 2·14·8 entries of A
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 392_920
    assert (model.num_edges, len(model.primitives), model.output_channels) == (14, 8, 128)
    assert [c.reduction for c in model.cells] == [False, True, False, True, False]


def test_reductions_sit_at_one_and_two_thirds_of_the_depth():
    assert reduction_indices(8) == (2, 5)  # DARTS' 8-cell search network
    assert reduction_indices(20) == (6, 13)
    assert reduction_indices(5) == (1, 3)


def test_search_cell_has_fourteen_edges_for_four_nodes():
    cell = SearchCell(num_nodes=4, channels=4)
    assert len(cell.edges) == 14
    s = tf.random.normal([2, 8, 8, 6])
    out = cell(s, s, tf.fill([14, 8], 1 / 8), training=False)
    assert tuple(out.shape) == (2, 8, 8, 16)  # the 4 nodes concatenated


def test_reduction_cell_halves_resolution_after_a_reduction():
    cell = SearchCell(num_nodes=2, channels=4, reduction=True, reduction_prev=True)
    out = cell(tf.random.normal([2, 16, 16, 6]), tf.random.normal([2, 8, 8, 6]), tf.fill([5, 8], 1 / 8))
    assert tuple(out.shape) == (2, 4, 4, 8)


def test_small_supernet_round_trips():
    model, _ = check_layer(lambda: SupernetEncoder(**SMALL), (images(),),
                           kwargs={"op_weights": random_op_weights(SupernetEncoder(**SMALL))},
                           expected_shapes=(TINY_GRID, TINY_GRID[::3]))
    assert model.output_channels == TINY_GRID[-1]


@pytest.fixture(scope="module")
def tiny():
    """A built supernet with every DARTS candidate, shared by the tests that only read it."""
    return built(**TINY)


def test_pooled_is_the_spatial_mean_of_grid(tiny):
    grid, pooled = tiny(images())
    np.testing.assert_allclose(pooled, tf.reduce_mean(grid, axis=[1, 2]), atol=1e-6)


def test_architecture_is_apart_from_the_weights(tiny):
    model = tiny
    A = model.arch_variables
    assert [tuple(a.shape) for a in A] == [(5, 8), (5, 8)]
    assert all(a.dtype == "float32" and not a.trainable for a in A)
    assert not any(a is v for a in A for v in model.trainable_variables)
    assert model.weight_variables == model.trainable_variables
    assert all(0 < np.abs(a.numpy()).max() < 1e-2 for a in A)  # 1e-3 · N(0, 1)


def test_a_weight_optimizer_step_leaves_A_untouched(tiny):
    model = tiny
    before = [a.numpy().copy() for a in model.arch_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(images(), training=True)[1] ** 2)
    grads = tape.gradient(loss, model.weight_variables)
    keras.optimizers.SGD(1.0).apply_gradients(zip(grads, model.weight_variables))
    for a, b in zip(model.arch_variables, before):
        np.testing.assert_array_equal(a.numpy(), b)


def test_alpha_initialisation_is_seeded():
    same = [SupernetEncoder(**TINY, seed=5).arch_variables[0].numpy() for _ in range(2)]
    np.testing.assert_array_equal(*same)
    other = SupernetEncoder(**TINY, seed=6).arch_variables[0].numpy()
    assert not np.array_equal(same[0], other)


def test_default_op_weights_are_softmax_of_A(tiny):
    initial = [a.numpy() for a in tiny.arch_variables]
    try:
        for a in tiny.arch_variables:
            a.assign(tf.random.normal(a.shape))
        softmax_A = tuple(tf.nn.softmax(a) for a in tiny.arch_variables)
        np.testing.assert_allclose(tiny(images())[0], tiny(images(), op_weights=softmax_A)[0], atol=1e-6)
    finally:
        for a, value in zip(tiny.arch_variables, initial):
            a.assign(value)


def test_op_weights_of_the_wrong_shape_are_rejected(tiny):
    model = tiny
    with pytest.raises(ValueError, match=r"w_reduce must have shape \[E, K\] = \[5, 8\]; received \[14, 8\]"):
        model(images(), op_weights=(tf.ones([5, 8]), tf.ones([14, 8])))


# --- Differentiability ----------------------------------------------------------------------------

def _loss_fn(model, x, probe):
    """L(trainable, w_normal, w_reduce) through stateless_call in training mode."""

    def loss(trainable, w_normal, w_reduce):
        (grid, pooled), _ = model.stateless_call(trainable, [v.value for v in model.non_trainable_variables],
                                                 x, training=True, op_weights=(w_normal, w_reduce))
        return tf.reduce_sum(grid * probe) + tf.reduce_sum(pooled ** 2)

    return loss


def _float64_problem(partial_channels=1):
    # Seeded: the weights otherwise depend on what earlier tests drew from the global RNG, and a draw
    # that puts a ReLU input or a max-pool tie within h of its kink breaks the central difference.
    keras.utils.set_random_seed(5)
    model = built(dtype="float64", **SMALL, partial_channels=partial_channels)
    x = images(dtype=tf.float64)
    probe = tf.random.stateless_normal(TINY_GRID, seed=[1, 1], dtype=tf.float64)
    E = [v.value for v in model.trainable_variables]
    return model, _loss_fn(model, x, probe), E, random_op_weights(model, dtype=tf.float64)


def _directions(tensors, seed):
    return [tf.random.stateless_normal(tf.shape(t), seed=[seed, i], dtype=t.dtype) for i, t in enumerate(tensors)]


@pytest.mark.parametrize("partial_channels", [1, 2])  # 2: PC-DARTS, half the channels through the ops
def test_stateless_call_gradients_in_op_weights_and_weights_match_finite_differences(partial_channels):
    model, loss, E, (wn, wr) = _float64_problem(partial_channels)
    with tf.GradientTape() as tape:
        tape.watch([E, wn, wr])
        value = loss(E, wn, wr)
    gE, gn, gr = tape.gradient(value, [E, wn, wr])
    assert float(tf.reduce_sum(tf.abs(gn))) > 0 and float(tf.reduce_sum(tf.abs(gr))) > 0
    dE, (dn, dr) = _directions(E, 1), _directions([wn, wr], 2)
    h = 1e-7  # affine-free BN on a batch of 2 is strongly curved; float64 affords a small step
    step = lambda s: loss([e + s * d for e, d in zip(E, dE)], wn + s * dn, wr + s * dr)  # noqa: E731
    numeric = (step(h) - step(-h)) / (2 * h)
    analytic = sum(tf.reduce_sum(g * d) for g, d in zip(gE + [gn, gr], dE + [dn, dr]))
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


@pytest.mark.parametrize("partial_channels", [1, 2])
def test_second_order_through_nested_tapes_matches_finite_differences(partial_channels):
    """∇_w ⟨∇_E L(E, w), v⟩: the mixed second derivative the hypergradient of A is made of."""
    model, loss, E, (wn, wr) = _float64_problem(partial_channels)
    v = _directions(E, 3)

    def directional_grad(w_normal):
        with tf.GradientTape() as inner:
            inner.watch(E)
            value = loss(E, w_normal, wr)
        return sum(tf.reduce_sum(g * u) for g, u in zip(inner.gradient(value, E), v))

    with tf.GradientTape() as outer:
        outer.watch(wn)
        g = directional_grad(wn)
    mixed = outer.gradient(g, wn)
    (d,) = _directions([wn], 4)
    h = 1e-7
    numeric = (directional_grad(wn + h * d) - directional_grad(wn - h * d)) / (2 * h)
    assert float(tf.reduce_sum(tf.abs(mixed))) > 0
    np.testing.assert_allclose(float(tf.reduce_sum(mixed * d)), float(numeric), rtol=1e-5)


def _value_and_grads(model, x, probe):
    loss = _loss_fn(model, x, probe)

    def fn(E, wn, wr):
        with tf.GradientTape() as tape:
            tape.watch([E, wn, wr])
            value = loss(E, wn, wr)
        return value, tape.gradient(value, [E, wn, wr])

    return fn


def test_xla_compiled_step_matches_the_plain_traced_step():
    model = built(**ONE_NODE)
    grid_shape = TINY_GRID[:3] + (model.output_channels,)
    fn = _value_and_grads(model, images(), tf.random.stateless_normal(grid_shape, seed=[1, 1]))
    E = [v.value for v in model.trainable_variables]
    wn, wr = random_op_weights(model)
    plain = tf.function(fn)(E, wn, wr)
    xla = tf.function(fn, jit_compile=True)(E, wn, wr)
    # XLA reorders float32 reductions: compare relative to each tensor's scale.
    tf.nest.map_structure(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4 * float(tf.reduce_max(tf.abs(a)))),
                          plain, xla)


def test_search_step_runs_under_mirrored_strategy():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs the two logical CPUs of tests/conftest.py")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    with strategy.scope():
        model = built(**ONE_NODE)
        optimizer = keras.optimizers.SGD(0.1)
        optimizer.build(model.weight_variables)
    A_before = [a.numpy().copy() for a in model.arch_variables]
    E_before = [v.numpy().copy() for v in model.weight_variables]
    mean_before = [v.numpy().copy() for v in model.non_trainable_variables if "moving_mean" in v.path]

    def replica_step(x):
        A = [tf.convert_to_tensor(a) for a in model.arch_variables]
        with tf.GradientTape() as tape:
            tape.watch(A)
            _, pooled = model(x, training=True, op_weights=relax_architecture("softmax", A))
            loss = tf.reduce_mean(pooled ** 2)
        grads = tape.gradient(loss, model.weight_variables + A)
        optimizer.apply_gradients(zip(grads[:-2], model.weight_variables))
        ctx = tf.distribute.get_replica_context()
        return loss, ctx.all_reduce("sum", tf.add_n([tf.reduce_sum(tf.abs(g)) for g in grads[-2:]]))

    @tf.function
    def step(x):
        loss, grad_A = strategy.run(replica_step, args=(x,))
        return strategy.reduce("mean", loss, axis=None), strategy.reduce("mean", grad_A, axis=None)

    dataset = tf.data.Dataset.from_tensors(images(batch=4)).unbatch().batch(4)
    loss, grad_A = step(next(iter(strategy.experimental_distribute_dataset(dataset))))
    assert strategy.num_replicas_in_sync == 2
    assert np.isfinite(float(loss)) and float(grad_A) > 0
    for a, b in zip(model.arch_variables, A_before):
        np.testing.assert_array_equal(a.numpy(), b)
    assert any(not np.allclose(v.numpy(), b) for v, b in zip(model.weight_variables, E_before))
    mean_after = [v.numpy() for v in model.non_trainable_variables if "moving_mean" in v.path]
    assert any(not np.allclose(a, b) for a, b in zip(mean_after, mean_before))  # BN statistics moved


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_keeps_A_and_op_weights_float32(mixed_float16):
    model = built(**SMALL)
    assert all(a.dtype == "float32" for a in model.arch_variables)
    assert model.trainable_variables[0].dtype == "float32"
    x = images()
    wn, wr = random_op_weights(model)
    with tf.GradientTape() as tape:
        tape.watch([wn, wr])
        grid, pooled = model(x, training=True, op_weights=(wn, wr))
        loss = tf.reduce_sum(tf.cast(pooled, tf.float32) ** 2)
    assert grid.dtype == tf.float16 and pooled.dtype == tf.float16
    gn, gr = tape.gradient(loss, [wn, wr])
    assert gn.dtype == tf.float32 and np.isfinite(gn.numpy()).all() and np.abs(gn.numpy()).sum() > 0
    (grid_s, _), _ = model.stateless_call([v.value for v in model.trainable_variables],
                                          [v.value for v in model.non_trainable_variables], x, training=False)
    assert grid_s.dtype == tf.float16 and np.isfinite(grid_s.numpy()).all()
