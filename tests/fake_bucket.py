"""A fake bucket file system for tests: URIs `ram://<path>` that every library reaches
through its own remote-storage code path, stored offline.

- etils.epath (our code, grain, orbax's metadata): `ram://` is registered like `gs://`, with
  a backend that keeps `ram://<path>` in `<root>/<path>`.
- orbax's arrays (TensorStore): orbax is told `ram://` paths are bucket paths (as it treats
  `gs://`), and TensorStore's kvstore for them is `<root>/<path>`: the same files.
- TensorFlow (TensorBoard summaries through clu): `ram://` is TensorFlow's own in-memory
  file system.

Nothing of a `ram://` workdir reaches the current directory; a local path in the code under
test (os.path.abspath, open) would turn the URI into a local `ram:/...` folder there.
"""
import os
import re

from etils.epath import backend as backend_lib
from etils.epath import gpath, register
from orbax.checkpoint._src.path import gcs_utils
from orbax.checkpoint._src.serialization import tensorstore_utils

SCHEME = "ram://"


class MappedBackend(backend_lib._OsPathBackend):  # pylint: disable=protected-access
  """The os backend with `ram://<path>` stored at `<root>/<path>`."""

  def __init__(self, root: str):
    self.root = root

  def local(self, path) -> str:
    return os.path.join(self.root, re.sub(r"^ram:/+", "", os.fspath(path)))

  def uri(self, local: str) -> str:
    return SCHEME + os.path.relpath(local, self.root)

  def open(self, path, mode, *args, **kwargs):
    return super().open(self.local(path), mode, *args, **kwargs)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self.uri(p) for p in super().glob(self.local(path))]

  def walk(self, top, *args, **kwargs):
    for root, dirs, files in super().walk(self.local(top), *args, **kwargs):
      yield self.uri(root), dirs, files

  def makedirs(self, path, *args, **kwargs):
    return super().makedirs(self.local(path), *args, **kwargs)

  def mkdir(self, path, *args, **kwargs):
    return super().mkdir(self.local(path), *args, **kwargs)

  def rmtree(self, path):
    return super().rmtree(self.local(path))

  def remove(self, path):
    return super().remove(self.local(path))

  def rename(self, path, dst):
    return super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    return super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    return super().copy(self.local(path), self.local(dst), overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


def install(monkeypatch, root: str) -> MappedBackend:
  """Register `ram://` (stored under `root`) with epath and orbax for one test."""
  backend = MappedBackend(root)
  monkeypatch.setattr(gpath, "_URI_PREFIXES", gpath._URI_PREFIXES + (SCHEME,))
  monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"ram"})
  monkeypatch.setitem(gpath._URI_MAP_ROOT, SCHEME, "/ram/")
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "ram", backend)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)   # else every URI -> tf
  monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, SCHEME, gpath.PosixGPath)
  is_bucket = lambda directory: str(directory).startswith(("gs://", "ram:/"))
  monkeypatch.setattr(tensorstore_utils, "_use_gcs_driver", is_bucket)
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                      lambda path: {"driver": "file", "path": backend.local(path)})
  return backend
