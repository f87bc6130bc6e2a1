"""The package's stage graph runs one way.

    data  <-  model  <-  infer  <-  {train, evaluate}  <-  nnunet  <-  cli
    report reads artifacts only: of the stages, only the prepared-folder reader (data.prepared)

Every stage may also import the neutral modules at the top of the package (errors,
atomic, config, console, device, code_digest), which import no stage. Imports inside
functions count too (they were where the last cycle hid). No module may reach itself
through imports.

``python tests/test_layers.py`` prints the imports between stage packages.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "sam2_3dmed"
NEUTRAL = "neutral"
ALLOWED = {  # stage -> the stages it may import (besides itself and the neutral modules)
    NEUTRAL: set(),
    "data": set(),
    "model": {"data"},
    "infer": {"data", "model"},
    "train": {"data", "model", "infer"},
    "evaluate": {"data", "model", "infer"},
    # the nnU-Net reference arm: nnU-Net's own pipeline between our data and our metrics
    "nnunet": {"data", "model", "infer", "evaluate"},
    "report": {"data"},
    "cli": {"data", "model", "infer", "train", "evaluate", "nnunet", "report"},
}
# the only modules of an allowed stage that these stages may import (default: any)
ONLY = {"report": {"sam2_3dmed.data.prepared"}}


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def stage_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return NEUTRAL  # the package itself
    if (PKG / parts[1]).is_dir():
        return parts[1]
    return "cli" if parts[1] == "cli" else NEUTRAL


def _resolve(node: ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        keep = len(parts) - node.level + (1 if is_pkg else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    if not base.startswith("sam2_3dmed"):
        return []
    out = []
    for alias in node.names:  # `from . import x` may name a submodule
        sub = f"{base}.{alias.name}"
        out.append(sub if _exists(sub) else base)
    return out


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def imports() -> dict[str, set[str]]:
    """{module: the package modules it imports}, function-level imports included."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        mod = module_name(path)
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                deps.update(_resolve(node, mod, path.name == "__init__.py"))
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("sam2_3dmed."))
        graph[mod] = {d for d in deps if d != mod and _exists(d)}
    return graph


def stage_imports(graph) -> dict[tuple[str, str], list[str]]:
    """{(from stage, to stage): ["a.b -> c.d", ...]} for imports that cross stage packages."""
    out = defaultdict(list)
    for mod, deps in graph.items():
        for dep in sorted(deps):
            a, b = stage_of(mod), stage_of(dep)
            if a != b and b != NEUTRAL:
                out[(a, b)].append(f"{mod} -> {dep}")
    return dict(out)


def cycles(graph) -> list[list[str]]:
    """Module-level import cycles (each once), by depth-first search."""
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d.endswith("__init__") or d == "sam2_3dmed":
                continue
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_import_cycle():
    assert cycles(imports()) == []


def test_stages_import_one_way():
    wrong = {k: v for k, v in stage_imports(imports()).items() if k[1] not in ALLOWED[k[0]]}
    assert not wrong, "imports against the stage graph:\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(v)}" for (a, b), v in sorted(wrong.items()))


def test_report_reads_artifacts_only():
    bad = [f"{m} -> {d}" for m, deps in imports().items() for d in deps
           if stage_of(m) in ONLY and stage_of(d) not in (stage_of(m), NEUTRAL) and d not in ONLY[stage_of(m)]]
    assert not bad, bad


def test_neutral_modules_import_no_stage():
    graph = imports()
    bad = [f"{m} -> {d}" for m, deps in graph.items() if stage_of(m) == NEUTRAL for d in deps
           if stage_of(d) != NEUTRAL]
    assert not bad, bad


def test_the_checker_sees_a_cycle_and_a_wrong_import():
    fake = {"sam2_3dmed.infer.a": {"sam2_3dmed.train.b"}, "sam2_3dmed.train.b": {"sam2_3dmed.infer.a"}}
    assert cycles(fake) == [["sam2_3dmed.infer.a", "sam2_3dmed.train.b", "sam2_3dmed.infer.a"]]
    assert ("infer", "train") in stage_imports(fake) and "train" not in ALLOWED["infer"]


if __name__ == "__main__":
    g = imports()
    for (a, b), mods in sorted(stage_imports(g).items()):
        ok = "ok " if b in ALLOWED[a] else "BAD"
        print(f"{ok} {a:9s} -> {b:9s} {len(mods):2d}: {', '.join(m.replace('sam2_3dmed.', '') for m in mods)}")
    for c in cycles(g):
        print("cycle:", " -> ".join(c))
    sys.exit(0)
