"""The LVIS v0.5 category list: 1230 categories with ids 1..1230.

As for v1 (see lvis_v1_categories.py), detzoo does not embed the list: it is the
"categories" field of every LVIS v0.5 annotation file, read from the dataset's own file when
its metadata (`thing_classes`, `class_image_count`) is first needed.
"""

# Number of categories of LVIS v0.5; another count in an "lvis_v0.5" file is reported.
NUM_CATEGORIES = 1230

# The files of the v0.5 release that carry the category list, relative to $DETZOO_DATASETS.
ANNOTATION_FILES = (
    "lvis/lvis_v0.5_train.json",
    "lvis/lvis_v0.5_val.json",
    "lvis/lvis_v0.5_image_info_test.json",
)
