"""Writing files safely on any file system etils reaches (local, gs://)."""
from etils import epath


def atomic_write(path: epath.Path, data: bytes, suffix: str):
  """Write `data` to a temporary name beside `path`, then move it onto `path` (replacing a
  previous version, e.g. cost.json when a finished run is written again)."""
  tmp = path.parent / f".{path.name}.tmp-{suffix}"
  tmp.write_bytes(data)
  tmp.replace(path)
