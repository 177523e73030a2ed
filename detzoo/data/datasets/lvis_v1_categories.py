"""The LVIS v1 category list: 1203 categories with ids 1..1203.

Detectron2 ships this list as a Python literal (ids, names, synonyms, synsets, frequencies,
definitions). detzoo does not: the same list is the "categories" field of every LVIS v1
annotation file (lvis_v1_train.json, lvis_v1_val.json and the image_info test files), so it
is read from the dataset's own file when first needed. `MetadataCatalog.get("lvis_v1_val")`
still answers `thing_classes` (and `class_image_count`, for the federated loss) without the
dataset being loaded: the metadata is filled lazily from its `json_file` on first access (see
detzoo.data.datasets.lvis). Each category there is a dict with "id", "name", "synset",
"synonyms", "frequency" ("r", "c" or "f") and, in the train/val files, "image_count".
"""

# Number of categories of LVIS v1; a file of an "lvis_v1" dataset with another count is
# reported in the log (it may be a deliberate subset).
NUM_CATEGORIES = 1203

# The files of the v1 release that carry the category list, relative to $DETZOO_DATASETS.
ANNOTATION_FILES = (
    "lvis/lvis_v1_train.json",
    "lvis/lvis_v1_val.json",
    "lvis/lvis_v1_image_info_test_dev.json",
    "lvis/lvis_v1_image_info_test_challenge.json",
)
