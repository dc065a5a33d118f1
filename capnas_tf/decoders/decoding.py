"""Caption generation: greedy decoding and beam search as graph loops with static shapes.

Both loops only use a decoder's `initial_cache` / `decode_step` (`use_cache=False` re-runs the
full prefix instead, as a reference), keep every loop variable at a fixed shape, and write the
output with `tf.where` on a position mask rather than scatter ops, so they compile under
`tf.function(jit_compile=True)`, live in a SavedModel, and convert with tf2onnx (see
`capnas_tf.export.onnx` for the one op tf2onnx needs help with).

`decode_captions(captioner, images)` runs either loop on a `Captioner`'s encoded images.

Output layout: the generated words without <start>, `w1 … wn <end> <pad> …`, shape `[B, max_len]`;
decoding `L − 1` tokens therefore lines up with `captions[:, 1:]` of length-L captions.
"""
from __future__ import annotations

import tensorflow as tf

# A stand-in for −∞ that keeps sums and divisions finite (−inf − −inf would be NaN).
NEG_INF = -1e9


def _batch_size(features):
    return tf.shape(features[1])[0]


def never_generated(vocab_size, start_id: int = 1, pad_id: int = 0):
    """(V,) additive mask: −10⁹ on <start> and <pad>, 0 elsewhere. A decoder never learns to emit them, but an
    untrained or diverging one can, and a <pad> mid-caption would end it silently (and drop that position
    from the Stage II loss), so they are never chosen; scores stay log p under the model."""
    ids = tf.range(vocab_size)
    return tf.where(tf.logical_or(tf.equal(ids, start_id), tf.equal(ids, pad_id)), NEG_INF, 0.0)


def _log_softmax32(logits):
    return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)


def _write(buffer, position, values):
    """buffer[..., position] = values, via a position mask (ONNX/XLA friendly)."""
    at = tf.equal(tf.range(tf.shape(buffer)[-1]), position)  # (max_len,)
    return tf.where(at, values[..., None], buffer)


def _check_max_len(decoder, max_len):
    capacity = getattr(decoder, "max_len", None)
    if capacity is not None and max_len > capacity:
        raise ValueError(
            f"decoding: max_len={max_len} exceeds the decoder's max_len={capacity} (the number "
            "of positions it can read)."
        )


class _CachedSteps:
    """One position per step through the decoder's cache."""

    def __init__(self, decoder, features):
        self.decoder, self.features = decoder, features

    def initial_state(self, batch_size, max_len):
        del batch_size, max_len
        return self.decoder.initial_cache(self.features)

    def step(self, token_ids, index, state):
        return self.decoder.decode_step(self.features, token_ids, index, state)


class _RecomputedSteps:
    """The reference: the whole prefix buffer [B, max_len] goes through the decoder every step.

    The decoder is causal, so the padding after position `index` cannot change `logits[:, index]`.
    """

    def __init__(self, decoder, features, pad_id):
        self.decoder, self.features, self.pad_id = decoder, features, pad_id

    def initial_state(self, batch_size, max_len):
        return tf.fill(tf.stack([batch_size, max_len]), tf.constant(self.pad_id, tf.int32))

    def step(self, token_ids, index, prefix):
        prefix = _write(prefix, index, token_ids)
        logits = self.decoder(self.features, prefix, training=False)  # (B, max_len, V)
        return tf.gather(logits, index, axis=1), prefix


