"""The packages import one way: their import graph is a DAG, and each floor imports only the
floors below it (the picture in commands/__init__.py). Imports inside functions count."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Lowest floor first; a package may import only packages earlier in this list.
FLOORS = ("diffusion", "sampling", "infra", "training", "eval", "distillation", "configs",
          "commands", "bench")


def package_imports(root=ROOT):
  """[(from_package, to_package, 'file:line: statement')] for every import of a project
  package from another one."""
  packages = {p.name for p in root.iterdir() if (p / "__init__.py").exists()}
  found = []
  for package in sorted(packages - {"tests"}):
    for path in sorted((root / package).rglob("*.py")):
      for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
          names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names = [node.module]
        else:
          continue
        for name in names:
          target = name.split(".")[0]
          if target in packages and target != package:
            where = f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}"
            found.append((package, target, where))
  return found


def two_way_pairs(imports):
  """The imports a -> b for which some b -> a exists too."""
  edges = {(a, b) for a, b, _ in imports}
  return [where for a, b, where in imports if (b, a) in edges]


def cycle(imports):
  """A cycle of the package graph as a list of packages, or None when it is a DAG."""
  graph = {}
  for a, b, _ in imports:
    graph.setdefault(a, set()).add(b)
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (found := visit(node)):
      return found
  return None


def upward(imports):
  """Imports from a floor to a floor above it (or of a package not in FLOORS)."""
  rank = {name: i for i, name in enumerate(FLOORS)}
  return [where for a, b, where in imports
          if a not in rank or b not in rank or rank[b] > rank[a]]


def test_package_graph_is_one_way():
  imports = package_imports()
  assert imports, "no imports between the project's packages were found"
  assert not two_way_pairs(imports), "two-way package imports:\n" + "\n".join(
      two_way_pairs(imports))
  assert cycle(imports) is None, f"import cycle: {' -> '.join(cycle(imports))}"
  assert not upward(imports), "imports of a higher floor:\n" + "\n".join(upward(imports))


def test_checks_catch_a_back_edge(tmp_path):
  """The checks fail on a tree that has the old training <-> eval pair (and name it)."""
  for package, source in {"training": "from eval.grid import save_grid\n",
                          "eval": "def f():\n  from training import checkpoint\n",
                          "infra": "import diffusion\n", "diffusion": ""}.items():
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "mod.py").write_text(source)
  imports = package_imports(tmp_path)
  assert sorted(two_way_pairs(imports)) == [
      "eval/mod.py:2: from training import checkpoint",
      "training/mod.py:1: from eval.grid import save_grid"]
  assert cycle(imports) in (["eval", "training", "eval"], ["training", "eval", "training"])
  assert upward(imports) == ["training/mod.py:1: from eval.grid import save_grid"]
