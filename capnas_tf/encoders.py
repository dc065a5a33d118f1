"""Fixed image encoders chosen by name, all with the encoder contract

    encoder(images [B, S, S, 3] in [0, 1], training=False) -> (grid [B, h, w, C], pooled [B, C])

    conv                  a few conv-BN-ReLU blocks (the Stage II student W's encoder)
    gap                   1×1 conv + global average pooling; grid is the pooled vector as a 1×1 grid
                          (discards spatial layout on purpose: a weak baseline)
    blind                 zeros of a fixed shape whatever the image, no weights (the image-blind
                          baseline: a decoder trained on it learns the captions' language alone)
    darts                 `DiscreteEncoder` of a genotype (`genotype="DARTS_V2"` or a JSON path)
    mobilenet_v3_small,   a Keras application as backbone, `weights=None` or a local `.weights.h5`
    mobilenet_v3_large,   file (never downloaded)
    mobilenet_v2, resnet50

`load_encoder_weights(encoder, path)` loads a local weights file into a built encoder (into the
application model itself for the keras.applications encoders, so their published weights fit).
A pretrained backbone is usually frozen first and fine-tuned later: `FreezeThenUnfreeze` (call it
each step in a custom loop; the retrain's `freeze_encoder_epochs`) and `FreezeThenUnfreezeCallback`
(for `fit`) switch `trainable`.

Example:

    encoder = get_encoder("conv", filters=(16, 32))
    grid, pooled = encoder(tf.random.uniform([2, 32, 32, 3]))  # (2, 8, 8, 32), (2, 32)
"""
from __future__ import annotations

import os
from typing import Callable

import keras
import tensorflow as tf

from capnas_tf.registry import Registry
from capnas_tf.search_space.discrete import DiscreteEncoder
from capnas_tf.search_space.ops import batch_norm

ENCODERS = Registry("encoder", register_name="register_encoder", lookup_name="get_encoder")


def register_encoder(name: str, factory: Callable | None = None):
    """Makes `factory(**kwargs) -> encoder` available as `name`; usable as a decorator."""
    return ENCODERS.register(name, factory)


def get_encoder(name: str, **kwargs) -> keras.layers.Layer:
    """Builds the encoder registered as `name` with its own keyword arguments (see its class)."""
    return ENCODERS.lookup(name)(**kwargs)


def _grid_and_pooled(grid):
    return grid, tf.reduce_mean(grid, axis=[1, 2])


# --- Small fixed encoders ----------------------------------------------------------------------

