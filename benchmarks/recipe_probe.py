"""One retrain-recipe variant, trained and scored on capnas_shapes' validation split: a probe for choosing the recipe.

    python benchmarks/recipe_probe.py --decoder=transformer --channels=16 --steps=4500 --eval_every=1500 \
        --dec_kw='{"num_layers": 2, "num_heads": 4, "normalize_first": true, "global_token": true}'
    python benchmarks/recipe_probe.py --decoder=lstm --channels=8 --steps=480      # the old recipe
    python benchmarks/recipe_probe.py --decoder=transformer --channels=16 --steps=4500 --k=4 --dec_kw='{"dropout": 0}'

Trains encoder + decoder with the retrain's loss and optimizer (AdamW, cosine decay over --steps) on the
default capnas_shapes (or --num_train images), then captions the 300 validation images greedily and prints
the content accuracy (`capnas_tf.data.shapes_content`), the word-presence rate of each group's colour, shape
and count words (`word_presence`: a cruder check that needs no parser), distinct captions and CIDEr; then
what the issue of captioners that do not see asks to look at first: how much the pooled features differ
between images, and (LSTM) the norm of the projected image vector against the word embeddings. `--blind`
trains and evaluates on constant images; `--k` takes k captions per image per step (batch = images). The table of variants tried is in docs/captioner_recipe.md.
"""
import argparse, time, json, collections, sys
import numpy as np
import keras, tensorflow as tf
from capnas_tf.config import DataConfig, RetrainConfig
from capnas_tf.data.pipeline import load_caption_data
from capnas_tf.data import shapes
from capnas_tf import evaluation, retrain
from capnas_tf.decoders import get_decoder
from capnas_tf.captioner import Captioner
from capnas_tf.encoders import get_encoder
from capnas_tf.metrics import score_split

p = argparse.ArgumentParser()
p.add_argument("--encoder", default="darts")
p.add_argument("--decoder", default="lstm")
p.add_argument("--channels", type=int, default=8)
p.add_argument("--cells", type=int, default=3)
p.add_argument("--steps", type=int, default=480)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--eval_every", type=int, default=0)
p.add_argument("--image_size", type=int, default=32)
p.add_argument("--num_train", type=int, default=shapes.ShapesConfig().num_train)
p.add_argument("--blind", action="store_true")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--dec_kw", default="{}", help="decoder keyword arguments, JSON")
p.add_argument("--k", type=int, default=1, help="captions per image per step (RetrainConfig.captions_per_image)")
p.add_argument("--pixel_skip", action="store_true",
               help="append the image's mean colour over each grid slot's patch to the encoder's grid (3 channels)")
p.add_argument("--save", default="", help="write the trained captioner to this .keras file")
a = p.parse_args()
keras.utils.set_random_seed(a.seed)
sc = shapes.ShapesConfig(num_train=a.num_train)
data = load_caption_data(DataConfig(image_size=a.image_size, shapes=sc, batch_size=a.batch), None)
cfg = RetrainConfig(encoder=a.encoder, channels=a.channels, num_cells=a.cells, decoder=a.decoder, lr=a.lr)
enc = retrain.build_encoder(cfg)


