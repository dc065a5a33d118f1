"""FusedAdam / FusedAdamW take Keras' Adam / AdamW steps with a fraction of their graph ops."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.optimizers import FusedAdam, FusedAdamW

SHAPES = ((3, 3, 4, 1), (4, 5), (5,))


def make_variables(dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=shape), dtype=dtype, name=f"v{i}") for i, shape in enumerate(SHAPES)]


def gradient_steps(dtype="float32", steps=4, seed=1):
    rng = np.random.default_rng(seed)
    return [[tf.constant(rng.normal(size=shape), dtype) for shape in SHAPES] for _ in range(steps)]


def run(optimizer, variables, steps, compiled):
    def apply(grads):
        optimizer.apply_gradients(zip(grads, variables))

    apply = tf.function(apply, autograph=False) if compiled else apply
    for grads in steps:
        apply(grads)
    return [v.numpy() for v in variables]


def textbook_adamw(values, steps, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
    """Adam (Kingma & Ba) with AdamW's decoupled decay θ −= η λ θ before the step, in float64 numpy."""
    values = [np.array(v, np.float64) for v in values]
    m, v = [np.zeros_like(x) for x in values], [np.zeros_like(x) for x in values]
    for t, grads in enumerate(steps, start=1):
        eta = lr(t - 1) if callable(lr) else lr
        alpha = eta * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64)
            values[i] -= eta * weight_decay * values[i]
            m[i] += (g - m[i]) * (1 - beta_1)
            v[i] += (g * g - v[i]) * (1 - beta_2)
            values[i] -= alpha * m[i] / (np.sqrt(v[i]) + epsilon)
    return values


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("weight_decay", [None, 0.1], ids=["adam", "adamw"])
def test_fused_optimizer_in_float64_is_the_textbook_adamw(weight_decay, compiled):
    steps = gradient_steps("float64")
    make = FusedAdam if weight_decay is None else FusedAdamW
    optimizer = make(0.03, beta_1=0.5, beta_2=0.999, **({} if weight_decay is None else {"weight_decay": weight_decay}))
    got = run(optimizer, make_variables("float64"), steps, compiled)
    lr = float(np.float32(0.03))  # Keras keeps the learning rate in a float32 variable
    expected = textbook_adamw([v.numpy() for v in make_variables("float64")], steps, lr, beta_1=0.5,
                              beta_2=0.999, weight_decay=weight_decay or 0.0)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)


PAIRS = {
    "adam": (lambda: keras.optimizers.Adam(0.01), lambda: FusedAdam(0.01)),
    "adam_betas": (lambda: keras.optimizers.Adam(0.03, beta_1=0.5, beta_2=0.999),
                   lambda: FusedAdam(0.03, beta_1=0.5, beta_2=0.999)),
    "adamw_schedule_clip": (
        lambda: keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(0.01, 10), weight_decay=0.1,
                                       global_clipnorm=1.0),
        lambda: FusedAdamW(keras.optimizers.schedules.CosineDecay(0.01, 10), weight_decay=0.1, global_clipnorm=1.0)),
}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf_function"])
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_fused_optimizer_takes_the_keras_optimizers_steps_in_float32(pair, compiled):
    # Not bit for bit: the kernel forms 1 − β₂ from float32 β₂ (1.3e-5 off), Keras from the Python float,
    # which moves √v, and the step, by ~6e-6 relative.
    make_keras, make_fused = PAIRS[pair]
    steps = gradient_steps()
    expected = run(make_keras(), make_variables(), steps, compiled)
    got = run(make_fused(), make_variables(), steps, compiled)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6)


def test_fused_adam_moves_the_variables_and_its_moments():
    optimizer, variables = FusedAdam(0.01), make_variables()
    before = [v.numpy() for v in variables]
    run(optimizer, variables, gradient_steps(steps=1), compiled=False)
    assert all(not np.allclose(b, v.numpy()) for b, v in zip(before, variables))
    assert int(optimizer.iterations.numpy()) == 1
    assert all(np.any(m.numpy() != 0) for m in optimizer._momentums)


def test_amsgrad_falls_back_to_keras_update():
    steps = gradient_steps()
    expected = run(keras.optimizers.Adam(0.01, amsgrad=True), make_variables(), steps, compiled=False)
    got = run(FusedAdam(0.01, amsgrad=True), make_variables(), steps, compiled=False)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)


def graph_ops_of_apply(optimizer, num_variables):
    variables = [keras.Variable(np.ones((4, 4), "float32"), name=f"w{i}") for i in range(num_variables)]
    grads = [tf.ones((4, 4)) for _ in variables]
    optimizer.build(variables)
    apply = tf.function(lambda g: optimizer.apply_gradients(zip(g, variables)), autograph=False)
    graph = apply.get_concrete_function(grads).graph
    return sum(op.type != "Placeholder" for op in graph.get_operations())  # placeholders: the inputs, captures


@pytest.mark.parametrize("make_keras, make_fused, fused_ops", [
    (lambda: keras.optimizers.Adam(0.01), lambda: FusedAdam(0.01), 2),
    (lambda: keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(0.01, 10), weight_decay=0.1),
     lambda: FusedAdamW(keras.optimizers.schedules.CosineDecay(0.01, 10), weight_decay=0.1), 5),
], ids=["adam", "adamw_schedule"])
def test_fused_update_builds_a_few_ops_per_variable(make_keras, make_fused, fused_ops):
    # Ops added per extra variable, the step's scalars being shared: Adam's gradient identity and
    # ResourceApplyAdam; AdamW's decay adds a read, a multiply and an assign. Keras' Adam builds 37.
    per_variable = {}
    for name, make in (("keras", make_keras), ("fused", make_fused)):
        per_variable[name] = (graph_ops_of_apply(make(), 12) - graph_ops_of_apply(make(), 2)) / 10
    assert per_variable["fused"] <= fused_ops, per_variable
    assert per_variable["keras"] >= 5 * per_variable["fused"], per_variable


def test_fused_adamw_under_mirrored_strategy_equals_keras_adamw():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs the two logical CPUs of tests/conftest.py")
    # Reduction through one device, not collectives: on the CPU, two replicas' collective all-reduces of Keras'
    # per-variable updates can be issued in different orders and abort ("Shape mismatch in the collective").
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    steps = gradient_steps(steps=3)
    results = []
    for make in (lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1), lambda: FusedAdamW(0.01, weight_decay=0.1)):
        with strategy.scope():
            variables, optimizer = make_variables(), make()
            optimizer.build(variables)

        def replica_step(grads):  # each replica's copy of the gradients, on its device, as a tape's would be
            optimizer.apply_gradients([(tf.identity(g), v) for g, v in zip(grads, variables)])

        @tf.function(autograph=False)
        def step(grads):
            strategy.run(replica_step, args=(grads,))

        for grads in steps:
            step(grads)
        results.append([[c.numpy() for c in v.value.values] for v in variables])
    for keras_replicas, fused_replicas in zip(*results):
        np.testing.assert_array_equal(fused_replicas[0], fused_replicas[1])  # the copies stay in sync
        np.testing.assert_allclose(fused_replicas[0], keras_replicas[0], rtol=1e-5, atol=1e-6)
