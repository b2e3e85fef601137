"""Safety, by the source (AST) and by behaviour: safe YAML, weights-only loads, no shell run from data."""

import ast
import json
import shutil
from pathlib import Path

import pytest

from train.stream.sampler import EpisodeStream
from train.stream.shard_io import ShardError, open_stream, shard_urls

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "train", "fss_model")
# the one place a shell may run: `pipe:` shard URLs, refused unless the caller passes allow_pipe=True
SHELL_ALLOWED = {("train/stream/shard_io.py", "open_stream")}


def _sources() -> dict[str, ast.Module]:
    files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))
    assert len(files) > 20
    return {str(p.relative_to(REPO)): ast.parse(p.read_text(), str(p)) for p in files}


def _calls(tree: ast.Module) -> list[tuple[str, ast.Call, str]]:
    """(dotted callee, call, enclosing function name) of every call in a module."""
    out = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if isinstance(child, ast.Call):
                out.append((ast.unparse(child.func), child, func))
            visit(child, name)

    visit(tree, "<module>")
    return out


def _keyword(call: ast.Call, name: str) -> object:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else ast.unparse(kw.value)
    return None


def test_yaml_is_only_read_with_safe_load():
    bad = []
    for path, tree in _sources().items():
        for callee, call, _ in _calls(tree):
            if callee in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                bad.append(f"{path}:{call.lineno} {callee}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "yaml":
                bad += [f"{path}:{node.lineno} yaml.{a.name}" for a in node.names if "load" in a.name]
    assert bad == []


def test_every_torch_load_is_weights_only():
    loads = []
    for path, tree in _sources().items():
        for callee, call, _ in _calls(tree):
            if callee == "torch.load":
                loads.append((path, call.lineno, _keyword(call, "weights_only")))
            assert callee not in ("pickle.load", "pickle.loads", "eval", "exec"), f"{path}:{call.lineno}"
    assert loads and all(flag is True for _, _, flag in loads), loads


def test_a_shell_runs_only_for_pipe_urls_the_caller_allowed():
    shells = set()
    for path, tree in _sources().items():
        for callee, call, func in _calls(tree):
            assert callee not in ("os.system", "os.popen", "subprocess.getoutput"), f"{path}:{call.lineno}"
            if _keyword(call, "shell") not in (None, False):
                shells.add((path, func))
    assert shells == SHELL_ALLOWED
    # that function refuses before it starts anything unless allow_pipe is passed, False by default
    tree = _sources()["train/stream/shard_io.py"]
    func = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "open_stream")
    args = [a.arg for a in func.args.args][-len(func.args.defaults) :]
    defaults = dict(zip(args, func.args.defaults, strict=True))
    assert ast.literal_eval(defaults["allow_pipe"]) is False
    source = ast.unparse(func)
    assert source.index("if not allow_pipe") < source.index("subprocess.Popen")
    for path, tree in _sources().items():  # no stage turns the permission on by itself
        for _, call, _ in _calls(tree):
            assert _keyword(call, "allow_pipe") in (None, False, "allow_pipe", "self.allow_pipe"), path


def test_pipe_url_without_permission_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ShardError, match="allow_pipe"):
        open_stream(f"pipe:touch {marker}")
    assert not marker.exists()


@pytest.mark.parametrize(
    "name",
    [
        "pipe:touch {marker}",
        "x.tar; touch {marker}",
        "../../outside.tar",
        "/etc/passwd",
        "https://evil/x.tar",
    ],
)
def test_shard_names_from_a_manifest_are_never_commands_or_paths(tiny_data, tmp_path, name):
    split = tmp_path / "train"
    shutil.copytree(tiny_data["shards"] / "train", split)
    shutil.copy(tiny_data["shards"] / "complete.json", tmp_path)  # the dataset's completion record
    marker = tmp_path / "ran"
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["shards"][0]["name"] = name.format(marker=marker)
    (split / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=r"manifest\.json: shard name .* is not a plain file name"):
        shard_urls(str(split))
    with pytest.raises(ShardError, match="is not a plain file name"):
        EpisodeStream(str(split), {}, [1], [2], allow_pipe=True)  # not even with the user's permission
    assert not marker.exists()
