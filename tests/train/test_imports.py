"""The packages import as a tree: no module reaches itself through its imports (lazy ones included)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("train", "pipeline", "fss_model")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports anywhere in it (module level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from train import evaluate`
    # importing a.b.c runs a/__init__ and a/b/__init__ too
    with_parents = {".".join(name.split(".")[:i]) for name in found for i in range(1, name.count(".") + 2)}
    return {name for name in with_parents if name in modules and name != module_name(path)}


def import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): project_imports(p, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search).

    A module's edge to its own package (`train.stream.sampler` -> `train.stream`) is left out: Python
    runs the package's __init__ first, so that one is no circle.
    """
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert (
        "train.stream.episodes" in graph
        and "train.stream.episodes" not in graph["train.train"]
        and "train.evaluate" in graph["train.validation"]
    )
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_training_does_not_import_evaluation_and_step_is_shared():
    graph = import_graph()
    assert "train.evaluate" not in graph["train.train"]
    assert "train.train" not in graph["train.evaluate"] and "train.train" not in graph["train.infer"]
    assert "train.step" in graph["train.train"] and "train.step" in graph["train.evaluate"]


def test_the_cycle_finder_finds_a_cycle():
    graph = {"train.a": {"train.b"}, "train.b": {"train.c"}, "train.c": {"train.a"}, "train.d": set()}
    assert find_cycle(graph) == ["train.a", "train.b", "train.c", "train.a"]
    assert find_cycle({"train.a": {"train.b"}, "train.b": set()}) is None


def test_pipeline_imports_neither_train_nor_the_models():
    """Preparation never depends on training or the networks (lazy imports included)."""
    graph = import_graph()
    wrong = {m: sorted(d for d in deps if d.split(".")[0] in ("train", "fss_model"))
             for m, deps in graph.items() if m.split(".")[0] == "pipeline"}  # fmt: skip
    assert "pipeline.config" in wrong and not any(wrong.values()), {m: d for m, d in wrong.items() if d}


def test_every_module_imports():
    """Each module of the three packages imports (a module that names a moved one fails here, which
    parsing the files would not see). In a fresh interpreter, so nothing is imported already."""
    import subprocess
    import sys

    modules = sorted(import_graph())
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\nprint(len(sys.argv))"
    out = subprocess.run([sys.executable, "-c", code, *modules], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) == len(modules) + 1 and "train.bench.bench_storage" in modules
