#!/usr/bin/env python
"""Run a config's model on images, a video or a webcam and draw its predictions.

    python demo/demo.py --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml \
        --input img1.jpg 'photos/*.png' --output out/ --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --config-file cfg.yaml --video-input clip.mp4 --output out/   # -> out/clip.mp4
    python demo/demo.py --config-file cfg.yaml --webcam

Without --output the drawings are shown in a window; on a machine without a display the
predictions are still run and logged, and the demo says that nothing was written.
"""
import argparse
import glob
import os
import re
import sys
import time

import cv2
import tqdm

from detzoo.config import get_cfg
from detzoo.data.detection_utils import read_image
from detzoo.utils.logger import setup_logger

from predictor import VisualizationDemo

WINDOW_NAME = "detzoo detections"
_ESCAPE_KEY = 27
_FALLBACK_FPS = 30.0  # when a video file does not say its frame rate


class DemoError(RuntimeError):
    """A problem with the demo's inputs or outputs (reported without a traceback)."""


def setup_cfg(args):
    """The config of the file, the --opts overrides, then --confidence-threshold as the score
    threshold of every built-in model kind (frozen)."""
    cfg = get_cfg()
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    cfg.freeze()
    return cfg


def get_parser():
    parser = argparse.ArgumentParser(description="detzoo demo for built-in configs")
    parser.add_argument("--config-file", default="configs/quick_schedules/mask_rcnn_R_50_FPN_inference_acc_test.yaml",
                        metavar="FILE", help="path to the config file")
    parser.add_argument("--webcam", action="store_true", help="read frames from the webcam (shown in a window)")
    parser.add_argument("--video-input", metavar="FILE", help="path to a video file")
    parser.add_argument("--input", nargs="+",
                        help="input images: paths and/or glob patterns, e.g. img1.jpg 'directory/*.jpg'")
    parser.add_argument("--output",
                        help="where to save the drawings: a directory (created if needed; taken as one when it "
                             "exists, has no extension or there are several inputs) or a file; without it they "
                             "are shown in a window")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of the instance predictions that are drawn")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth MODEL.DEVICE cpu")
    return parser


