"""Every model-zoo config builds a model whose state-dict keys, shapes and dtypes are exactly
Detectron2's (../shared/parity/keys), so Detectron2 checkpoints load unchanged."""
import os

import pytest
import torch

from detzoo.config import get_cfg
from detzoo.modeling import build_model

from .zoo_utils import config_path, load_keys, parity_key_files


@pytest.mark.parametrize("name", parity_key_files())
def test_state_dict_matches_detectron2(name):
    path = config_path(name)
    assert os.path.isfile(path), f"no config for parity key file {name}: expected {path}"
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    model = build_model(cfg)
    ours = {k: (list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}
    ref = {k: (list(v[0]), v[1]) for k, v in load_keys(name).items()}
    missing = sorted(set(ref) - set(ours))
    unexpected = sorted(set(ours) - set(ref))
    wrong = sorted(k for k in set(ref) & set(ours) if ref[k] != ours[k])
    assert not (missing or unexpected or wrong), (
        f"{name}: missing {missing[:10]} ({len(missing)}), unexpected {unexpected[:10]} ({len(unexpected)}), "
        f"shape/dtype differs {[(k, ref[k], ours[k]) for k in wrong[:10]]} ({len(wrong)})")
