"""`transferlab rank --dataset DATASET [--models A,B,C] (--weights-dir DIR | --pretrained)`.

Scores pretrained backbones for a dataset from their frozen features (LogME and a linear probe),
times their forward pass, prints the table and writes rank.json, rank.csv and rank.png. Example::

    transferlab rank --dataset folder:../shared/data/cifar10-jpeg.tar.gz \\
        --weights-dir ../shared/weights --out runs/rank
    transferlab compare --from-rank runs/rank --top 2 --out runs/rank-top2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transferlab.commands._common import add_dataset_args, non_negative_int, positive_int
from transferlab.errors import TransferlabError
from transferlab.results.ranking import DEFAULT_MAX_IMAGES, RANK_FILE


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `rank` sub-command."""
    parser = subparsers.add_parser(
        "rank",
        help="rank pretrained backbones for a dataset in minutes (LogME, linear probe, speed)",
        description="Extract each candidate backbone's pooled features once on a stratified subset "
        "of the training split (through the feature cache `train` uses), score them with LogME "
        "(You et al., ICML 2021) and a linear probe, time the forward pass, and write rank.json, "
        "rank.csv and rank.png. `compare --from-rank DIR --top K` then fine-tunes the K best.",
    )
    add_dataset_args(parser, positional=False)
    parser.add_argument("--models", metavar="A,B,C",
                        help="comma-separated registry names or timm:<name> (default: every registry "
                        "model with pretrained weights; those without weights are skipped)")
    parser.add_argument("--weights-dir", metavar="DIR",
                        help="offline weights: the .safetensors file whose metadata fits each model")
    parser.add_argument("--pretrained", action="store_true",
                        help="download weights from the timm hub (for models not in --weights-dir)")
    parser.add_argument("--max-images", type=positive_int, default=DEFAULT_MAX_IMAGES,
                        help=f"training images used, stratified; 20%% held out for the probe "
                        f"(default {DEFAULT_MAX_IMAGES}: a few minutes on a laptop CPU)")
    parser.add_argument("--input-size", type=positive_int, default=None, metavar="PX",
                        help="model input size for every candidate (default: the model's own, at most "
                        "3x the images' size and at least 96)")
    parser.add_argument("--split-seed", type=non_negative_int, default=0, help="seed of the stratified subset")
    parser.add_argument("--cache-dir", default=None, help="cached-feature folder")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="extraction batch size")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    parser.add_argument("--extract-backend", default="auto", choices=("auto", "eager", "compile"),
                        help="frozen-feature extraction (auto compiles on the CPU for large subsets)")
    parser.add_argument("--out", type=Path, default=Path("runs/rank"),
                        help="folder for rank.json, rank.csv, rank.png (default runs/rank)")
    parser.add_argument("--exclude", metavar="FILE", default=None,
                        help="images to leave out: an audit.csv (`transferlab data audit`) or one "
                             "source-relative path per line")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Rank the candidates, print the table and where the files went."""
    # The ranking code imports torch and timm: only when the command runs, not for --help.
    from transferlab.api import rank
    from transferlab.ranking import format_table
    from transferlab.ranking.rank import RANK_CSV, RANK_FIGURE

    if not args.dataset:
        raise TransferlabError("--dataset is required, e.g. --dataset folder:../shared/data/cifar10-jpeg.tar.gz")
    models = args.models.split(",") if args.models is not None else None
    payload = rank(args.dataset, models, weights_dir=args.weights_dir, pretrained=args.pretrained,
                   out=args.out, data_root=args.data_root, image_size=args.image_size,
                   labels=args.labels, workers=args.workers, max_images=args.max_images,
                   max_image_pixels=args.max_image_pixels, exclude=args.exclude,
                   input_size=args.input_size, split_seed=args.split_seed, cache_dir=args.cache_dir,
                   batch_size=args.batch_size, device=args.device,
                   extract_backend=args.extract_backend, quiet=args.quiet)
    print()
    print(format_table(payload))
    print(f"\n{payload['images_train']} + {payload['images_val']} images, {payload['wall_time_s']:.0f} s; "
          f"wrote {args.out / RANK_FILE}, {args.out / RANK_CSV} and {args.out / RANK_FIGURE}")
    print(f"fine-tune the best: transferlab compare --from-rank {args.out} --top 2 --out {args.out}-top2")
    return 0