def greedy_decode(
    decoder,
    features,
    *,
    max_len: int,
    start_id: int = 1,
    end_id: int = 2,
    pad_id: int = 0,
    use_cache: bool = True,
):
    """Greedy decoding: ŵ_t = argmax_w p(w | ŵ_<t, I) over w ∉ {<start>, <pad>}, until <end> or `max_len` tokens.

    Args:
      decoder: a caption decoder with `initial_cache` / `decode_step` (or any callable decoder
        when `use_cache=False`).
      features: `(grid [B, h, w, C], pooled [B, C])`.
      max_len: number of tokens to generate (static).
      start_id, end_id, pad_id: the reserved ids.
      use_cache: False re-runs the full prefix each step (T² work; for reference and benchmarks).

    Returns:
      ids: int32 `[B, max_len]`, `w1 … <end> <pad> …` (no <end> if the caption ran out of room).
      scores: float32 `[B]`, Σ_t log p(ŵ_t) up to and including <end>.
    """
    _check_max_len(decoder, max_len)
    steps = _CachedSteps(decoder, features) if use_cache else _RecomputedSteps(decoder, features, pad_id)
    batch = _batch_size(features)

    def not_done(t, token, ids, scores, finished, state):
        return tf.logical_and(t < max_len, tf.logical_not(tf.reduce_all(finished)))

    def body(t, token, ids, scores, finished, state):
        logits, state = steps.step(token, t, state)
        log_probs = _log_softmax32(logits)  # (B, V)
        allowed = log_probs + never_generated(tf.shape(log_probs)[-1], start_id, pad_id)
        word = tf.argmax(allowed, axis=-1, output_type=tf.int32)
        scores += tf.where(finished, 0.0, tf.reduce_max(allowed, axis=-1))
        word = tf.where(finished, pad_id, word)
        ids = _write(ids, t, word)
        finished = tf.logical_or(finished, tf.equal(word, end_id))
        return t + 1, word, ids, scores, finished, state

    loop_vars = (
        tf.constant(0, tf.int32),
        tf.fill(tf.reshape(batch, [1]), tf.constant(start_id, tf.int32)),
        tf.fill(tf.stack([batch, max_len]), tf.constant(pad_id, tf.int32)),
        tf.zeros(tf.reshape(batch, [1]), tf.float32),
        tf.zeros(tf.reshape(batch, [1]), tf.bool),
        steps.initial_state(batch, max_len),
    )
    _, _, ids, scores, _, _ = tf.while_loop(
        not_done, body, loop_vars, maximum_iterations=max_len
    )
    return ids, scores


