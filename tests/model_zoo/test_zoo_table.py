"""tools/bench/zoo_table.py, the generator of MODEL_ZOO.md: measured figures come only from the
benchmark JSON, every zoo model gets a row, and the committed MODEL_ZOO.md is up to date."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "bench" / "zoo_table.py"


@pytest.fixture(scope="module")
def zoo_table():
    spec = importlib.util.spec_from_file_location("zoo_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(text, config):
    """The table row whose link points at `config`."""
    rows = [line for line in text.splitlines() if f"/{config})" in line and line.startswith("| [")]
    assert len(rows) == 1, (config, rows)
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_measured_figures_come_from_the_json(zoo_table, tmp_path):
    measured = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
    document = {"cpu": "Test CPU (avx2)", "torch": "9.9", "threads": 2,
                "results": {measured: {"inference_s_per_im": 1.23456, "train_s_per_iter": 12.345,
                                      "measured": "2026-01-02 03:04"}}}
    json_path = tmp_path / "zoo_cpu.json"
    json_path.write_text(json.dumps(document))
    output = tmp_path / "MODEL_ZOO.md"
    assert zoo_table.main(["--json", str(json_path), "--output", str(output)]) == 0
    text = output.read_text()
    assert "Test CPU (avx2)" in text and "2 threads" in text
    assert "measured 2026-01-02 03:04 to 2026-01-02 03:04 UTC" in text
    assert _row(text, measured)[-3:] == ["1.23", "12.3", "2026-01-02 03:04"]
    assert _row(text, "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")[-3:] == ["–", "–", "–"]
    # published accuracy, model id and download of the same row
    row = _row(text, measured)
    assert "37.9" in row and "137257794" in row
    assert any("model_final_b275ba.pkl" in cell for cell in row)


def test_every_zoo_model_has_one_row(zoo_table, tmp_path):
    from detzoo import model_zoo

    output = tmp_path / "MODEL_ZOO.md"
    assert zoo_table.main(["--json", str(tmp_path / "absent.json"), "--output", str(output)]) == 0
    text = output.read_text()
    models = [c for c in model_zoo.list_configs()
              if not c.rsplit("/", 1)[-1].startswith("Base-") and not c.startswith("quick_schedules/")]
    for config in models:
        _row(text, config)
    assert "does not exist" in text


def test_committed_model_zoo_md_is_up_to_date(zoo_table):
    assert zoo_table.main(["--check"]) == 0, "MODEL_ZOO.md is stale: run python tools/bench/zoo_table.py"
