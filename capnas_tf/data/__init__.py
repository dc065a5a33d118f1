"""Caption data: the procedural `capnas_shapes` dataset (`shapes`, `shapes_tfds`), caption text and
the vocabulary (`text`), readers of COCO-format / Karpathy / TFDS caption data (`captions_io`), and
the tf.data streams of the search and retraining (`pipeline`). Submodules are imported on demand,
so importing this package stays cheap."""
