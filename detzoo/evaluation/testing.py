"""Helpers around evaluation results: the "copypaste" lines of the logs, the check against
cfg.TEST.EXPECTED_RESULTS, and flattening for event writers.

Results are, everywhere in detzoo, a mapping task name -> {metric name: value}, e.g.
{"bbox": {"AP": 40.2, "AP50": 61.0, ...}, "segm": {...}}.
"""
import logging
import pprint
import sys
from collections.abc import Mapping

import numpy as np

__all__ = ["print_csv_format", "verify_results", "flatten_results_dict"]

logger = logging.getLogger(__name__)


def print_csv_format(results):
    """Log the main metrics of each task as comma-separated lines starting with "copypaste:",
    ready to be pasted into a spreadsheet.

    Metrics whose name holds a "-" (the per-category "AP-person", "IoU-road", ...) are left out.

    Args:
        results (Mapping): task name -> {metric name: value}; a task may also map to a single
            value, which is logged as "task=value".
    """
    if not isinstance(results, Mapping):
        raise TypeError(f"print_csv_format expects a mapping task -> {{metric: value}}, got {type(results).__name__}")
    for task, metrics in results.items():
        if isinstance(metrics, Mapping):
            main = [(name, value) for name, value in metrics.items() if "-" not in name]
            logger.info(f"copypaste: Task: {task}")
            logger.info("copypaste: " + ",".join(name for name, _ in main))
            logger.info("copypaste: " + ",".join(_format_value(value) for _, value in main))
        else:
            logger.info(f"copypaste: {task}={metrics}")


def _format_value(value):
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)


def verify_results(cfg, results):
    """Compare `results` with cfg.TEST.EXPECTED_RESULTS, a list of
    [task, metric, expected value, tolerance].

    A missing metric, a non-finite value or one further than `tolerance` from the expected value
    fails the check: the failure is logged with both sets of numbers and the process exits with
    status 1 (as Detectron2 does, so that CI jobs fail).

    Returns:
        bool: True when every expectation holds (or there is none).
    """
    expected_results = cfg.TEST.EXPECTED_RESULTS
    if not len(expected_results):
        return True
    failures = [_check_expectation(results, e) for e in expected_results]
    failures = [problem for problem in failures if problem is not None]
    if failures:
        logger.error("Result verification failed!")
        for problem in failures:
            logger.error(problem)
        logger.error("Expected results: " + str(expected_results))
        logger.error("Actual results: " + pprint.pformat(results))
        sys.exit(1)
    logger.info("Results verification passed.")
    return True


def _check_expectation(results, expectation):
    """A message saying what is wrong with one [task, metric, expected, tolerance], or None."""
    if len(expectation) != 4:
        return (f"cfg.TEST.EXPECTED_RESULTS entry {expectation!r} must be [task, metric, expected value, "
                "tolerance]")
    task, metric, expected, tolerance = expectation
    actual = results.get(task, {}).get(metric) if isinstance(results.get(task), Mapping) else None
    if actual is None:
        return f"{task}/{metric}: not in the results"
    if not np.isfinite(actual):
        return f"{task}/{metric}: {actual} is not finite"
    if abs(actual - expected) > tolerance:
        return f"{task}/{metric}: {actual:.4f}, expected {expected} +- {tolerance}"
    return None


def flatten_results_dict(results):
    """Nested mappings of scalars flattened to one level, keys joined with "/":
    {"bbox": {"AP": 1.0}} -> {"bbox/AP": 1.0}.

    Args:
        results (Mapping): nested mappings whose leaves are scalars.

    Returns:
        dict[str, scalar]
    """
    flat = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_results_dict(value).items():
                flat[f"{key}/{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat
