"""detzoo.model_zoo: config lookup, checkpoint URLs, building models and loading zoo weights.

No network: trained weights come from a fabricated checkpoint served through a file:// URL
(the zoo's URL prefix is pointed at a temporary folder), and the offline case points it at a
closed local port. Nothing here depends on the working directory.
"""
import hashlib
import os
import pickle
import re
import time
from pathlib import Path

import pytest
import torch

import detzoo
from detzoo import model_zoo
from detzoo.model_zoo.model_zoo import _ModelZooUrls

SMALL_CONFIG = "quick_schedules/detzoo/faster_rcnn_R_50_FPN_shapes.yaml"
SMALL_NAME = SMALL_CONFIG[: -len(".yaml")]
MODEL_ID = "123456789"
CONFIG_ROOT = Path(detzoo.__file__).resolve().parent / "model_zoo" / "configs"
ALL_CONFIGS = model_zoo.list_configs()
PUBLISHED = sorted(f"{name}.yaml" for name in _ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX)
URL_PATTERN = re.compile(r"^https://dl\.fbaipublicfiles\.com/detectron2/"
                         r"(?P<name>[\w.-]+/[\w.-]+)/(?P<id>\d+)/model_(final|\d{7})_[0-9a-f]{6}\.pkl$")


def _md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- configs
def test_list_configs_is_the_packaged_folder():
    on_disk = sorted(p.relative_to(CONFIG_ROOT).as_posix() for p in CONFIG_ROOT.rglob("*.yaml"))
    assert ALL_CONFIGS == on_disk
    assert "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml" in ALL_CONFIGS


@pytest.mark.parametrize("config", ALL_CONFIGS)
def test_every_config_resolves_and_merges(config):
    path = model_zoo.get_config_file(config)
    assert os.path.isabs(path) and Path(path) == CONFIG_ROOT / config
    cfg = model_zoo.get_config(config)
    assert cfg.MODEL.META_ARCHITECTURE


def test_missing_config_names_path_and_near_matches():
    with pytest.raises(RuntimeError, match="not in the model zoo") as info:
        model_zoo.get_config_file("mask_rcnn_R_50_FPN_3x.yaml")
    assert "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml" in str(info.value)
    assert str(CONFIG_ROOT / "mask_rcnn_R_50_FPN_3x.yaml") in str(info.value)
    with pytest.raises(RuntimeError, match="COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"):
        model_zoo.get_config_file("COCO-Detection/faster_rcnn_R50_FPN_1x.yaml")


def test_paths_outside_the_zoo_are_refused():
    with pytest.raises(RuntimeError, match="not in the model zoo"):
        model_zoo.get_config_file("../__init__.py")


# ----------------------------------------------------------------------------- checkpoint URLs
@pytest.mark.parametrize("config", PUBLISHED)
def test_published_checkpoint_urls(config):
    url = model_zoo.get_checkpoint_url(config)
    match = URL_PATTERN.match(url)
    assert match, url
    assert match.group("name") == config[: -len(".yaml")]
    assert model_zoo.get_checkpoint_url(config[: -len(".yaml")]) == url  # Detectron2 takes both
    model_zoo.get_config_file(config)  # every published checkpoint has its config in the zoo


def test_known_url_and_trained_config():
    config = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    expected = ("https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
                "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl")
    assert model_zoo.get_checkpoint_url(config) == expected
    assert model_zoo.get_config(config, trained=True).MODEL.WEIGHTS == expected
    assert model_zoo.get_config(config).MODEL.WEIGHTS.startswith("detectron2://ImageNetPretrained/")


def test_unpublished_checkpoint_names_the_config():
    config = "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
    with pytest.raises(RuntimeError, match=re.escape(f"no trained checkpoint for '{config}'")):
        model_zoo.get_checkpoint_url(config)
    with pytest.raises(RuntimeError, match="COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"):
        model_zoo.get_checkpoint_url("COCO-Detection/faster_rcnn_R_50_FPN_2x.yaml")
    with pytest.raises(RuntimeError, match="no trained checkpoint"):
        model_zoo.get_config(config, trained=True)


# ----------------------------------------------------------------------------- models and weights
def test_get_untrained_builds_small_model():
    model = model_zoo.get(SMALL_CONFIG)
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert isinstance(model, torch.nn.Module) and model.training
    assert next(model.parameters()).device.type == expected_device
    assert model.roi_heads.box_predictor.cls_score.out_features == 3 + 1  # NUM_CLASSES + background


