"""inference_on_dataset with a fake model and loader, DatasetEvaluators, inference_context, and
the result helpers of evaluation/testing.py."""
import logging
import re
import time
from collections import OrderedDict

import pytest
import torch
from torch import nn

from detzoo.config import get_cfg
from detzoo.evaluation import DatasetEvaluator, DatasetEvaluators, inference_context, inference_on_dataset
from detzoo.evaluation.testing import flatten_results_dict, print_csv_format, verify_results


class SlowStartModel(nn.Module):
    """Sleeps `slow` seconds on the first `num_slow` calls, `fast` afterwards; records its mode."""

    def __init__(self, num_slow=5, slow=0.1, fast=0.002):
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.calls, self.num_slow, self.slow, self.fast = 0, num_slow, slow, fast
        self.modes = []

    def forward(self, inputs):
        self.modes.append((self.training, torch.is_grad_enabled()))
        time.sleep(self.slow if self.calls < self.num_slow else self.fast)
        self.calls += 1
        return [{"value": x["value"] * 2} for x in inputs]


class SumEvaluator(DatasetEvaluator):
    def __init__(self, key="sum"):
        self.key = key

    def reset(self):
        self.total = 0
        self.resets = getattr(self, "resets", 0) + 1

    def process(self, inputs, outputs):
        self.total += sum(o["value"] for o in outputs)

    def evaluate(self):
        return {self.key: {"total": self.total}}