@register_encoder("conv")
@keras.saving.register_keras_serializable(package="capnas_tf")
class ConvEncoder(keras.Model):
    """Images → (x − 0.5) → [3×3 conv (stride 2) → BN → ReLU] per entry of `filters`.

    Args:
      filters: output channels of each block; each block halves the resolution.
      kernel_size: conv kernel size.

    Returns (call):
      `(grid [B, S/2^n, S/2^n, filters[-1]], pooled [B, filters[-1]])`.
    """

    def __init__(self, filters=(16, 32, 64), kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.filters = tuple(int(f) for f in filters)
        if not self.filters or min(self.filters) < 1:
            raise ValueError(f"ConvEncoder: filters must be a non-empty list of positive ints; received {filters!r}.")
        self.kernel_size = int(kernel_size)
        policy = self.dtype_policy
        self.convs = [keras.layers.Conv2D(f, self.kernel_size, strides=2, padding="same", use_bias=False,
                                          dtype=policy) for f in self.filters]
        self.norms = [batch_norm(True, policy) for _ in self.filters]

    @property
    def output_channels(self) -> int:
        return self.filters[-1]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, norm in zip(self.convs, self.norms):
            conv.build(shape)
            shape = tuple(conv.compute_output_shape(shape))
            norm.build(shape)

    def call(self, images, training=False):
        x = images - tf.constant(0.5, images.dtype)
        for conv, norm in zip(self.convs, self.norms):
            x = tf.nn.relu(norm(conv(x), training=training))
        return _grid_and_pooled(x)

    def get_config(self):
        config = super().get_config()
        config.update(filters=list(self.filters), kernel_size=self.kernel_size)
        return config


@register_encoder("gap")
@keras.saving.register_keras_serializable(package="capnas_tf")
class GapEncoder(keras.Model):
    """Images → (x − 0.5) → 1×1 conv → ReLU → global average pool; grid = pooled as a 1×1 grid.

    Only per-pixel colour statistics survive, none of the layout: a baseline that tells whether a
    dataset's captions need spatial information.

    Args:
      channels: C of the 1×1 conv.

    Returns (call):
      `(grid [B, 1, 1, C], pooled [B, C])`.
    """

    def __init__(self, channels: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.conv = keras.layers.Conv2D(self.channels, 1, dtype=self.dtype_policy)

    @property
    def output_channels(self) -> int:
        return self.channels

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, images, training=False):
        pooled = tf.reduce_mean(tf.nn.relu(self.conv(images - tf.constant(0.5, images.dtype))), axis=[1, 2])
        return pooled[:, tf.newaxis, tf.newaxis, :], pooled

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


@register_encoder("blind")
@keras.saving.register_keras_serializable(package="capnas_tf")
class BlindEncoder(keras.layers.Layer):
    """Ignores the image: a zero grid and a zero pooled vector, with no weights.

    A decoder trained on it sees the same constant for every image, so it can only learn the
    language of the captions (which caption is likely, not which fits the image): the image-blind
    baseline of `RetrainConfig.blind_baseline`. Give it the output shape of the encoder it stands in
    for, so the decoder has the same shapes and variables as the real captioner's.

    Args:
      grid_shape: `(h, w, C)` of the grid; pooled has C channels.

    Returns (call):
      `(grid [B, h, w, C], pooled [B, C])`, all zeros, B taken from the images.
    """

    def __init__(self, grid_shape=(1, 1, 64), **kwargs):
        super().__init__(**kwargs)
        self.grid_shape = tuple(int(d) for d in grid_shape)
        if len(self.grid_shape) != 3 or min(self.grid_shape) < 1:
            raise ValueError(f"BlindEncoder: grid_shape must be three positive ints (h, w, C); received "
                             f"{grid_shape!r}.")

    @property
    def output_channels(self) -> int:
        return self.grid_shape[-1]

    def build(self, input_shape):
        pass  # nothing to build: no weights

    def call(self, images, training=False):
        batch = tf.shape(images)[0]
        grid = tf.zeros(tf.concat([[batch], self.grid_shape], axis=0), self.compute_dtype)
        return grid, tf.zeros([batch, self.grid_shape[-1]], self.compute_dtype)

    def compute_output_shape(self, input_shape):
        batch = tuple(input_shape)[0]
        return (batch, *self.grid_shape), (batch, self.grid_shape[-1])

    def get_config(self):
        return {**super().get_config(), "grid_shape": list(self.grid_shape)}


@register_encoder("darts")
def darts_encoder(genotype="DARTS_V2", **kwargs) -> DiscreteEncoder:
    """`DiscreteEncoder(genotype, **kwargs)`; `genotype` is a Genotype, a known name or a JSON path."""
    return DiscreteEncoder(genotype, **kwargs)


# --- Keras application backbones -----------------------------------------------------------------

def _scale_0_255(images):
    return images * 255.0


def _resnet_caffe(images):
    # keras.applications.resnet50.preprocess_input("caffe"): RGB → BGR, minus the ImageNet mean.
    bgr = images[..., ::-1] * 255.0
    return bgr - tf.constant([103.939, 116.779, 123.68], images.dtype)


def _minus_one_to_one(images):
    return images * 2.0 - 1.0


# name → (constructor, preprocessing of images in [0, 1], extra constructor kwargs)
APPLICATIONS = {
    # MobileNetV3 rescales [0, 255] to [-1, 1] inside the model (include_preprocessing=True).
    "MobileNetV3Small": (lambda **kw: keras.applications.MobileNetV3Small(**kw), _scale_0_255,
                         {"include_preprocessing": True}),
    "MobileNetV3Large": (lambda **kw: keras.applications.MobileNetV3Large(**kw), _scale_0_255,
                         {"include_preprocessing": True}),
    "MobileNetV2": (lambda **kw: keras.applications.MobileNetV2(**kw), _minus_one_to_one, {}),
    "ResNet50": (lambda **kw: keras.applications.ResNet50(**kw), _resnet_caffe, {}),
}


def _check_weights_file(weights, where: str):
    if weights is None:
        return None
    if weights == "imagenet":
        raise ValueError(f"{where}: weights='imagenet' would download at run time, which capnas_tf never "
                         "does; download the .weights.h5 file once and pass its local path.")
    if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(weights):
        raise FileNotFoundError(f"{where}: weights file {weights!r} does not exist; pass the path of a local "
                                "Keras weights file (.weights.h5) saved from the same application with "
                                "include_top=False, or weights=None for random initialisation.")
    return os.fspath(weights)


@keras.saving.register_keras_serializable(package="capnas_tf")
class ApplicationBackbone(keras.layers.Layer):
    """A `keras.applications` model without its top, taking images in [0, 1].

    Args:
      application: a key of `APPLICATIONS` ("MobileNetV3Small", "ResNet50", …).
      weights: None (random) or the path of a local weights file; never "imagenet" (no downloads).
      trainable: initial trainability (see `FreezeThenUnfreeze`).

    Call arguments:
      images: `[B, S, S, 3]` in [0, 1].
      training: BatchNorm mode (a frozen backbone runs its BN in inference mode anyway).

    Returns:
      the last feature map `[B, S/32, S/32, C]`.
    """

    def __init__(self, application: str = "MobileNetV3Small", weights: str | None = None, **kwargs):
        super().__init__(**kwargs)
        if application not in APPLICATIONS:
            raise ValueError(f"ApplicationBackbone: unknown application {application!r}; expected one of "
                             f"{sorted(APPLICATIONS)}.")
        self.application = application
        self.weights_path = _check_weights_file(weights, f"ApplicationBackbone({application})")
        constructor, self._preprocess, extra = APPLICATIONS[application]
        self.model = constructor(include_top=False, weights=None, input_shape=(None, None, 3), **extra)
        if self.weights_path is not None:
            self.model.load_weights(self.weights_path)

    def build(self, input_shape):
        pass  # the application model is built at construction

    def call(self, images, training=None):
        return self.model(self._preprocess(tf.cast(images, self.compute_dtype)), training=training)

    def compute_output_shape(self, input_shape):
        return tuple(self.model.compute_output_shape(tuple(input_shape)))

    def get_config(self):
        return {**super().get_config(), "application": self.application, "weights": self.weights_path}


@keras.saving.register_keras_serializable(package="capnas_tf")
class BackboneEncoder(keras.Model):
    """Any feature-map backbone as an encoder: grid = backbone(images), pooled = its spatial mean.

    Args:
      backbone: a layer mapping images `[B, S, S, 3]` in [0, 1] to `[B, h, w, C]`.
    """

    def __init__(self, backbone, **kwargs):
        super().__init__(**kwargs)
        if isinstance(backbone, dict):
            backbone = keras.saving.deserialize_keras_object(backbone)
        self.backbone = backbone

    def build(self, input_shape):
        self.backbone.build(input_shape)

    def call(self, images, training=False):
        return _grid_and_pooled(self.backbone(images, training=training))

    def get_config(self):
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone)}


