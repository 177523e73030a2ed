"""Event writers: JSON lines, tensorboard files, the console line, W&B / MLflow (faked)."""
import json
import logging
import statistics
import sys
import types

import pytest
import torch

from detzoo.utils import events
from detzoo.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    JSONWriter,
    MLflowWriter,
    TensorboardXWriter,
    WandbWriter,
)


def _record(storage, start, stop):
    """Losses 10*i and lr i/100 at iterations [start, stop)."""
    for i in range(start, stop):
        storage.iter = i
        storage.put_scalar("loss_cls", 10.0 * i)
        storage.put_scalar("lr", i / 100, smoothing_hint=False)


def test_json_writer_writes_each_new_iteration_once(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path), window_size=3)
    with EventStorage() as storage:
        _record(storage, 0, 5)
        writer.write()
        writer.write()  # nothing new
        _record(storage, 5, 7)
        storage.put_scalar("bbox/AP", 42.0, smoothing_hint=False, cur_iter=2)  # old iteration: not rewritten
        writer.write()
    writer.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [4, 6]
    # Smoothed scalars are the median of the last window_size values; others as they are.
    assert lines[0]["loss_cls"] == statistics.median([20.0, 30.0, 40.0])
    assert lines[0]["lr"] == pytest.approx(0.04)
    assert lines[1]["loss_cls"] == statistics.median([40.0, 50.0, 60.0])
    assert "bbox/AP" not in lines[1]


def test_json_writer_appends(tmp_path):
    path = tmp_path / "metrics.json"
    for start in (0, 3):
        writer = JSONWriter(str(path))
        with EventStorage(start) as storage:
            _record(storage, start, start + 3)
            writer.write()
        writer.close()
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [2, 5]


def test_tensorboard_writer(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorboardXWriter(str(tmp_path), window_size=1)
    with EventStorage() as storage:
        _record(storage, 0, 3)
        storage.put_image("inputs", torch.rand(3, 8, 8))
        storage.put_histogram("weights", torch.arange(10.0), bins=5)
        writer.write()
        assert storage._vis_data == [] and storage._histograms == []
        _record(storage, 3, 4)
        writer.write()
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("loss_cls")]
    assert loss == [(2, 20.0), (3, 30.0)]
    assert [e.step for e in events.Scalars("lr")] == [2, 3]
    assert len(events.Images("inputs")) == 1
    histogram = events.Histograms("weights")[0].histogram_value
    assert (histogram.min, histogram.max, histogram.num) == (0.0, 9.0, 10)


def test_tensorboard_writer_without_writes_creates_nothing(tmp_path):
    TensorboardXWriter(str(tmp_path / "tb")).close()
    assert not (tmp_path / "tb").exists()


def test_common_metric_printer(caplog):
    printer = CommonMetricPrinter(max_iter=100, window_size=4)
    with EventStorage() as storage, caplog.at_level(logging.INFO, logger="detzoo.utils.events"):
        for i in range(10):
            storage.iter = i
            storage.put_scalars(loss_cls=float(i), total_loss=2.0 * i, time=0.5, data_time=0.25)
            storage.put_scalar("lr", 0.02, smoothing_hint=False)
        printer.write()
        line = caplog.records[-1].getMessage()
        storage.iter = 100  # after training: nothing to print
        printer.write()
    assert len(caplog.records) == 1
    # 0.5 s/iteration for the 90 iterations left.
    assert line.startswith("eta: 0:00:45  iter: 9  ")
    assert f"loss_cls: {statistics.median([6.0, 7.0, 8.0, 9.0]):.4g}" in line
    assert "total_loss: 15" in line
    assert "time: 0.5000  last_time: 0.5000  data_time: 0.2500  last_data_time: 0.2500" in line
    assert "lr: 0.02" in line
    assert "max_mem: " in line and line.endswith("M")


def test_common_metric_printer_eta_without_timer(caplog, monkeypatch):
    clock = iter([100.0, 110.0])
    monkeypatch.setattr(events, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    printer = CommonMetricPrinter(max_iter=50)
    with EventStorage() as storage, caplog.at_level(logging.INFO, logger="detzoo.utils.events"):
        storage.put_scalar("total_loss", 1.0)
        printer.write()  # first write: no pace known yet
        storage.iter = 10
        storage.put_scalar("total_loss", 1.0)
        printer.write()
    assert caplog.records[0].getMessage().startswith("iter: 0")
    # 1 s per iteration, 39 iterations left.
    assert caplog.records[1].getMessage().startswith("eta: 0:00:39  iter: 10")


def _fake_module(monkeypatch, name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_wandb_writer_with_a_fake_wandb(monkeypatch):
    logged, finished = [], []

    class Run:
        def log(self, data, step):
            logged.append((step, dict(data)))

        def finish(self):
            finished.append(True)

    init_args = {}

    def init(**kwargs):
        init_args.update(kwargs)
        return Run()

    _fake_module(monkeypatch, "wandb", run=None, init=init)
    writer = WandbWriter(project="p", window_size=1)
    with EventStorage() as storage:
        _record(storage, 0, 2)
        writer.write()
        writer.write()
    writer.close()
    assert init_args["project"] == "p"
    assert logged == [(1, {"loss_cls": 10.0, "lr": 0.01})]
    assert finished == [True]


def test_mlflow_writer_with_a_fake_mlflow(monkeypatch):
    calls = []
    _fake_module(monkeypatch, "mlflow", active_run=lambda: None,
                 start_run=lambda run_name=None: calls.append(("start", run_name)),
                 log_metrics=lambda metrics, step: calls.append(("log", step, metrics)),
                 end_run=lambda: calls.append(("end",)),
                 set_tracking_uri=lambda uri: calls.append(("uri", uri)),
                 set_experiment=lambda name: calls.append(("experiment", name)))
    writer = MLflowWriter(experiment_name="e", run_name="r", tracking_uri="file:/tmp/x", window_size=1)
    with EventStorage() as storage:
        storage.put_scalar("[metric]grad_scaler", 2.0, smoothing_hint=False)
        writer.write()
    writer.close()
    assert calls == [("uri", "file:/tmp/x"), ("experiment", "e"), ("start", "r"),
                     ("log", 0, {"_metric_grad_scaler": 2.0}), ("end",)]


def test_missing_packages_raise_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError):
        WandbWriter()
    with pytest.raises(ImportError):
        MLflowWriter()
