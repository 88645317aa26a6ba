"""The layering of STYLE.md, checked by parsing every module's imports.

The core imports nothing from the adapters; adapters import the core (and
shared leaf modules) but not each other; only the composition root and the
CLI see everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ctrackd"
ADAPTERS = {"agi", "ami", "store", "web", "hooks"}
# Leaf modules any adapter may use: they import no adapter themselves.
SHARED = {"variables", "logs", "config", "configschema", "configdynamic", "configcalls",
          "configmetrics", "metrics", "aio"}
IO_MODULES = {"asyncio", "aiosqlite", "sqlite3", "panoramisk", "structlog", "aiohttp", "socket",
              "logging", "os", "time", "random", "secrets", "shutil", "subprocess"}


def ctrackd_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(sub: str) -> list[Path]:
    return sorted((PACKAGE / sub).glob("*.py"))


@pytest.mark.parametrize("path", modules("attribution"), ids=lambda p: p.name)
def test_core_is_pure(path: Path) -> None:
    for name in ctrackd_imports(path):
        top = name.split(".")[0]
        assert top not in IO_MODULES, f"{path.name} imports {name}: the core does no I/O"
        if top == "ctrackd":
            assert name.startswith("ctrackd.attribution"), f"{path.name} imports {name}"


@pytest.mark.parametrize("path", [p for a in sorted(ADAPTERS) for p in modules(a)],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_adapters_do_not_import_each_other(path: Path) -> None:
    own = path.parent.name
    for name in ctrackd_imports(path):
        parts = name.split(".")
        if parts[0] != "ctrackd" or len(parts) < 2:
            continue
        assert parts[1] in {own, "attribution"} | SHARED, f"{own}/{path.name} imports {name}"


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_modules_import_no_adapter(name: str) -> None:
    for imported in ctrackd_imports(PACKAGE / f"{name}.py"):
        parts = imported.split(".")
        assert not (parts[0] == "ctrackd" and len(parts) > 1 and parts[1] in ADAPTERS), imported