def gnmt_length_penalty(length, alpha):
    """lp(Y) = ((5 + |Y|) / 6)^α (Wu et al. 2016, arXiv:1609.08144); α = 0 gives 1."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def _repeat_beams(x, beam_width):
    """[B, …] → [B·K, …], each batch row repeated K times consecutively."""
    return tf.repeat(x, beam_width, axis=0)


def _flat_parents(parent, beam_width):
    """Row indices b·K + parent[b, k] into a batch-major [B·K, …] tensor; returns [B·K]."""
    batch = tf.shape(parent)[0]
    return tf.reshape(parent + tf.range(batch)[:, None] * beam_width, [-1])


def _take_rows(x, flat_rows):
    """x[flat_rows] for a batch-major x of shape [B·K, …] (a plain Gather, which tf2onnx maps 1:1)."""
    return tf.gather(x, flat_rows, axis=0)


def _take_beams(x, flat_rows):
    """The same selection for x of shape [B, K, …]; returns [B, K, …]."""
    shape = tf.shape(x)
    flat = tf.reshape(x, tf.concat([[-1], shape[2:]], axis=0))  # (B·K, …)
    return tf.reshape(_take_rows(flat, flat_rows), shape)


def beam_search(
    decoder,
    features,
    *,
    beam_width: int,
    max_len: int,
    length_penalty: float = 0.0,
    start_id: int = 1,
    end_id: int = 2,
    pad_id: int = 0,
):
    """Beam search with finished beams kept in the beam and GNMT length normalisation.

    Each step extends every live beam by every word and keeps the K candidates with the highest
    normalised score s(Y) = log p(Y | I) / lp(Y), lp(Y) = ((5 + |Y|)/6)^α, where |Y| counts the
    words up to and including <end>. A finished beam has exactly one continuation, <pad> at cost 0
    and unchanged length, so it stays finished and keeps its score while competing with the live
    beams. α = 0 ranks by the plain log-likelihood; beam_width = 1 is greedy decoding.

    Args:
      decoder: a caption decoder with `initial_cache` / `decode_step`.
      features: `(grid [B, h, w, C], pooled [B, C])`.
      beam_width: K (static). K > V is allowed: the beams that the first step cannot fill stay
        at a −10⁹ score and never win.
      max_len: number of tokens to generate (static).
      length_penalty: α ≥ 0.
      start_id, end_id, pad_id: the reserved ids.

    Returns:
      ids: int32 `[B, max_len]`, the beam with the best normalised score, `w1 … <end> <pad> …`.
      scores: float32 `[B]`, its log-likelihood Σ_t log p(w_t) (not normalised, so that it is
        comparable with `greedy_decode`'s scores).
    """
    _check_max_len(decoder, max_len)
    if beam_width < 1:
        raise ValueError(f"beam_search: beam_width must be >= 1; received {beam_width}.")
    K = beam_width
    batch = _batch_size(features)
    beam_features = tuple(_repeat_beams(x, K) for x in features)
    cache = tf.nest.map_structure(lambda x: _repeat_beams(x, K), decoder.initial_cache(features))

    def not_done(t, token, ids, log_lik, lengths, finished, cache):
        return tf.logical_and(t < max_len, tf.logical_not(tf.reduce_all(finished)))

    def body(t, token, ids, log_lik, lengths, finished, cache):
        logits, cache = decoder.decode_step(beam_features, token, t, cache)
        log_probs = _log_softmax32(logits)  # (B·K, V)
        V = tf.shape(log_probs)[-1]
        log_probs = tf.reshape(log_probs, tf.stack([batch, K, V]))  # (B, K, V)
        only_pad = tf.where(tf.equal(tf.range(V), pad_id), 0.0, NEG_INF)  # (V,)
        log_probs = log_probs + never_generated(V, start_id, pad_id)
        log_probs = tf.where(finished[..., None], only_pad, log_probs)
        candidate_log_lik = log_lik[..., None] + log_probs  # (B, K, V)
        candidate_length = tf.where(finished, lengths, t + 1)  # (B, K)
        normalised = candidate_log_lik / gnmt_length_penalty(candidate_length, length_penalty)[
            ..., None
        ]
        _, best = tf.math.top_k(tf.reshape(normalised, tf.stack([batch, K * V])), k=K)  # (B, K)
        parent, word = best // V, best % V
        rows = _flat_parents(parent, K)  # (B·K,)
        log_lik = tf.reshape(
            tf.gather(tf.reshape(candidate_log_lik, [-1]), _flat_parents(best, K * V)),
            tf.stack([batch, K]),
        )
        was_finished = _take_beams(finished, rows)
        lengths = tf.where(was_finished, _take_beams(lengths, rows), t + 1)
        finished = tf.logical_or(was_finished, tf.equal(word, end_id))
        ids = _write(_take_beams(ids, rows), t, word)
        cache = tf.nest.map_structure(lambda x: _take_rows(x, rows), cache)
        return t + 1, tf.reshape(word, [-1]), ids, log_lik, lengths, finished, cache

    first_beam_only = tf.where(tf.equal(tf.range(K), 0), 0.0, NEG_INF)  # start from one live beam
    loop_vars = (
        tf.constant(0, tf.int32),
        tf.fill(tf.reshape(batch * K, [1]), tf.constant(start_id, tf.int32)),
        tf.fill(tf.stack([batch, K, max_len]), tf.constant(pad_id, tf.int32)),
        tf.tile(first_beam_only[None, :], tf.stack([batch, 1])),
        tf.zeros(tf.stack([batch, K]), tf.int32),
        tf.zeros(tf.stack([batch, K]), tf.bool),
        cache,
    )
    _, _, ids, log_lik, lengths, finished, _ = tf.while_loop(
        not_done, body, loop_vars, maximum_iterations=max_len
    )
    final = log_lik / gnmt_length_penalty(lengths, length_penalty)
    choice = tf.argmax(final, axis=-1, output_type=tf.int32)  # (B,)
    rows = _flat_parents(choice[:, None], K)  # (B,)
    best_ids = _take_rows(tf.reshape(ids, tf.stack([batch * K, max_len])), rows)
    best_scores = _take_rows(tf.reshape(log_lik, [-1]), rows)
    return best_ids, best_scores


def decode_captions(captioner, images, *, beam_width: int = 1, max_len: int | None = None):
    """Caption token ids of a batch of images.

    Args:
      captioner: a `Captioner` (encoder + decoder with `initial_cache` / `decode_step`).
      images: float32 `[B, S, S, 3]` in [0, 1].
      beam_width: 1 = greedy decoding, K > 1 = beam search of width K.
      max_len: tokens to generate; default the decoder's `max_len` (L − 1).

    Returns:
      ids: int32 `[B, max_len]`, `w1 … <end> <pad> …`; scores: float32 `[B]`, log p of the caption.
    """
    max_len = max_len or captioner.decoder.max_len
    features = captioner.encode(images, training=False)
    if beam_width == 1:
        return greedy_decode(captioner.decoder, features, max_len=max_len)
    return beam_search(captioner.decoder, features, beam_width=beam_width, max_len=max_len)
