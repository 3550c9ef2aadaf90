"""The architecture's import rules, read from the source (every import statement, including the
ones inside functions, which hide cycles from a plain ``import``):

- no import cycle among the modules of ``jebm`` and ``jebm_kernels``;
- ``jebm_kernels`` never imports ``jebm`` (the kernels do not know the model);
- nothing in either package imports ``benchmarks`` or ``tests`` (folders ``pip install .`` does not
  install).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jebm", "jebm_kernels")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the two packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports, anywhere in its file. ``from pkg import name`` counts
    as importing ``pkg.name`` when that is a module, else ``pkg`` itself (its ``__init__``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            names = []
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                names.append(sub if sub in known else base)
        else:
            continue
        for name in names:
            # importing a.b.c runs a/__init__ and a/b/__init__ first
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in known or prefix.split(".")[0] in ("benchmarks", "tests"):
                    found.add(prefix)
    found.discard(module)
    # a module's own parent packages are run before it, not imported by it
    return {m for m in found if not module.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {m: imports_of(m, p, known) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path_in(graph, comp):
    """One cycle through a component, for the failure message."""
    comp = set(comp)
    start = min(comp)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in graph[path[-1]] if w in comp)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return " -> ".join(path + [start])
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return " <-> ".join(sorted(comp))
        path.append(fresh[0])
        seen.add(fresh[0])


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (counting imports inside functions):\n" + "\n".join(
        _path_in(graph, c) for c in found)


def test_kernels_do_not_import_the_model():
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "jebm")
           for m, deps in graph.items() if m.split(".")[0] == "jebm_kernels"}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"jebm_kernels must not import jebm: {bad}"


def test_installed_packages_do_not_import_repository_folders():
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.split(".")[0] in ("benchmarks", "tests")) for m, deps in graph.items()}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"installed modules import folders pip does not install: {bad}"


def test_the_checker_sees_cycles_hidden_in_functions(tmp_path):
    """The checker itself: a cycle made by an import inside a function is found."""
    a = tmp_path / "a.py"
    a.write_text("import b\n")
    b = tmp_path / "b.py"
    b.write_text("def f():\n    from a import x\n")
    known = {"a", "b"}
    graph = {"a": imports_of("a", a, known), "b": imports_of("b", b, known)}
    assert cycles(graph) == [["a", "b"]]


@pytest.mark.parametrize("module,level,target,is_pkg,expected", [
    ("jebm.train.loop", 1, "checkpoint", False, "jebm.train.checkpoint"),
    ("jebm.train.loop", 2, "model", False, "jebm.model"),
    ("jebm.train", 1, "loop", True, "jebm.train.loop"),
    ("jebm_kernels.update.cpu", 2, None, False, "jebm_kernels"),
])
def test_relative_imports_resolve(module, level, target, is_pkg, expected):
    assert _resolve(module, is_pkg, level, target) == expected


def test_the_sampler_needs_only_torch_and_numpy(tmp_path):
    """With the trainer's packages unimportable, jebm_kernels imports and samples, and the jebm command
    says which extra to install instead of failing deep inside an import."""
    import subprocess
    import sys
    for name in ["sklearn", "skimage", "PIL", "matplotlib", "mlxtend", "arviz", "tqdm"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    code = """
import torch, jebm_kernels as jk
net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
out = jk.langevin(net, torch.randn(4, 3), n_steps=3, step_size=0.1, generator=(1, 0))
assert out.shape == (4, 3)
from jebm import cli
cli.missing_train_packages = lambda: ["scikit-learn"]
assert cli.main(["train", "--out", "unused"]) == 2
print("ok")
"""
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr
    assert "pip install" in proc.stderr and "train" in proc.stderr
