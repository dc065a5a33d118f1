"""The cheaper arithmetic of the strided and dilated ops and of k captions per image, timed side by side.

    python benchmarks/op_paths.py [--batch=32] [--side=32] [--channels=48] [--repeats=50]

Each row times a forward and backward pass (the gradient of Σ y²) of the same values computed two ways,
in one process: Keras' dilated depthwise conv (SpaceToBatchND, or at stride 2 a stride-1 conv and a strided
slice) against `ops.dilated_depthwise`; FactorizedReduce's two 1×1 convs on x and x shifted by a strided
slice against its one 2×2 kernel; and a retrain step of 32 images × 4 captions with the features repeated
per caption against `captions_per_image` (the decoder's memory once per image). Prints ms per pass and
the ratio new / old, and the largest difference of the values (the loss, for the retrain step).
"""
import argparse
import time

import keras
import tensorflow as tf

from capnas_tf.search_space import ops


def time_pass(fn, args, repeats, variables=()):
    """ms per call of fn(*args) and the gradient of Σ y² with respect to args (or to `variables`)."""
    @tf.function
    def grad(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            y = fn(*args)
            loss = tf.reduce_sum(tf.square(y))
        return y, tape.gradient(loss, list(variables) or args)

    for _ in range(3):
        out = grad(*args)
    start = time.perf_counter()
    for _ in range(repeats):
        out = grad(*args)
    tf.nest.map_structure(lambda t: tf.convert_to_tensor(t).numpy(), out, expand_composites=False)
    return (time.perf_counter() - start) / repeats * 1e3, out[0]


def row(name, old, new, args, repeats, variables=()):
    old_ms, old_y = time_pass(old, args, repeats, variables)
    new_ms, new_y = time_pass(new, args, repeats, variables)
    diff = float(tf.reduce_max(tf.abs(old_y - new_y)))
    print(f"| {name} | {old_ms:.2f} | {new_ms:.2f} | {new_ms / old_ms:.2f} | {diff:.1e} |", flush=True)


def retrain_step_row(repeats):
    from capnas_tf import retrain
    from capnas_tf.config import RetrainConfig
    from capnas_tf.decoders.losses import caption_loss

    keras.utils.set_random_seed(0)
    captioner = retrain.build_captioner(RetrainConfig(), vocab_size=64, max_caption_len=16, image_size=32)
    images = tf.random.uniform([32, 32, 32, 3])
    tokens = tf.random.uniform([32, 4, 16], 1, 64, tf.int32)
    flat = tf.reshape(tokens, [-1, 16])

    def repeated(images):  # the features repeated for each caption, then the whole decoder per caption
        features = tuple(tf.repeat(f, 4, axis=0) for f in captioner.encoder(images, training=True))
        return caption_loss(captioner.decoder(features, flat[:, :-1], training=True), flat)

    def per_image(images):
        logits, targets = retrain.training_logits(captioner, images, tokens, step=0, scheduled_sampling=None)
        return caption_loss(logits, targets)

    row("retrain step's loss and weight gradients, 32 images × 4 captions: features repeated → per-image memory",
        repeated, per_image, (images,), repeats, captioner.trainable_variables)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--channels", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    x = tf.random.stateless_normal([args.batch, args.side, args.side, args.channels], seed=[0, 0])
    kernel = tf.random.stateless_normal([3, 3, args.channels, 1], seed=[1, 0])
    print(f"x: {x.shape}; ms per forward + backward pass\n")
    print("| computation | old ms | new ms | new / old | max difference |")
    print("| --- | --- | --- | --- | --- |")
    for stride in (1, 2):
        row(f"dil_conv_3x3 depthwise, stride {stride}",
            lambda x, k, s=stride: keras.ops.depthwise_conv(x, k, strides=s, padding="same", dilation_rate=2),
            lambda x, k, s=stride: ops.dilated_depthwise(x, k, s, 2), (x, kernel), args.repeats)

    reduce = ops.FactorizedReduce(args.channels, 2, False)
    reduce.build(x.shape)

    def two_paths(x):
        x = tf.nn.relu(x)
        shifted = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :]
        return tf.concat([reduce.conv_1(x), reduce.conv_2(shifted)], axis=-1)

    def one_kernel(x):
        return tf.nn.conv2d(tf.nn.relu(x), reduce._paths_kernel(x.dtype), 2, "VALID")

    row("FactorizedReduce convs: two paths → one 2×2 kernel", two_paths, one_kernel, (x,), args.repeats)
    retrain_step_row(max(10, args.repeats // 2))


if __name__ == "__main__":
    main()
