#!/usr/bin/env python
"""Draw the ground truth of the training datasets of a config, to check what a model is
trained on.

    python tools/visualize_data.py --source annotation --config-file cfg.yaml --output-dir vis/
    python tools/visualize_data.py --source dataloader --config-file cfg.yaml --output-dir vis/ \
        DATASETS.TRAIN '("shapes_val",)'

--source annotation draws the dataset dicts on the image files as they are (one drawing per
image, named after it); --source dataloader draws what the training loader yields, after
augmentation, in the model's input format (named <image_id>.jpg). The training loader never
ends, so the dataloader source stops after as many images as the datasets hold (or
--num-images).
"""
import argparse
import itertools
import os
import sys

import cv2
import tqdm

from detzoo.config import get_cfg
from detzoo.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detzoo.data import detection_utils as utils
from detzoo.data.build import filter_images_with_few_keypoints
from detzoo.utils.logger import setup_logger
from detzoo.utils.visualizer import Visualizer

WINDOW_NAME = "detzoo data"


def setup(args):
    """The config of --config-file (or the defaults) with the command-line overrides, frozen."""
    cfg = get_cfg()
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    cfg.freeze()
    return cfg


def parse_args(in_args=None):
    parser = argparse.ArgumentParser(description="Draw the ground truth of a config's training data")
    parser.add_argument("--source", choices=["annotation", "dataloader"], required=True,
                        help="the dataset annotations as stored, or the data loader's output (after augmentation)")
    parser.add_argument("--config-file", metavar="FILE", help="path to the config file")
    parser.add_argument("--output-dir", default="./", help="directory to write the drawings to")
    parser.add_argument("--show", action="store_true", help="show the drawings in a window instead of writing them")
    parser.add_argument("--num-images", type=int, default=None,
                        help="stop after this many images (default: every image of the datasets once)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. DATASETS.TRAIN '(\"shapes_val\",)'")
    return parser.parse_args(in_args)


class _Output:
    """Writes a drawing to the output directory, or shows it in a window with --show."""

    def __init__(self, output_dir, show):
        self.output_dir, self.show = output_dir, show
        self.written = []
        if not show:
            os.makedirs(output_dir, exist_ok=True)

    def __call__(self, vis, file_name):
        if self.show:
            print(file_name)
            cv2.imshow(WINDOW_NAME, vis.get_image()[:, :, ::-1])
            cv2.waitKey()
            return
        path = os.path.join(self.output_dir, file_name)
        vis.save(path)
        self.written.append(path)


def _draw_annotations(cfg, metadata, output, num_images):
    dicts = list(itertools.chain.from_iterable(DatasetCatalog.get(name) for name in cfg.DATASETS.TRAIN))
    if cfg.MODEL.KEYPOINT_ON:
        dicts = filter_images_with_few_keypoints(dicts, 1)
    for dic in tqdm.tqdm(dicts[:num_images]):
        image = utils.read_image(dic["file_name"], "RGB")
        vis = Visualizer(image, metadata=metadata).draw_dataset_dict(dic)
        output(vis, os.path.basename(dic["file_name"]))


def _draw_loader_output(cfg, metadata, per_image):
    """One mapped dict of the training loader: its image (C, H, W tensor in INPUT.FORMAT)
    with its gt Instances and/or sem_seg."""
    image = utils.convert_image_to_rgb(per_image["image"].permute(1, 2, 0), cfg.INPUT.FORMAT)
    visualizer = Visualizer(image, metadata=metadata)
    vis = visualizer.output
    if "sem_seg" in per_image:
        vis = visualizer.draw_sem_seg(per_image["sem_seg"], area_threshold=0, alpha=0.5)
    if "instances" in per_image:
        fields = per_image["instances"].get_fields()
        class_names = metadata.get("thing_classes", None)
        labels = [class_names[i] if class_names else str(i) for i in fields["gt_classes"].tolist()]
        vis = visualizer.overlay_instances(labels=labels, boxes=fields.get("gt_boxes", None),
                                           masks=fields.get("gt_masks", None),
                                           keypoints=fields.get("gt_keypoints", None))
    return vis


def _draw_dataloader(cfg, metadata, output, num_images):
    if num_images is None:
        # one image per dataset entry; the loader samples them in random order, with repeats
        num_images = sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
    progress = tqdm.tqdm(total=num_images)
    for batch in build_detection_train_loader(cfg):
        for per_image in batch:
            image_id = per_image.get("image_id", progress.n)
            output(_draw_loader_output(cfg, metadata, per_image), f"{image_id}.jpg")
            progress.update()
            if progress.n >= num_images:
                progress.close()
                return


def main(in_args=None):
    """Returns the paths written."""
    args = parse_args(in_args)
    logger = setup_logger()
    logger.info(f"Arguments: {args}")
    if args.num_images is not None and args.num_images <= 0:
        sys.exit(f"visualize_data.py: error: --num-images must be positive, got {args.num_images}")
    if args.show and sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                              or os.environ.get("WAYLAND_DISPLAY")):
        sys.exit("visualize_data.py: error: --show needs a display; use --output-dir instead")
    cfg = setup(args)
    if not cfg.DATASETS.TRAIN:
        sys.exit("visualize_data.py: error: the config has no DATASETS.TRAIN to draw")
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    output = _Output(args.output_dir, args.show)
    if args.source == "dataloader":
        _draw_dataloader(cfg, metadata, output, args.num_images)
    else:
        _draw_annotations(cfg, metadata, output, args.num_images)
    if output.written:
        logger.info(f"Wrote {len(output.written)} drawings to {args.output_dir}")
    return output.written


if __name__ == "__main__":
    main()