@pytest.fixture(scope="module")
def saved_weights():
    """A state dict shaped like SMALL_CONFIG's model, values unlike any random init."""
    model = model_zoo.get(SMALL_CONFIG, device="cpu")
    generator = torch.Generator().manual_seed(0)
    return {name: torch.rand(value.shape, generator=generator, dtype=value.dtype) + 5.0
            if value.is_floating_point() else value.clone()
            for name, value in model.state_dict().items()}


@pytest.fixture
def zoo_server(tmp_path, monkeypatch):
    """Point the zoo's URL prefix at tmp_path/server (file://) and the cache at tmp_path/cache."""
    server = tmp_path / "server"
    monkeypatch.setattr(_ModelZooUrls, "S3_PREFIX", server.as_uri() + "/")
    monkeypatch.setenv("DETZOO_CACHE", str(tmp_path / "cache"))
    return server


def _publish(server, weights, monkeypatch, md5_prefix=None):
    """Write `weights` as a Detectron2-format .pkl named after its md5 (or `md5_prefix`) and
    register it as SMALL_CONFIG's checkpoint; return (file name, real md5)."""
    folder = server / SMALL_NAME / MODEL_ID
    folder.mkdir(parents=True)
    staging = folder / "staging.pkl"
    payload = {"model": {k: v.numpy() for k, v in weights.items()}, "__author__": "detzoo tests"}
    with open(staging, "wb") as f:
        pickle.dump(payload, f)
    md5 = _md5(staging)
    file_name = f"model_final_{md5_prefix or md5[:6]}.pkl"
    staging.rename(folder / file_name)
    monkeypatch.setitem(_ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX, SMALL_NAME, f"{MODEL_ID}/{file_name}")
    return file_name, md5


def _cache_path(tmp_path, file_name):
    return tmp_path / "cache" / "detectron2" / SMALL_NAME / MODEL_ID / file_name


def test_get_trained_loads_checkpoint(zoo_server, tmp_path, monkeypatch, saved_weights):
    file_name, _ = _publish(zoo_server, saved_weights, monkeypatch)
    model = model_zoo.get(SMALL_CONFIG, trained=True, device="cpu")
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), saved_weights[name], rtol=0, atol=0, msg=name)
    assert _cache_path(tmp_path, file_name).is_file()
    # A second call reads the cached copy: it works with the "server" gone.
    (zoo_server / SMALL_NAME / MODEL_ID / file_name).unlink()
    again = model_zoo.get(SMALL_CONFIG, trained=True, device="cpu")
    assert torch.equal(again.backbone.bottom_up.stem.conv1.weight.detach(),
                       saved_weights["backbone.bottom_up.stem.conv1.weight"])


def test_download_with_wrong_md5_fails_and_keeps_nothing(zoo_server, tmp_path, monkeypatch, saved_weights):
    wrong = "abcdef"
    file_name, md5 = _publish(zoo_server, saved_weights, monkeypatch, md5_prefix=wrong)
    assert not md5.startswith(wrong)
    url = model_zoo.get_checkpoint_url(SMALL_CONFIG)
    with pytest.raises(RuntimeError) as info:
        model_zoo.get(SMALL_CONFIG, trained=True, device="cpu")
    message = str(info.value)
    assert url in message and wrong in message and md5[:6] in message
    cached = _cache_path(tmp_path, file_name)
    assert not cached.exists() and not list(cached.parent.glob("*.part"))


def test_corrupt_cached_file_is_deleted(zoo_server, tmp_path, monkeypatch, saved_weights):
    file_name, md5 = _publish(zoo_server, saved_weights, monkeypatch)
    cached = _cache_path(tmp_path, file_name)
    cached.parent.mkdir(parents=True)
    corrupt = b"truncated download"  # e.g. an interrupted manual download
    cached.write_bytes(corrupt)
    url = model_zoo.get_checkpoint_url(SMALL_CONFIG)
    with pytest.raises(RuntimeError) as info:
        model_zoo.get(SMALL_CONFIG, trained=True, device="cpu")
    message = str(info.value)
    assert url in message and f"expected {md5[:6]}" in message
    assert f"md5 prefix {hashlib.md5(corrupt).hexdigest()[:6]}" in message
    assert not cached.exists()


def test_offline_fails_fast_naming_url_and_cache_path(tmp_path, monkeypatch):
    monkeypatch.setattr(_ModelZooUrls, "S3_PREFIX", "http://127.0.0.1:9/")  # discard port: refused
    monkeypatch.setenv("DETZOO_CACHE", str(tmp_path / "cache"))
    config = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    url = model_zoo.get_checkpoint_url(config)
    cached = tmp_path / "cache" / "detectron2" / url[len("http://127.0.0.1:9/"):]
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        model_zoo.get(config, trained=True, device="cpu")
    assert time.perf_counter() - start < 10
    assert url in str(info.value) and str(cached) in str(info.value)
