"""Shared by the model-zoo tests: where the configs and Detectron2's key files are."""
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")
PARITY = os.path.join(os.path.dirname(REPO), "shared", "parity")
KEYS_DIR = os.path.join(PARITY, "keys")


def parity_key_files():
    """Names (config path with '/' as '__', no extension) of every keys/<name>.json."""
    if not os.path.isdir(KEYS_DIR):
        raise FileNotFoundError(f"the parity key files are missing: {KEYS_DIR} (../shared/parity beside the repo)")
    return sorted(f[:-5] for f in os.listdir(KEYS_DIR) if f.endswith(".json"))


def config_path(name):
    return os.path.join(CONFIGS, name.replace("__", "/") + ".yaml")


def load_keys(name):
    with open(os.path.join(KEYS_DIR, name + ".json")) as f:
        return json.load(f)["keys"]


def zoo_configs():
    """Every model-zoo YAML (not Base-*, not quick_schedules)."""
    found = []
    for root, _, files in os.walk(CONFIGS):
        rel_root = os.path.relpath(root, CONFIGS)
        if rel_root.startswith("quick_schedules"):
            continue
        for f in files:
            if f.endswith(".yaml") and not f.startswith("Base-"):
                found.append(os.path.normpath(os.path.join(rel_root, f)))
    return sorted(found)
