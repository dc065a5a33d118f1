"""The caption decoder alone, given perfect scene features: can it learn counts and relations at all?

    python benchmarks/oracle_features.py --steps=4500 --dec_kw='{"dropout": 0}'
    python benchmarks/oracle_features.py --steps=4500 --grid=3     # one memory slot per object cell
    python benchmarks/oracle_features.py --steps=1500 --k=4 --seed=1 --dec_kw='{"dropout": 0, "count_heads": 4}'

No encoder: each capnas_shapes training image is replaced by what an ideal encoder would see in it, a
3 × 3 grid (the generator's object cells) of one-hot colour, one-hot shape, one-hot size and objectness,
repeated to `--grid` × `--grid` (8: the retrained DiscreteEncoder's grid at 32 px, where an object covers
4, 6 or 9 slots depending on its cell; 3: one slot per cell). The default transformer decoder (or
`--dec_kw`) is trained by the retrain's loss and AdamW with cosine decay, then captions the 300 validation
scenes greedily; the content accuracy, its errors by scene kind and beam search (K = 3, 5) are printed.
What the decoder misses here no encoder can give it: docs/recipe_variants.md uses it to separate the
decoder's limits from the encoder's.
"""
import argparse, time, json, numpy as np, keras, tensorflow as tf
from capnas_tf.data import shapes
from capnas_tf.data.text import Vocabulary
from capnas_tf.decoders import get_decoder
from capnas_tf.decoders.losses import caption_loss
from capnas_tf.decoders.decoding import greedy_decode
from capnas_tf.data.shapes_content import content_accuracy
p = argparse.ArgumentParser(); p.add_argument("--steps", type=int, default=3000); p.add_argument("--num_train", type=int, default=shapes.ShapesConfig().num_train)
p.add_argument("--grid", type=int, default=8); p.add_argument("--dec_kw", default="{}"); p.add_argument("--lr", type=float, default=3e-3)
p.add_argument("--eval_every", type=int, default=1000); p.add_argument("--batch", type=int, default=32)
p.add_argument("--k", type=int, default=1, help="captions per image per step (RetrainConfig.captions_per_image); batch = images")
p.add_argument("--seed", type=int, default=0, help="the decoder's initialisation and the batches")
p.add_argument("--noise_channels", type=int, default=0,
               help="append this many channels of N(0, 1) noise, fixed per image and slot, to the perfect features: "
                    "a learned encoder's many channels, which a linear read of the slots' positions must look past")
a = p.parse_args(); keras.utils.set_random_seed(a.seed)
sc = shapes.ShapesConfig(num_train=a.num_train)
C, S = list(shapes.COLOURS), list(shapes.SHAPES)
def feats(scene):
    g = np.zeros([3, 3, len(C) + len(S) + 3], np.float32)
    for o in scene.objects:
        g[o.row, o.col, C.index(o.colour)] = 1; g[o.row, o.col, len(C) + S.index(o.shape)] = 1
        g[o.row, o.col, len(C) + len(S) + (o.size == "large")] = 1; g[o.row, o.col, -1] = 1
    idx = (np.arange(a.grid) * 3) // a.grid
    return g[idx][:, idx]
def split(name, n):
    ex = [shapes.generate_example(sc, name, i) for i in range(n)]
    return ex
t = time.time(); tr = split("train", a.num_train); va = split("validation", 300); print("gen %.0fs" % (time.time() - t), flush=True)
vocab = Vocabulary.build([c for e in tr for c in e.captions], max_len=16)
Xtr = np.stack([feats(e.scene) for e in tr]); Xva = np.stack([feats(e.scene) for e in va])
if a.noise_channels:
    noise = np.random.default_rng(1)
    Xtr, Xva = (np.concatenate([x, noise.standard_normal(x.shape[:3] + (a.noise_channels,), np.float32)], -1)
                for x in (Xtr, Xva))
