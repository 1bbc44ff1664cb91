"""The layering holds: every file's imports (lazy ones inside functions included) point only at
packages below its own, and the ground floors import only what they may.

    kernels -> tasks -> model -> training -> analysis -> viz -> ui -> app.py
viz is the exception that proves the rule: of ours it imports only tasks (numpy or tidy frames
in, Altair out), never torch, gradio or the model. bench/, docs/ and tests/ may import anything.
"""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["kernels", "tasks", "model", "training", "analysis", "viz", "ui", "app"]
OURS = set(ORDER)
ALLOWED_OURS = {name: set(ORDER[:i]) for i, name in enumerate(ORDER)}
ALLOWED_OURS["viz"] = {"tasks"}
# third-party packages each floor may use (the standard library is always allowed)
ALLOWED_THIRD = {
    "kernels": {"torch", "triton", "numpy"},
    "tasks": {"numpy"},
    "viz": {"numpy", "pandas", "altair", "vl_convert"},
}
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def files():
    for name in ORDER:
        if name == "app":
            yield "app", ROOT / "app.py"
            continue
        for path in sorted((ROOT / name).rglob("*.py")):
            yield name, path


def imports(path: Path, pkg: str):
    """(line, top-level module) for every import in the file of package `pkg`, at any depth
    (function-level imports too), relative ones resolved to `pkg`."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, pkg if node.level else node.module.split(".")[0]


def test_every_floor_is_found():
    found = {name for name, _ in files()}
    assert found == OURS, f"missing packages: {OURS - found}"


@pytest.mark.parametrize("floor", ORDER)
def test_no_import_points_upwards(floor):
    bad = []
    for name, path in files():
        if name != floor:
            continue
        for line, mod in imports(path, name):
            rel = f"{path.relative_to(ROOT)}:{line} imports {mod}"
            if mod in OURS and mod != name and mod not in ALLOWED_OURS[name]:
                bad.append(rel)
            elif mod not in OURS and name in ALLOWED_THIRD and mod not in STDLIB \
                    and mod not in ALLOWED_THIRD[name]:
                bad.append(rel + f" (third-party; {name}/ may use {sorted(ALLOWED_THIRD[name])})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The test itself can fail: a function-level import and a relative import are both seen."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import torch\n    from model import MambaLM\nfrom . import frames\n")
    assert sorted(imports(probe, "viz")) == [(2, "torch"), (3, "model"), (4, "viz")]
