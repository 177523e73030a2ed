"""The PathManager used to read checkpoints (re-exported from detzoo.utils.file_io, which
knows the `detectron2://` model-zoo prefix)."""
from detzoo.utils.file_io import PathManager

__all__ = ["PathManager"]
