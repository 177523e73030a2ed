#!/usr/bin/env python
"""Convert torchvision ImageNet ResNet weights to detzoo's backbone names.

    python tools/convert-torchvision-to-detzoo.py resnet50-0676ba61.pth R-50-torchvision.pkl

Use the result with MODEL.WEIGHTS R-50-torchvision.pkl, MODEL.PIXEL_MEAN [123.675, 116.280, 103.530],
MODEL.PIXEL_STD [58.395, 57.120, 57.375], INPUT.FORMAT "RGB" and MODEL.RESNETS.STRIDE_IN_1X1 False
(torchvision's bottlenecks put the stride in the 3x3 conv).
"""
import argparse
import pickle
import sys

import torch


def convert_name(key):
    """torchvision ResNet key -> detzoo ResNet key (None for the classifier)."""
    if key.startswith("fc."):
        return None
    if not key.startswith("layer"):
        key = "stem." + key  # conv1 and bn1 of the stem
    for i in range(4):
        key = key.replace(f"layer{i + 1}.", f"res{i + 2}.")
    for i in range(4):
        key = key.replace(f"bn{i}", f"conv{i}.norm")
    key = key.replace("downsample.0", "shortcut")
    return key.replace("downsample.1", "shortcut.norm")


def convert(state_dict):
    converted = {}
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        new_key = convert_name(key)
        if new_key is not None:
            converted[new_key] = value.detach().cpu().numpy()
    return {"model": converted, "__author__": "torchvision", "matching_heuristics": True}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="torchvision .pth state dict")
    parser.add_argument("output", help="output .pkl")
    args = parser.parse_args(argv)
    state = torch.load(args.input, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not any(k.startswith("layer1.") for k in state):
        sys.exit(f"{args.input}: not a torchvision ResNet state dict (no layer1.* keys)")
    result = convert(state)
    with open(args.output, "wb") as f:
        pickle.dump(result, f)
    print(f"wrote {len(result['model'])} tensors to {args.output}")


if __name__ == "__main__":
    main()
