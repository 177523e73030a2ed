"""tools/train_net.py and tools/plain_train_net.py as a user runs them: training in two CPU
processes (`--num-gpus 2`, gloo) with a loader worker each, then `--eval-only` of the saved
checkpoint in one process. The predictions of the distributed evaluation at the end of training
(each process runs half of the images) must be those of the single-process evaluation."""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join(REPO, "configs", "quick_schedules", "detzoo", "mask_rcnn_R_18_FPN_shapes_demo.yaml")
# A few iterations, and a cheaper evaluation than the demo's (50 images at 224 px). A model this
# young scores little: score threshold 0 and 10 detections per image always give boxes and masks.
SHORT = ["SOLVER.MAX_ITER", "6", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2", "SOLVER.STEPS", "(4,)",
         "SOLVER.CHECKPOINT_PERIOD", "4", "TEST.EVAL_PERIOD", "0", "INPUT.MIN_SIZE_TEST", "224",
         "INPUT.MAX_SIZE_TEST", "384", "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
         "0.0", "TEST.DETECTIONS_PER_IMAGE", "10"]
DETECTIONS = 10


def _run(script, args, env, cwd):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", script), *args], capture_output=True,
                            text=True, env=env, cwd=cwd, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    return result.stdout + result.stderr


def _predictions(output_dir):
    """{image_id: instances in COCO's results format}, from the evaluator's saved predictions
    (train_net.py writes them into inference/, plain_train_net.py into inference/<dataset>/)."""
    paths = glob.glob(os.path.join(output_dir, "inference", "**", "instances_predictions.pth"), recursive=True)
    assert len(paths) == 1, paths
    saved = torch.load(paths[0], weights_only=False)
    return {p["image_id"]: p.get("instances", []) for p in saved}


def _assert_same_predictions(ours, reference):
    assert ours.keys() == reference.keys() and len(ours) == 50  # every shapes_val image, once
    for image_id, instances in reference.items():
        other = ours[image_id]
        assert len(instances) == DETECTIONS and all("segmentation" in d for d in instances), image_id
        assert [d["category_id"] for d in other] == [d["category_id"] for d in instances], image_id
        for a, b in zip(other, instances):
            assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3) and a["score"] == pytest.approx(b["score"], abs=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The demo config trained for 6 iterations by train_net.py in 2 processes."""
    work = tmp_path_factory.mktemp("train_net")
    # One thread in every process, so that the single-process and the distributed evaluations
    # compute bit for bit alike (no reordering of near-equal scores).
    env = dict(os.environ, DETZOO_DATASETS=str(work / "datasets"), PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    out = work / "out"
    log = _run("train_net.py", ["--num-gpus", "2", "--config-file", CONFIG, "OUTPUT_DIR", str(out),
                                "DATALOADER.NUM_WORKERS", "1", *SHORT], env, work)
    return {"work": work, "env": env, "out": out, "log": log}


def test_train_net_in_two_cpu_processes(trained):
    out, log = trained["out"], trained["log"]
    assert "World size: 2" in log
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (out / "model_0000003.pth").is_file()
    checkpoint = torch.load(out / "model_final.pth", weights_only=False)
    # Detectron2's layout: the trainer's state holds the optimizer and the scheduler hook's
    assert checkpoint["iteration"] == 5 and "optimizer" in checkpoint["trainer"]["_trainer"]
    assert "LRScheduler" in checkpoint["trainer"]["hooks"]
    lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [line["iteration"] for line in lines if "total_loss" in line] == [5]
    assert "bbox/AP" in lines[-1] and "segm/AP" in lines[-1]  # the final evaluation, on the main process
    assert "copypaste: Task: segm" in log


@pytest.mark.parametrize("script", ["train_net.py", "plain_train_net.py"])
def test_eval_only_in_one_process_predicts_like_the_distributed_evaluation(trained, script):
    out = trained["work"] / f"eval_{script}"
    log = _run(script, ["--eval-only", "--config-file", CONFIG, "OUTPUT_DIR", str(out),
                        "MODEL.WEIGHTS", str(trained["out"] / "model_final.pth"), *SHORT], trained["env"], trained["work"])
    assert "copypaste: Task: bbox" in log and "Total inference time" in log
    _assert_same_predictions(_predictions(out), _predictions(trained["out"]))
