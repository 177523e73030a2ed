"""detzoo's PathManager (iopath): local files, http(s) URLs, and the `detectron2://` prefix of
Detectron2's model zoo, downloaded once into a cache and verified.

Cache: $DETZOO_CACHE, default ~/.torch/detzoo_cache. A file downloaded by hand can be put at
the cache path the error message names, and is then used without any network access.
"""
import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request

from iopath.common.file_io import HTTPURLHandler, PathHandler
from iopath.common.file_io import PathManager as _PathManagerBase

__all__ = ["PathManager", "get_cache_dir", "DETECTRON2_URL_PREFIX"]

logger = logging.getLogger(__name__)

DETECTRON2_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
# Detectron2's published file names carry the first 6 (or more) hex digits of their md5:
# model_final_f10217.pkl.
_MD5_IN_NAME = re.compile(r"_([0-9a-f]{6,})\.(pkl|pth)$")


def get_cache_dir():
    """Where downloaded files are kept: $DETZOO_CACHE or ~/.torch/detzoo_cache."""
    return os.path.expanduser(os.environ.get("DETZOO_CACHE", "~/.torch/detzoo_cache"))


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_to_cache(url, relative_path, timeout=60):
    """Return the local cached copy of `url`, downloading it first if needed.

    The file lands at <cache>/<relative_path>; if its name carries an md5 prefix the
    download is verified. Raises RuntimeError naming the URL and the cache path when the
    download fails (e.g. offline).
    """
    local = os.path.join(get_cache_dir(), relative_path)
    expected = _MD5_IN_NAME.search(os.path.basename(local))
    if os.path.isfile(local):
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    logger.info(f"Downloading {url} to {local} ...")
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(local), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        if expected and not _md5(tmp).startswith(expected.group(1)):
            raise RuntimeError(f"downloaded {url} but its md5 {_md5(tmp)} does not start with {expected.group(1)} "
                               "(the file is corrupt or incomplete)")
        os.replace(tmp, local)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise RuntimeError(
            f"could not download {url}: {e}. If this machine is offline, download the file elsewhere and "
            f"put it at {local} (or set DETZOO_CACHE to the folder that holds "
            f"{relative_path}).") from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return local


class Detectron2Handler(PathHandler):
    """`detectron2://X` -> Detectron2's model-zoo file X, cached locally."""

    PREFIX = "detectron2://"

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        relative = path[len(self.PREFIX):]
        return download_to_cache(DETECTRON2_URL_PREFIX + relative, os.path.join("detectron2", relative))

    def _open(self, path, mode="r", **kwargs):
        if "w" in mode or "a" in mode:
            raise ValueError(f"{path}: detectron2:// files are read-only")
        return open(self._get_local_path(path), mode)


class CachedHTTPHandler(HTTPURLHandler):
    """http(s) URLs, cached under <cache>/http/<host>/<path> (Detectron2's published files under
    <cache>/detectron2/, shared with detectron2:// URLs), with the same offline message."""

    def _get_local_path(self, path, force=False, **kwargs):
        if path.startswith(DETECTRON2_URL_PREFIX):  # the file detectron2://... names: one cached copy
            relative = os.path.join("detectron2", path[len(DETECTRON2_URL_PREFIX):].split("?")[0])
        else:
            relative = os.path.join("http", re.sub(r"^https?://", "", path).split("?")[0])
        return download_to_cache(path, relative)


PathManager = _PathManagerBase()
PathManager.register_handler(CachedHTTPHandler())
PathManager.register_handler(Detectron2Handler())
