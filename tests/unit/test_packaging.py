"""What the ComfyUI Registry archive ships: `.comfyignore` drops the lab, and nothing ComfyUI imports is in it.

The import closure starts where ComfyUI starts (the package's ``__init__.py`` and the node modules listed in
``nodes/registry.py``) and follows every relative import, module-level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

from comfyui_tempo.nodes import registry

ROOT = Path(__file__).resolve().parents[2]


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".comfyignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in patterns)


def module_file(package_dir: Path, dotted: str) -> Path | None:
    base = package_dir.joinpath(*dotted.split(".")) if dotted else package_dir
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def relative_imports(path: Path) -> list[Path]:
    """Files named by the relative imports of ``path`` (``from . import x``, ``from ..a.b import c``)."""
    out = []
    pkg = path.parent
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = pkg
        for _ in range(node.level - 1):
            base = base.parent
        target = module_file(base, node.module or "")
        if target is not None:
            out.append(target)
        for alias in node.names:  # `from . import files` names a module
            sub = module_file(base, ((node.module + ".") if node.module else "") + alias.name)
            if sub is not None:
                out.append(sub)
    return out


def import_closure() -> set[Path]:
    todo = [ROOT / "__init__.py", ROOT / "nodes" / "registry.py"]
    todo += [ROOT / "nodes" / f"{m}.py" for m in registry.NODE_MODULES]
    seen: set[Path] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(relative_imports(p))
    return seen


def test_comfyignore_uses_only_the_forms_this_test_understands():
    for p in ignore_patterns():
        assert not any(c in p for c in "*?[!") and not p.startswith("/"), p
        assert (ROOT / p.rstrip("/")).exists(), f".comfyignore names {p!r}, which does not exist"


def test_nothing_comfyui_imports_is_left_out_of_the_archive():
    patterns = ignore_patterns()
    closure = import_closure()
    assert (
        ROOT / "nodes" / "dmd.py" in closure and ROOT / "training" / "dmd.py" in closure
    )  # the walk reaches the cores
    shipped_but_ignored = sorted(
        str(p.relative_to(ROOT)) for p in closure if ignored(str(p.relative_to(ROOT)), patterns)
    )
    assert not shipped_but_ignored, f"imported by the pack but dropped by .comfyignore: {shipped_but_ignored}"


def test_the_lab_is_left_out():
    patterns = ignore_patterns()
    for rel in (
        "tests/unit/test_packaging.py",
        "testbed/weights/testbed.safetensors",
        "bench/coop.py",
        "dev",
        "harness/comfy_testbed.py",
        "harness/host_bench.py",
    ):
        assert ignored(rel, patterns), rel
