"""The decoder call contract: shapes, causality, serialization, stateless/XLA/mixed-precision use,
and second derivatives checked against finite differences."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from capnas_tf.decoders import DECODERS, get_decoder, register_decoder
from capnas_tf.decoders.losses import masked_cross_entropy
from tests.decoders.conftest import (
    BATCH,
    DECODER_NAMES,
    GRID,
    MAX_LEN,
    TINY,
    VOCAB,
    make_decoder,
    random_features,
    random_prefix,
)


def test_registry_offers_both_decoders_and_rejects_unknown_names():
    assert {"lstm", "transformer"} <= set(DECODERS)
    with pytest.raises(ValueError, match="unknown decoder name 'gru'"):
        get_decoder("gru", vocab_size=VOCAB, max_len=MAX_LEN)


def test_registering_a_taken_name_is_an_error():
    with pytest.raises(ValueError, match="already taken"):
        register_decoder("lstm", lambda **kw: None)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_logits_are_float32_batch_by_positions_by_vocab(name):
    decoder = make_decoder(name)
    for length in (1, 4, MAX_LEN):
        logits = decoder(random_features(), random_prefix(length=length))
        assert logits.shape == (BATCH, length, VOCAB)
        assert logits.dtype == tf.float32


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_a_prefix_longer_than_max_len_is_rejected(name):
    decoder = make_decoder(name)
    with pytest.raises(ValueError, match=f"max_len={MAX_LEN}"):
        decoder(random_features(), tf.ones([BATCH, MAX_LEN + 1], tf.int32))


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_logits_at_t_do_not_depend_on_later_tokens(name):
    decoder = make_decoder(name)
    tokens = random_prefix()
    changed = tf.concat([tokens[:, :3], (tokens[:, 3:] + 1) % VOCAB], axis=1)
    a = decoder(random_features(), tokens)
    b = decoder(random_features(), changed)
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not np.allclose(a[:, 3:], b[:, 3:])


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_logits_depend_on_the_image(name):
    decoder = make_decoder(name)
    tokens = random_prefix()
    a = decoder(random_features(seed=0), tokens)
    b = decoder(random_features(seed=1), tokens)
    assert np.abs(a - b).max() > 1e-4


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_k_captions_per_image_read_the_image_once_with_the_logits_of_repeated_features(name):
    """captions_per_image=k: the features of B images and tokens [B·k, T] give the logits of the features
    repeated k times (caption i reads image i // k)."""
    decoder = make_decoder(name)
    features, k = random_features(), 3
    tokens = random_prefix(batch=BATCH * k, seed=4)
    repeated = tuple(tf.repeat(f, k, axis=0) for f in features)
    np.testing.assert_allclose(decoder(features, tokens, captions_per_image=k).numpy(),
                               decoder(repeated, tokens).numpy(), rtol=1e-5, atol=1e-6)


def test_parameter_counts_are_pinned():
    c = GRID[-1]
    e, u = TINY["lstm"]["embedding_dim"], TINY["lstm"]["units"]
    lstm = (c * e + e) + VOCAB * e + (4 * u * (e + u) + 4 * u) + (u * VOCAB + VOCAB)
    assert make_decoder("lstm").count_params() == lstm
    cfg = TINY["transformer"]
    d, f, s = cfg["model_dim"], cfg["intermediate_dim"], GRID[0] * GRID[1]
    attention = 4 * (d * d + d)  # query, key, value, output projections
    layer = 2 * attention + (d * f + f) + (f * d + d) + 3 * 2 * d  # + three layer norms
    # memory (the grid's C channels and its two coordinates), grid positions, tokens, token positions
    embeddings = ((c + 2) * d + d) + s * d + VOCAB * d + MAX_LEN * d
    global_token = c * d + d  # W_g · pooled, one more memory slot
    counting = 4 * (d * d + d)  # counting attention's query, key, value and output projections
    transformer = embeddings + global_token + cfg["num_layers"] * layer + (d * VOCAB + VOCAB)
    assert make_decoder("transformer", count_heads=0).count_params() == transformer == 2309
    assert make_decoder("transformer").count_params() == transformer + counting
    encoder_layer = attention + (d * f + f) + (f * d + d) + 2 * 2 * d  # self-attention, feed-forward, two norms
    assert make_decoder("transformer", memory_layers=2).count_params() == transformer + counting + 2 * encoder_layer


def test_position_dims_hold_each_slots_position_apart_from_the_image_features():
    # the last P channels of M are the slot's Fourier position features plus its learned position
    # embedding: the same for every image, and a function of (row, col) alone
    decoder = make_decoder("transformer", count_heads=0, global_token=False, position_dims=4)
    memories = [decoder._memory(random_features(batch=1, seed=seed)).numpy()[0] for seed in (0, 1)]
    np.testing.assert_allclose(memories[0][:, -4:], memories[1][:, -4:], atol=1e-6)
    assert np.abs(memories[0][:, :-4] - memories[1][:, :-4]).max() > 1e-2
    h, w = GRID[:2]
    rows, cols = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    r, c = (x.reshape(-1) * np.pi / 2 for x in (rows, cols))
    fourier = np.stack([np.sin(r), np.cos(r), np.sin(c), np.cos(c)], axis=-1)
    position = decoder.memory_position.position_embeddings.numpy()[:h * w, -4:]
    np.testing.assert_allclose(memories[0][:, -4:], fourier + position, atol=1e-6)
    assert make_decoder("transformer", position_dims=4).count_params() == (
        make_decoder("transformer").count_params() - 4 * (GRID[-1] + 2 + 1))  # 4 fewer projected channels
    with pytest.raises(ValueError, match="position_dims=6 must be 0 or a multiple of 4"):
        make_decoder("transformer", position_dims=6)


def test_memory_layers_make_a_slot_depend_on_the_other_slots():
    # without them, the memory slot of a grid cell is a function of that cell alone (and the counting sums);
    # with them, changing one cell changes the memory of the others through self-attention
    features = random_features(batch=1)
    grid, pooled = features
    changed = tf.tensor_scatter_nd_add(grid, [[0, 0, 0]], tf.ones([1, GRID[-1]]))
    for layers, differs in ((0, False), (1, True)):
        decoder = make_decoder("transformer", count_heads=0, global_token=False, memory_layers=layers)
        before, after = (decoder._memory((g, pooled)).numpy()[0, 1:] for g in (grid, changed))
        assert (np.abs(after - before).max() > 1e-4) == differs, layers


def test_counting_attention_sums_sigmoid_gated_values_and_grows_with_matching_slots():
    from capnas_tf.decoders.transformer import CountingAttention

    heads, head_dim, d = 2, 3, 5
    layer = CountingAttention(heads, head_dim)
    x = tf.random.stateless_normal([2, 4, d], seed=[0, 1])
    slots = tf.random.stateless_normal([2, 6, d], seed=[0, 2])
    out = layer(x, slots).numpy()

    def dense(layer_, t):  # an EinsumDense as a matrix product over the flattened head axes
        kernel, bias = (w.numpy() for w in layer_.weights)
        in_dim = t.shape[-1]
        return t @ kernel.reshape(in_dim, -1) + bias.reshape(-1)

    # c_h = (1/S) Σ_s σ(q_h · k_{h,s} / √d_h) v_{h,s}, then W_o over the concatenated heads
    q = dense(layer.query, x.numpy()).reshape(2, 4, heads, head_dim)
    k = dense(layer.key, slots.numpy()).reshape(2, 6, heads, head_dim)
    v = dense(layer.value, slots.numpy()).reshape(2, 6, heads, head_dim)
    gates = 1 / (1 + np.exp(-np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(head_dim)))
    counts = np.einsum("bhts,bshd->bthd", gates, v) / 6
    np.testing.assert_allclose(out, dense(layer.output_projection, counts.reshape(2, 4, -1)), rtol=1e-5, atol=1e-6)

    # Unlike a softmax read, a sum sees how many slots match: two copies of a slot among blanks are not one.
    blank, thing = tf.zeros([1, 1, d]), slots[:1, :1]
    one = layer(x[:1], tf.concat([thing, blank, blank, blank], axis=1))
    two = layer(x[:1], tf.concat([thing, thing, blank, blank], axis=1))
    base = layer(x[:1], tf.concat([blank, blank, blank, blank], axis=1))
    np.testing.assert_allclose(two - base, 2 * (one - base), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_config_round_trip_rebuilds_the_same_decoder(name):
    decoder = make_decoder(name)
    config = decoder.get_config()
    clone = type(decoder).from_config(config)
    assert clone.get_config() == config
    features, tokens = random_features(), random_prefix()
    clone(features, tokens)
    clone.set_weights(decoder.get_weights())
    np.testing.assert_allclose(clone(features, tokens), decoder(features, tokens), atol=1e-6)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_keras_file_round_trip_restores_weights(name, tmp_path):
    decoder = make_decoder(name)
    path = str(tmp_path / f"{name}.keras")
    decoder.save(path)
    loaded = keras.saving.load_model(path)
    features, tokens = random_features(), random_prefix()
    np.testing.assert_allclose(loaded(features, tokens), decoder(features, tokens), atol=1e-6)


def _values(decoder):
    return [tf.convert_to_tensor(v) for v in decoder.trainable_variables]


def _stateless_loss(decoder, values, features, tokens):
    non_trainable = [v.value for v in decoder.non_trainable_variables]
    logits, _ = decoder.stateless_call(values, non_trainable, features, tokens[:, :-1])
    return masked_cross_entropy(logits, tokens[:, 1:])


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_stateless_call_gradient_equals_the_stateful_gradient(name):
    decoder = make_decoder(name)
    features, tokens = random_features(), random_prefix()
    values = _values(decoder)
    with tf.GradientTape() as tape:
        tape.watch(values)
        loss = _stateless_loss(decoder, values, features, tokens)
    stateless_grads = tape.gradient(loss, values)
    with tf.GradientTape() as tape:
        loss_ref = masked_cross_entropy(decoder(features, tokens[:, :-1]), tokens[:, 1:])
    grads = tape.gradient(loss_ref, decoder.trainable_variables)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    for g, h in zip(stateless_grads, grads):
        np.testing.assert_allclose(tf.convert_to_tensor(g), tf.convert_to_tensor(h), atol=1e-6)


def _unrolled_objective(decoder, values, features, train_tokens, val_tokens, lr):
    """f = L_val(θ − η ∇θ L_tr(θ, features), features): one gradient step, as in the hypergradient."""
    with tf.GradientTape() as inner:
        inner.watch(values)
        train_loss = _stateless_loss(decoder, values, features, train_tokens)
    grads = [tf.convert_to_tensor(g) for g in inner.gradient(train_loss, values)]
    stepped = [v - lr * g for v, g in zip(values, grads)]
    return _stateless_loss(decoder, stepped, features, val_tokens)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_second_order_gradient_through_one_step_matches_finite_differences(name):
    """d f / d(θ, grid, pooled) along a random direction, f differentiating through ∇θ L_tr (float64)."""
    features = random_features(dtype=tf.float64)
    decoder = make_decoder(name, features=features, dtype="float64")
    train_tokens, val_tokens = random_prefix(seed=1), random_prefix(seed=2)
    lr = 0.1
    point = _values(decoder) + list(features)
    rng = np.random.default_rng(0)
    direction = [tf.constant(rng.normal(size=p.shape)) for p in point]

    def f(xs):
        n = len(decoder.trainable_variables)
        return _unrolled_objective(decoder, xs[:n], tuple(xs[n:]), train_tokens, val_tokens, lr)

    with tf.GradientTape() as outer:
        outer.watch(point)
        value = f(point)
    grads = outer.gradient(value, point)
    analytic = sum(  # the LSTM ignores the grid: its gradient is None
        float(tf.reduce_sum(tf.convert_to_tensor(g) * d)) for g, d in zip(grads, direction) if g is not None
    )
    # The feed-forward blocks' ReLU makes ∇θ L_tr, and so f, jump where a unit switches; a ±eps step that
    # crosses such a kink is no derivative (at the transformer's default point eps = 1e-6 crosses one and
    # gives -1468 for -125.3). In float64, eps = 1e-7 keeps round-off near 1e-9 relative.
    eps = 1e-7
    plus = f([p + eps * d for p, d in zip(point, direction)])
    minus = f([p - eps * d for p, d in zip(point, direction)])
    numeric = float(plus - minus) / (2 * eps)
    assert abs(analytic) > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_training_step_compiles_with_xla_and_matches_eager(name):
    decoder = make_decoder(name, **({"num_layers": 1} if name == "transformer" else {}))
    features, tokens = random_features(), random_prefix(length=4)
    values = _values(decoder)

    def loss_and_grads(values, grid, pooled, tokens):
        with tf.GradientTape() as tape:
            tape.watch(values)
            loss = _stateless_loss(decoder, values, (grid, pooled), tokens)
        return loss, [tf.convert_to_tensor(g) for g in tape.gradient(loss, values)]

    compiled = tf.function(loss_and_grads, jit_compile=True)
    loss, grads = compiled(values, *features, tokens)
    loss_ref, grads_ref = loss_and_grads(values, *features, tokens)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    for g, h in zip(grads, grads_ref):
        np.testing.assert_allclose(g, h, atol=1e-5)


@pytest.mark.parametrize("name", DECODER_NAMES)
def test_mixed_float16_computes_in_half_precision_and_returns_float32_logits(
    name, restore_dtype_policy
):
    keras.config.set_dtype_policy("mixed_float16")
    features = tuple(tf.cast(x, tf.float16) for x in random_features())
    decoder = make_decoder(name, features=features)
    assert decoder.compute_dtype == "float16"
    assert all(v.dtype == "float32" for v in decoder.trainable_variables)
    tokens = random_prefix()
    with tf.GradientTape() as tape:
        logits = decoder(features, tokens[:, :-1], training=True)
        loss = masked_cross_entropy(logits, tokens[:, 1:])
    grads = tape.gradient(loss, decoder.trainable_variables)
    assert logits.dtype == tf.float32
    assert np.isfinite(loss.numpy())
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads)
    cache = decoder.initial_cache(features)
    step_logits, _ = decoder.decode_step(features, tokens[:, 0], 0, cache)
    assert step_logits.dtype == tf.float32
    np.testing.assert_allclose(step_logits, decoder(features, tokens[:, :1])[:, 0], atol=2e-2)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_one_hot_token_rows_give_the_logits_of_the_token_ids(name):
    """Stage II `straight_through` feeds rows over the vocabulary; one-hot rows must equal the ids."""
    import capnas_tf.decoders as decoders

    decoder = decoders.get_decoder(name, vocab_size=11, max_len=5)
    features = (tf.random.normal([2, 2, 2, 6], seed=1), tf.random.normal([2, 6], seed=2))
    ids = tf.constant([[1, 4, 5, 9, 3], [1, 2, 0, 0, 0]])
    from_ids = decoder(features, ids)
    from_rows = decoder(features, tf.one_hot(ids, 11))
    np.testing.assert_allclose(from_rows.numpy(), from_ids.numpy(), rtol=1e-5, atol=1e-6)