def display_available():
    """Whether OpenCV can open a window here: a GUI backend and, on Linux, an X or Wayland display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    return not (gui and gui.group(1).upper() == "NONE")


def expand_inputs(patterns):
    """Paths and glob patterns -> the image files, in the given order (each pattern's matches
    sorted). Raises FileNotFoundError naming a pattern that matches nothing."""
    paths = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [m for m in matches if os.path.isfile(m)]
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        paths.extend(matches)
    return paths


def _image_output_path(output, input_path, num_inputs):
    """Where the drawing of `input_path` goes: into `output` if it is (or must be) a directory,
    else `output` itself."""
    is_dir = os.path.isdir(output) or output.endswith(("/", os.sep)) or num_inputs > 1 \
        or not os.path.splitext(output)[1]
    if is_dir:
        os.makedirs(output, exist_ok=True)
        return os.path.join(output, os.path.basename(input_path))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    return output


def _video_output_path(output, video_path):
    """`output` itself, or output/<video name>.mp4 when it is a directory (or has no extension)."""
    if os.path.isdir(output) or output.endswith(("/", os.sep)) or not os.path.splitext(output)[1]:
        os.makedirs(output, exist_ok=True)
        output = os.path.join(output, os.path.splitext(os.path.basename(video_path))[0] + ".mp4")
    else:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if os.path.exists(output):
        raise FileExistsError(f"--output {output} exists; remove it or give another path")
    return output


def _warn_nothing_written(logger):
    logger.warning("No --output given and no display to show the drawings on: nothing will be written. "
                   "Give --output DIR (or FILE) to save them.")


def run_on_images(demo, args, logger):
    """Draw the predictions on each --input image; save them, show them, or (neither
    possible) only log them. Returns the paths written."""
    paths = args.input  # expanded by _check_arguments
    show = not args.output and display_available()
    if not args.output and not show:
        _warn_nothing_written(logger)
    written = []
    for path in tqdm.tqdm(paths, disable=show):
        image = read_image(path, format="BGR")  # PIL, as in evaluation: same decoding of JPEGs
        start_time = time.perf_counter()
        predictions, visualized_output = demo.run_on_image(image)
        what = f"detected {len(predictions['instances'])} instances" if "instances" in predictions else "finished"
        logger.info(f"{path}: {what} in {time.perf_counter() - start_time:.2f}s")
        if args.output:
            out_path = _image_output_path(args.output, path, len(paths))
            visualized_output.save(out_path)
            written.append(out_path)
        elif show:
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            cv2.imshow(WINDOW_NAME, visualized_output.get_image()[:, :, ::-1])
            if cv2.waitKey(0) == _ESCAPE_KEY:
                break
    if written:
        logger.info(f"Wrote {len(written)} drawing(s) to {args.output}")
    return written


def run_on_video(demo, args, logger):
    """Draw the predictions on each frame of --video-input and write them as an mp4 (or show
    them). Returns the paths written."""
    video = cv2.VideoCapture(args.video_input)
    if not video.isOpened():
        raise DemoError(f"OpenCV cannot read the video {args.video_input}")
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = video.get(cv2.CAP_PROP_FPS)
    if not fps or fps <= 0:
        logger.warning(f"{args.video_input} does not give its frame rate; writing at {_FALLBACK_FPS} fps")
        fps = _FALLBACK_FPS
    num_frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    show = not args.output and display_available()
    writer, out_path = None, None
    if args.output:
        out_path = _video_output_path(args.output, args.video_input)
        writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height), True)
        if not writer.isOpened():
            video.release()
            raise DemoError(f"OpenCV cannot write an mp4v video to {out_path} (codec missing from this build?)")
    elif not show:
        _warn_nothing_written(logger)
    window = os.path.basename(args.video_input)
    start_time, count = time.perf_counter(), 0
    try:
        for vis_frame in tqdm.tqdm(demo.run_on_video(video), total=num_frames if num_frames > 0 else None):
            count += 1
            if writer is not None:
                writer.write(vis_frame)
            elif show:
                cv2.namedWindow(window, cv2.WINDOW_NORMAL)
                cv2.imshow(window, vis_frame)
                if cv2.waitKey(1) == _ESCAPE_KEY:
                    break
    finally:
        video.release()
        if writer is not None:
            writer.release()
        elif show:
            cv2.destroyAllWindows()
    logger.info(f"{args.video_input}: {count} frames in {time.perf_counter() - start_time:.2f}s"
                + (f", written to {out_path}" if out_path else ""))
    return [out_path] if out_path else []


def run_on_webcam(demo, args, logger):
    """Show the drawn frames of webcam 0 until Esc is pressed."""
    cam = cv2.VideoCapture(0)
    if not cam.isOpened():
        raise DemoError("cannot open the webcam (cv2.VideoCapture(0)): is one connected?")
    try:
        for vis in tqdm.tqdm(demo.run_on_video(cam)):
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            cv2.imshow(WINDOW_NAME, vis)
            if cv2.waitKey(1) == _ESCAPE_KEY:
                break
    finally:
        cam.release()
        cv2.destroyAllWindows()
    return []


def _check_arguments(parser, args):
    """Argument errors, found before the model is built: exactly one source, one that exists,
    a place for the drawings (a window needs a display)."""
    sources = [name for name, given in (("--input", args.input), ("--webcam", args.webcam),
                                        ("--video-input", args.video_input)) if given]
    if len(sources) != 1:
        parser.error(f"give exactly one of --input, --webcam, --video-input (got {', '.join(sources) or 'none'})")
    if args.webcam and args.output:
        parser.error("--output is not supported with --webcam")
    if args.webcam and not display_available():
        parser.error("--webcam shows the frames in a window, but no display is available here")
    if args.video_input and not os.path.isfile(args.video_input):
        parser.error(f"--video-input {args.video_input} is not a file")
    if args.video_input and args.output:
        try:
            _video_output_path(args.output, args.video_input)
        except FileExistsError as e:
            parser.error(str(e))
    if args.input:
        try:
            args.input = expand_inputs(args.input)
        except FileNotFoundError as e:
            parser.error(str(e))


def main(argv=None):
    """Run the demo with the command line `argv` (default sys.argv[1:]); returns the paths
    written."""
    parser = get_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    setup_logger(name="fvcore")
    logger = setup_logger()
    logger.info(f"Arguments: {args}")
    demo = VisualizationDemo(setup_cfg(args))
    try:
        if args.input:
            return run_on_images(demo, args, logger)
        if args.video_input:
            return run_on_video(demo, args, logger)
        return run_on_webcam(demo, args, logger)
    except DemoError as e:
        raise SystemExit(f"demo.py: error: {e}") from e


if __name__ == "__main__":
    main()
