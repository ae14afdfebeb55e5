"""dvc.yaml stays honest: each stage's code deps are exactly the files its script imports.

The import closure is derived from the source: every ``import``/``from ... import`` (lazy
ones inside functions too) of a module inside ``src/`` or of ``stages/_bootstrap``,
followed recursively, plus the ``__init__.py`` of every package on the way. A stage that
lists a file it never imports, or misses one it does, fails here with the file named, so a
change to that file reruns exactly the stages that read it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    """The repository file of dotted module ``name`` (src.x.y or _bootstrap), None if outside."""
    if name == "_bootstrap":
        return REPO / "stages" / "_bootstrap.py"
    if name != "src" and not name.startswith("src."):
        return None
    path = REPO.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # ``from src import faults`` imports the module src/faults.py
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def import_closure(script: Path) -> set[Path]:
    """``script`` and every repository file it imports, directly or not."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing src.a.b runs src/__init__ and src/a/__init__
                found = _module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def _listed_code(deps: list[str]) -> set[Path]:
    files = set()
    for dep in deps:
        path = REPO / dep
        if not dep.startswith(("src", "stages")):
            continue
        files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return files


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_its_import_closure(stage):
    spec = STAGES[stage]
    script = REPO / spec["cmd"].split()[-1]
    closure = import_closure(script)
    listed = _listed_code(spec["deps"])
    rel = lambda paths: sorted(str(p.relative_to(REPO)) for p in paths)  # noqa: E731
    if closure - listed:
        pytest.fail(f"dvc.yaml stage '{stage}' misses deps it imports: {rel(closure - listed)}")
    if listed - closure:
        pytest.fail(f"dvc.yaml stage '{stage}' lists deps it never imports: {rel(listed - closure)}")


def test_the_closure_follows_lazy_and_package_imports():
    """The derivation itself: a lazy import inside a function counts, and so does a package's __init__."""
    closure = import_closure(REPO / "stages" / "train.py")
    names = {str(p.relative_to(REPO)) for p in closure}
    assert {"src/training_loop.py", "src/augment.py", "src/__init__.py", "stages/_bootstrap.py"} <= names


# ---------------------------------------------------------------------------- dvc.lock
def stale_lock_deps(root: Path) -> list[str]:
    """The code deps of ``root/dvc.lock`` whose recorded md5 is not the file's (git-tracked
    files only: data and outputs are the cache's business)."""
    import hashlib
    import subprocess

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    tracked = set(subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True,
                                 check=True).stdout.split())
    stale = []
    for name, stage in lock.get("stages", {}).items():
        for dep in stage.get("deps", []):
            path = dep["path"]
            if path in tracked and (root / path).is_file():
                if hashlib.md5((root / path).read_bytes()).hexdigest() != dep.get("md5"):
                    stale.append(f"{name}: {path}")
    return stale


def test_a_committed_dvc_lock_matches_the_code_it_is_committed_with(tmp_path):
    """The repository ships no dvc.lock (a team commits the one its own `dvc repro` writes);
    if one is committed, each code dependency's md5 must be the file's. The checker is
    shown to catch a stale entry on a scratch repository first."""
    import hashlib
    import subprocess

    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "a.py"], cwd=tmp_path, check=True)
    good = hashlib.md5(b"x = 1\n").hexdigest()
    lock = {"schema": "2.0", "stages": {"s": {"cmd": "true", "deps": [{"path": "a.py", "md5": good, "size": 6}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert stale_lock_deps(tmp_path) == []
    (tmp_path / "a.py").write_text("x = 2\n")
    assert stale_lock_deps(tmp_path) == ["s: a.py"]

    tracked = subprocess.run(["git", "ls-files", "dvc.lock"], cwd=REPO, capture_output=True, text=True).stdout
    if tracked.strip():
        assert stale_lock_deps(REPO) == [], "dvc.lock is stale: rerun `dvc repro` and commit it"