class PixelSkip(keras.layers.Layer):
    """(grid ++ mean colour of each slot's image patch, pooled): the grid slots' exact colour and place."""

    def __init__(self, encoder, **kw):
        super().__init__(**kw)
        self.encoder = encoder

    def call(self, images, training=False):
        grid, pooled = self.encoder(images, training=training)
        h = grid.shape[1]
        patches = tf.nn.avg_pool2d(images, images.shape[1] // h, images.shape[1] // h, "VALID")
        patches = tf.cast(patches, grid.dtype)
        return tf.concat([grid, patches], -1), tf.concat([pooled, tf.reduce_mean(patches, [1, 2])], -1)


if a.pixel_skip:
    enc = PixelSkip(enc)
dec = get_decoder(a.decoder, vocab_size=len(data.vocab), max_len=data.max_caption_len - 1, **json.loads(a.dec_kw))
cap = Captioner(enc, dec)
cap(tf.zeros([1, a.image_size, a.image_size, 3]), tf.ones([1, data.max_caption_len - 1], tf.int32))
print("enc params", enc.count_params(), "dec params", dec.count_params(), flush=True)
opt = retrain.build_optimizer(cfg, a.steps)
from capnas_tf.decoders.losses import caption_loss
@tf.function
def step(images, tokens):
    if a.blind: images = tf.zeros_like(images)
    with tf.GradientTape() as tape:
        logits, targets = retrain.training_logits(cap, images, tokens, step=0, scheduled_sampling=None)
        loss = caption_loss(logits, targets)
    g = tape.gradient(loss, cap.trainable_variables)
    opt.apply_gradients(zip(g, cap.trainable_variables))
    return loss

def scene_of(image_id):
    code, index = divmod(image_id, shapes.IMAGE_ID_STRIDE)
    split = {v: k for k, v in shapes.SPLIT_CODES.items()}[code]
    return shapes.generate_example(sc, split, index).scene

def word_presence(captions):
    hits = collections.Counter(); tot = collections.Counter()
    for i, c in captions.items():
        words = set(c.split())
        sc_ = scene_of(i)
        for g in sc_.groups:
            tot["colour"] += 1; hits["colour"] += any(w in words for w in shapes.COLOUR_WORDS[g.colour])
            tot["shape"] += 1; hits["shape"] += any(w in words for pair in shapes.SHAPE_WORDS[g.shape] for w in pair)
            tot["count"] += 1; hits["count"] += any(w in words for w in shapes.COUNT_WORDS[g.count])
    out = {k: round(hits[k] / tot[k], 3) for k in tot}
    out["distinct"] = len(set(captions.values()))
    return out

def evaluate_now(tag):
    t = time.time()
    ds = data.eval_dataset("validation")
    if a.blind:
        ds = ds.map(lambda b: {"image": tf.zeros_like(b["image"]), "image_id": b["image_id"]})
    caps = evaluation.caption_dataset(cap, ds, data.vocab)
    r = word_presence(caps)
    from capnas_tf.data.shapes_content import content_accuracy
    ca = content_accuracy(caps, data.scenes("validation"))
    r = {k: round(v, 3) for k, v in ca.items()}
    from capnas_tf.data.shapes_content import parse_caption
    scenes = data.scenes("validation"); two = [i for i in caps if scenes[i]["relation"]]
    r["two_group_scenes_with_two_mentions"] = round(sum(1 for i in two if (pc := parse_caption(caps[i])) and len(pc.groups) == 2) / len(two), 3); r["distinct"] = len(set(caps.values()))
    s = score_split(caps, data.references("validation"), metrics=("CIDEr",))
    print(tag, r, "CIDEr %.3f" % s["CIDEr"], "(%.0fs)" % (time.time() - t), flush=True)
    return caps

batches = iter(data.train_groups(a.batch, a.k) if a.k > 1 else data.train_dataset(a.batch))
t0 = time.time(); losses = []
for i in range(a.steps):
    b = next(batches)
    losses.append(float(step(b["image"], b["tokens"])))
    if i == 0: print("first step (trace) %.1fs" % (time.time() - t0), flush=True); t1 = time.time()
    if (i + 1) % 100 == 0:
        print(f"step {i+1} loss {np.mean(losses[-100:]):.3f} {(i)/(time.time()-t1):.1f} steps/s", flush=True)
    if a.eval_every and (i + 1) % a.eval_every == 0 and i + 1 < a.steps:
        evaluate_now(f"@{i+1}")
print("train time %.0fs" % (time.time() - t0))
caps = evaluate_now("final")
# diagnostics: pooled feature spread, image-swap effect
b = next(iter(data.eval_dataset("validation", 64)))
grid, pooled = cap.encode(b["image"], training=False)
pooled = pooled.numpy()
print("pooled: mean|x| %.3f  between-image std %.3f  within-vector std %.3f" % (np.abs(pooled).mean(), pooled.std(0).mean(), pooled.std(1).mean()))
proj = dec.image_projection(pooled).numpy() if hasattr(dec, "image_projection") else None
if proj is not None:
    emb = dec.token_embedding.embeddings.numpy()
    print("|W_I pooled| %.3f vs |word emb| %.3f" % (np.linalg.norm(proj, axis=1).mean(), np.linalg.norm(emb, axis=1).mean()))
print("samples:", list(caps.values())[:8])
if a.save:
    cap.save(a.save)