caps = [(i, c) for i, e in enumerate(tr) for c in e.captions]
T = np.array([vocab.encode(c) for _, c in caps], np.int32); I = np.array([i for i, _ in caps])
per_image = np.argsort(I, kind="stable").reshape(len(tr), -1)  # (N, captions of each image): row i, image i's
dec = get_decoder("transformer", vocab_size=len(vocab), max_len=15, **json.loads(a.dec_kw))
opt = keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(a.lr, a.steps), weight_decay=1e-4)
@tf.function
def step(x, tok):
    with tf.GradientTape() as tape:
        loss = caption_loss(dec((x, tf.reduce_mean(x, [1, 2])), tok[:, :-1], training=True, captions_per_image=a.k), tok)
    g = tape.gradient(loss, dec.trainable_variables); opt.apply_gradients(zip(g, dec.trainable_variables)); return loss
@tf.function
def decode(x):
    return greedy_decode(dec, (x, tf.reduce_mean(x, [1, 2])), max_len=15)[0]
def evaluate(tag):
    ids = decode(tf.constant(Xva)).numpy()
    pred = {e.image_id: vocab.decode(r) for e, r in zip(va, ids)}
    acc = content_accuracy(pred, {e.image_id: shapes.scene_to_dict(e.scene) for e in va})
    print(tag, {k: round(v, 3) for k, v in acc.items()}, "distinct", len(set(pred.values())), flush=True)
rng = np.random.default_rng(a.seed); t0 = time.time(); L = []
for s in range(a.steps):
    if a.k == 1:
        j = rng.integers(len(T), size=a.batch); images = I[j]
    else:  # k distinct captions of each of `batch` images, image-major as the retrain's train_groups
        images = rng.integers(len(tr), size=a.batch)
        j = np.stack([rng.choice(per_image[i], size=a.k, replace=False) for i in images]).reshape(-1)
    L.append(float(step(tf.constant(Xtr[images]), tf.constant(T[j]))))
    if (s + 1) % 500 == 0: print(f"step {s+1} loss {np.mean(L[-500:]):.3f} {(s+1)/(time.time()-t0):.1f} st/s", flush=True)
    if (s + 1) % a.eval_every == 0: evaluate(f"@{s+1}")
# error breakdown of the final model
from capnas_tf.data.shapes_content import score_caption
import collections
# wrong: each wrong count in a two-group scene as (the scene's counts, the count of the group named, the count said)
ids = decode(tf.constant(Xva)).numpy(); tally = collections.Counter(); wrong = collections.Counter()
for e, r in zip(va, ids):
    cap = vocab.decode(r); s = score_caption(cap, e.scene); ng = len(e.scene.groups)
    if s.parsed and ng == 2:
        for said, j in zip(s.parsed.groups, s.alignment):
            if j is not None and said.count != e.scene.groups[j].count:
                wrong[(tuple(g.count for g in e.scene.groups), e.scene.groups[j].count, said.count)] += 1
    for err in s.errors:
        tally[(ng, err.split(":")[0])] += 1
    tally[(ng, "images")] += 1
    if s.parsed and ng == 2 and len(s.parsed.groups) >= 1:
        first = s.parsed.groups[0]; j = s.alignment[0]
        if j is not None: tally[(2, "first mention count right")] += first.count == e.scene.groups[j].count
        if len(s.parsed.groups) > 1 and s.alignment[1] is not None:
            tally[(2, "second mention count right")] += s.parsed.groups[1].count == e.scene.groups[s.alignment[1]].count
print(sorted(tally.items()))
print("wrong counts (scene counts, named group's count, said):", wrong.most_common())
from capnas_tf.decoders.decoding import beam_search
for K in (3, 5):
    ids = tf.function(lambda x: beam_search(dec, (x, tf.reduce_mean(x, [1, 2])), beam_width=K, max_len=15)[0])(tf.constant(Xva)).numpy()
    pred = {e.image_id: vocab.decode(r) for e, r in zip(va, ids)}
    acc = content_accuracy(pred, {e.image_id: shapes.scene_to_dict(e.scene) for e in va})
    print(f"beam{K}", {k: round(v, 3) for k, v in acc.items()}, flush=True)
