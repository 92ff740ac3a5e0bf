"""The library's layering: no import cycles, no kfp; components and pipelines install inside the namespace."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / "sidreasoner").rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module `name` imports, at the top or inside a function: `from a.b import c` is a.b.c
    when that is a module, else a.b."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    known = set(modules)
    return {name: imported_modules(name, path, known) & known - {name} for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_cycle_finder_finds_a_hand_made_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"], ["e"]]


def test_the_import_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "sidreasoner.config" in graph["sidreasoner.runner"]
    assert "sidreasoner.steps" in graph["sidreasoner.config.schema"]
    assert len(graph) > 40  # every module under src/sidreasoner, not a hand-kept list


def test_no_import_cycle_in_the_library():
    cycles = [group for group in strongly_connected(import_graph()) if len(group) > 1]
    assert cycles == []


def test_library_never_imports_kfp():
    offenders = sorted(
        name
        for name, path in library_modules().items()
        if any(m == "kfp" or m.startswith("kfp.") for m in imported_modules(name, path, set()))
    )
    assert offenders == []


def test_cli_and_component_runtime_load_without_kfp():
    """kfp is imported only by the commands that compile or submit, and never by a component's body."""
    code = "import sys, sidreasoner.cli, sidreasoner.components.runtime; print('kfp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_no_generic_top_level_packages():
    assert importlib.util.find_spec("sidreasoner.components") is not None
    assert importlib.util.find_spec("sidreasoner.pipelines") is not None
    for generic in ("components", "pipelines"):
        spec = importlib.util.find_spec(generic)
        assert spec is None or "site-packages" not in str(spec.origin or "")


def package_graph() -> dict[str, set[str]]:
    """The import graph between the library's subpackages (sidreasoner.train, sidreasoner.eval, …)."""

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    graph: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        graph.setdefault(package(module), set()).update(package(m) for m in imports)
    return {name: imports - {name, "sidreasoner"} for name, imports in graph.items()}


def test_no_import_cycle_between_subpackages():
    cycles = [group for group in strongly_connected(package_graph()) if len(group) > 1]
    assert cycles == []


def test_every_library_package_is_installed():
    """pyproject lists packages by hand (components/ and pipelines/ map into the namespace): a
    subpackage missing there would be absent from a non-editable install, such as the images'."""
    import tomllib

    listed = set(tomllib.loads((SRC.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {_module_name(p) for p in (SRC / "sidreasoner").rglob("__init__.py")}
    assert packages <= listed


def test_compiling_and_submitting_load_no_model_libraries():
    """`compile`/`submit` build the YAML in about a second: they reach no module that imports torch,
    transformers or kserve (seconds of imports), which load only in the steps and the server."""
    code = (
        "import sys, sidreasoner.pipelines.compile, sidreasoner.pipelines.submit; "
        "print(sorted(m for m in ('torch', 'transformers', 'kserve') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
