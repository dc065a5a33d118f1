"""Content accuracy of a trained captioner on its own training images beside the validation images.

    python benchmarks/train_vs_validation.py --model=runs/quickstart [--images=600]

A captioner that scores far higher on the images it was trained on than on the validation images has
memorised them (too few training images for the budget); one that scores low on both underfits. Captions
the first `--images` training images and every validation image greedily and prints the content recall of
`capnas_tf.data.shapes_content` for each (`capnas_shapes` only: the other datasets have no scenes).
"""
import argparse

from capnas_tf.config import DataConfig
from capnas_tf.data.pipeline import load_caption_data
from capnas_tf.evaluation import caption_dataset, content_scores, load_model_for_evaluation

KEYS = ("count", "colour", "shape", "size", "relation", "entirely_correct")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="runs/quickstart", help="a retrain workdir or an export directory")
    parser.add_argument("--images", type=int, default=600, help="training images to caption")
    parser.add_argument("--image_size", type=int, default=32)
    args = parser.parse_args()
    captioner, path = load_model_for_evaluation(args.model)
    data = load_caption_data(DataConfig(dataset="capnas_shapes", image_size=args.image_size, batch_size=50))
    print(f"{path}: content recall on training and validation images")
    for split, limit in (("train", args.images), ("validation", 0)):
        captions = caption_dataset(captioner, data.eval_dataset(split, 50), data.vocab, max_images=limit)
        scores = content_scores(captions, data, split)
        print(f"  {split:10s} {len(captions):5d} images  " + "  ".join(f"{k} {scores[k]:.3f}" for k in KEYS))


if __name__ == "__main__":
    main()