def _application_encoder(application: str):
    def factory(weights: str | None = None, **kwargs) -> BackboneEncoder:
        return BackboneEncoder(ApplicationBackbone(application, weights=weights), **kwargs)

    factory.__doc__ = f"`BackboneEncoder` over {application} (`weights`: None or a local file)."
    return factory


for _name, _application in (("mobilenet_v3_small", "MobileNetV3Small"), ("mobilenet_v3_large", "MobileNetV3Large"),
                            ("mobilenet_v2", "MobileNetV2"), ("resnet50", "ResNet50")):
    register_encoder(_name, _application_encoder(_application))


# --- Pretrained weights from a local file ---------------------------------------------------------

class EncoderWeightsError(ValueError):
    """A weights file that is missing or does not fit the encoder; the message names the file and the
    setting that gave it."""


def weights_target(encoder: keras.layers.Layer) -> keras.layers.Layer:
    """The layer whose weights a file for `encoder` holds: a keras.applications backbone's own model (so
    that the application's published weights without top fit), else the encoder itself."""
    if isinstance(encoder, BackboneEncoder) and isinstance(encoder.backbone, ApplicationBackbone):
        return encoder.backbone.model
    return encoder


def _arrays_in_weights_file(path: str) -> int:
    import h5py  # a dependency of Keras' weights files

    count = 0

    def visit(_, obj):
        nonlocal count
        count += isinstance(obj, h5py.Dataset)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return count