class Captured(logging.Handler):
    """The records of one logger, whether or not its records propagate to the root logger."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    @property
    def text(self):
        return "\n".join(r.getMessage() for r in self.records)


def capture(name):
    logger = logging.getLogger(name)
    handler, level = Captured(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def evaluator_log():
    yield from capture("detzoo.evaluation.evaluator")


def loader(n):
    return [[{"value": i}] for i in range(n)]


def test_runs_in_eval_mode_and_times_without_warmup(evaluator_log):
    model = SlowStartModel()
    model.train()
    evaluator = SumEvaluator()
    results = inference_on_dataset(model, loader(9), evaluator)
    assert results == {"sum": {"total": 2 * sum(range(9))}}
    assert evaluator.resets == 1
    assert all(mode == (False, False) for mode in model.modes)  # eval mode, no grad
    assert model.training  # restored

    text = evaluator_log.text
    total = re.search(r"Total inference time: \S+ \(([\d.]+) s / iter per device, on 1 devices\)", text)
    compute = re.search(r"Total inference pure compute time: \S+ \(([\d.]+) s / iter per device, on 1 devices\)",
                        text)
    assert total and compute, text
    # the five 0.1 s warm-up calls are not counted; the 4 later ones take ~2 ms
    assert float(compute.group(1)) < 0.05
    assert float(total.group(1)) < 0.05
    assert float(compute.group(1)) <= float(total.group(1))
    assert "Start inference on 9 batches" in text


def test_progress_lines(evaluator_log):
    inference_on_dataset(SlowStartModel(num_slow=0), loader(12), SumEvaluator())
    assert re.search(r"Inference done \d+/12\. Dataloading: [\d.]+ s/iter\. Inference: [\d.]+ s/iter\. "
                     r"Eval: [\d.]+ s/iter\. Total: [\d.]+ s/iter\. ETA=", evaluator_log.text)


def test_single_batch_and_empty_loader(evaluator_log):
    results = inference_on_dataset(SlowStartModel(num_slow=0), loader(1), SumEvaluator())
    assert results["sum"]["total"] == 0
    assert "s / iter per device" in evaluator_log.text
    assert inference_on_dataset(SlowStartModel(), [], SumEvaluator()) == {"sum": {"total": 0}}
    assert "yielded no batch" in evaluator_log.text


def test_evaluator_none_list_and_plain_callable():
    assert inference_on_dataset(SlowStartModel(num_slow=0), loader(3), None) == {}
    results = inference_on_dataset(SlowStartModel(num_slow=0), loader(3), [SumEvaluator("a"), SumEvaluator("b")])
    assert results == {"a": {"total": 6}, "b": {"total": 6}}
    # a model that is not an nn.Module is just called
    results = inference_on_dataset(lambda inputs: [{"value": 1} for _ in inputs], loader(4), SumEvaluator())
    assert results["sum"]["total"] == 4


def test_callbacks_order():
    events = []
    callbacks = {name: (lambda n=name: events.append(n))
                 for name in ("on_start", "before_inference", "after_inference", "on_end")}
    inference_on_dataset(SlowStartModel(num_slow=0), loader(2), None, callbacks=callbacks)
    assert events == ["on_start", "before_inference", "after_inference", "before_inference", "after_inference",
                      "on_end"]
    with pytest.raises(ValueError, match="unknown callbacks"):
        inference_on_dataset(SlowStartModel(), loader(2), None, callbacks={"after_all": lambda: None})


def test_bad_arguments():
    with pytest.raises(TypeError, match="fixed length"):
        inference_on_dataset(SlowStartModel(), iter(loader(2)), None)
    with pytest.raises(TypeError, match="DatasetEvaluator"):
        inference_on_dataset(SlowStartModel(), loader(2), object())


def test_evaluators_merge_and_reject_duplicate_tasks():
    merged = DatasetEvaluators([SumEvaluator("a"), SumEvaluator("b")])
    merged.reset()
    merged.process([{}], [{"value": 3}])
    assert merged.evaluate() == OrderedDict(a={"total": 3}, b={"total": 3})
    duplicated = DatasetEvaluators([SumEvaluator("a"), SumEvaluator("a")])
    duplicated.reset()
    with pytest.raises(ValueError, match="task 'a'"):
        duplicated.evaluate()
    assert DatasetEvaluators([]).evaluate() == {}


def test_inference_context_restores_mode_on_error():
    model = nn.Linear(1, 1)
    model.train()
    with pytest.raises(RuntimeError):
        with inference_context(model):
            assert not model.training
            raise RuntimeError("boom")
    assert model.training
    model.eval()
    with inference_context(model):
        pass
    assert not model.training


# ------------------------------------------------------------------------- testing.py
@pytest.fixture
def testing_log():
    yield from capture("detzoo.evaluation.testing")


def test_print_csv_format(testing_log):
    print_csv_format(OrderedDict(bbox={"AP": 40.12346, "AP50": 60.0, "AP-person": 1.0}, accuracy=0.5))
    lines = [r.getMessage() for r in testing_log.records]
    assert lines[:3] == ["copypaste: Task: bbox", "copypaste: AP,AP50", "copypaste: 40.1235,60.0000"]
    assert lines[3] == "copypaste: accuracy=0.5"
    with pytest.raises(TypeError):
        print_csv_format([1, 2])


def test_verify_results(testing_log):
    cfg = get_cfg()
    results = {"bbox": {"AP": 40.0}}
    assert verify_results(cfg, results)  # no expectation
    cfg.TEST.EXPECTED_RESULTS = [["bbox", "AP", 40.5, 1.0]]
    assert verify_results(cfg, results)
    for expected in ([["bbox", "AP", 42.0, 1.0]], [["bbox", "AP75", 40.0, 1.0]], [["segm", "AP", 40.0, 1.0]]):
        cfg.TEST.EXPECTED_RESULTS = expected
        with pytest.raises(SystemExit):
            verify_results(cfg, results)
    cfg.TEST.EXPECTED_RESULTS = [["bbox", "AP", 40.0, 1.0]]
    with pytest.raises(SystemExit):
        verify_results(cfg, {"bbox": {"AP": float("nan")}})
    assert "is not finite" in testing_log.text


def test_flatten_results_dict():
    nested = {"bbox": {"AP": 1.0, "per_class": {"cat": 2.0}}, "time": 3}
    assert flatten_results_dict(nested) == {"bbox/AP": 1.0, "bbox/per_class/cat": 2.0, "time": 3}
