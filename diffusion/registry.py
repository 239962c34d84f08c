"""Lookup by name: samplers, processes, networks, methods, ... are chosen from configs."""


class Registry(dict):
  """name -> object, filled with the `register(name)` decorator."""

  def __init__(self, kind: str):
    super().__init__()
    self.kind = kind

  def register(self, name: str):
    def wrap(obj):
      self[name] = obj
      return obj
    return wrap

  def lookup(self, name: str):
    """The object registered as `name`, or an error listing the registered names."""
    if name not in self:
      raise ValueError(f"Unknown {self.kind} {name!r}; choose one of {sorted(self)}.")
    return self[name]