def load_encoder_weights(encoder: keras.layers.Layer, path: str, *, where: str = "load_encoder_weights") -> None:
    """Loads the local weights file `path` into the built `encoder` (`weights_target`), all or nothing.

    Args:
      encoder: a built encoder.
      path: a Keras weights file: `.weights.h5` (`layer.save_weights`) or, for an application backbone,
        its legacy `.h5`.
      where: how errors name the setting that gave `path` (e.g. a config field and its flag).

    Raises:
      EncoderWeightsError: `path` is no file, no weights file, or does not fit the encoder (other
        layers, shapes, or more arrays than the encoder has weights: Keras would silently skip those).
    """
    path = os.fspath(path)
    target = weights_target(encoder)
    if not os.path.isfile(path):
        raise EncoderWeightsError(f"{where}: weights file {path!r} does not exist; pass the path of a local weights "
                                  f"file saved from a {type(target).__name__} of the same architecture.")

    def mismatch(why: str) -> EncoderWeightsError:
        return EncoderWeightsError(f"{where}: weights file {path!r} does not fit the encoder ({type(target).__name__} "
                          f"{target.name!r}, {len(target.weights)} weights): {why}")

    def first_line(error: Exception) -> str:
        return str(error).strip().splitlines()[0][:300]

    if path.endswith(".weights.h5"):
        try:
            arrays = _arrays_in_weights_file(path)
        except OSError as e:  # h5py: not an HDF5 file
            raise mismatch(first_line(e)) from e
        if arrays != len(target.weights):
            raise mismatch(f"the file holds {arrays} arrays.")
    try:
        target.load_weights(path)
    except (OSError, KeyError, TypeError, ValueError) as e:  # h5py: OSError, KeyError; Keras: ValueError
        raise mismatch(first_line(e)) from e


# --- Freeze, then fine-tune ------------------------------------------------------------------------

class FreezeThenUnfreeze:
    """Keeps `backbone` frozen for the first `freeze_steps` steps, then makes it trainable.

    Call it with the step number before each training step; it returns True when it changed
    `backbone.trainable` (a traced step reading `trainable_variables` must then be retraced).
    The optimizer must know the backbone's variables before they become trainable:
    call `build_optimizer(optimizer, model)` once before training (Keras 3 optimizers refuse
    variables they were not built with).

    Example:

        schedule = FreezeThenUnfreeze(encoder.backbone, freeze_steps=1000)
        schedule.build_optimizer(optimizer, captioner)
        for step, batch in enumerate(batches):
            if schedule(step):
                train_step = make_train_step()  # retrace with the new trainable set
            train_step(batch)
    """

    def __init__(self, backbone: keras.layers.Layer, freeze_steps: int):
        if int(freeze_steps) < 0:
            raise ValueError(f"FreezeThenUnfreeze: freeze_steps must be >= 0; received {freeze_steps!r}.")
        self.backbone = backbone
        self.freeze_steps = int(freeze_steps)

    def trainable_at(self, step: int) -> bool:
        return int(step) >= self.freeze_steps

    def __call__(self, step: int) -> bool:
        trainable = self.trainable_at(step)
        if self.backbone.trainable == trainable:
            return False
        self.backbone.trainable = trainable
        return True

    def build_optimizer(self, optimizer: keras.optimizers.Optimizer, model: keras.Model) -> None:
        """Builds `optimizer` over all of `model`'s variables that will ever be trainable."""
        was = self.backbone.trainable
        self.backbone.trainable = True
        try:
            optimizer.build(model.trainable_variables)
        finally:
            self.backbone.trainable = was


class FreezeThenUnfreezeCallback(keras.callbacks.Callback):
    """`FreezeThenUnfreeze` for `model.fit`: counts batches over epochs, switches the backbone and
    rebuilds the train function when it changes.

    Build the optimizer over all variables before `fit` (`FreezeThenUnfreeze.build_optimizer`, or
    call `callback.build_optimizer(model)` after `compile`), since `fit` would build it over the
    variables trainable at its start.
    """

    def __init__(self, backbone: keras.layers.Layer, freeze_steps: int):
        super().__init__()
        self.schedule = FreezeThenUnfreeze(backbone, freeze_steps)
        self.step = 0

    def build_optimizer(self, model: keras.Model) -> None:
        self.schedule.build_optimizer(model.optimizer, model)

    def on_train_batch_begin(self, batch, logs=None):
        if self.schedule(self.step):
            self.model.make_train_function(force=True)
        self.step += 1
