"""ARCHITECTURE.md's import rules, enforced on the source tree (and proven able to fail)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "src" / "trimaran"

# Third-party and project modules each layer may import (stdlib is allowed unless forbidden below).
THIRD_PARTY = {
    "trio", "trio_websocket", "msgpack", "lmdb", "cryptography", "pyseto", "sortedcontainers", "click", "hypothesis",
    "hypercorn", "prometheus_client", "plotly",
    "croniter",
}
SHARED = {"trimaran", "trimaran.errors", "trimaran.limits"}
ALLOWED: dict[str, set[str]] = {
    "protocols": {"msgpack", "cryptography", "pyseto", "trimaran.protocols"},
    "cluster": {"sortedcontainers", "trimaran.protocols", "trimaran.cluster"},
    # croniter: the pure cron helper ARCHITECTURE.md allows (jobs/cron.py feeds it UTC log time).
    "services": {"sortedcontainers", "croniter", "trimaran.protocols", "trimaran.services"},
    "storage": {"lmdb", "trimaran.protocols", "trimaran.storage"},
    # cryptography: the TLS certificates of `trimaran certs` (x509), an edge library like trio's ssl.
    "node": {"trio", "trio_websocket", "hypercorn", "prometheus_client", "plotly", "cryptography", "trimaran.cluster", "trimaran.services", "trimaran.storage", "trimaran.protocols", "trimaran.node"},
    "client": {"trio", "trio_websocket", "trimaran.protocols", "trimaran.client"},
    "simulations": {"trimaran.cluster", "trimaran.services", "trimaran.storage", "trimaran.protocols", "trimaran.simulations", "sortedcontainers"},
}
# The deterministic core must not reach a clock, OS entropy or the global random generator.
NONDETERMINISTIC_STDLIB = {"time", "os", "uuid", "secrets", "socket", "threading", "asyncio", "datetime"}
DETERMINISTIC = {"protocols", "cluster", "services", "simulations"}
# The simulator's trio tier may use the runtime (ARCHITECTURE.md: "its trio tier may use node").
TRIO_TIER_PREFIX = "trio_tier"


def imported_modules(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = f"trimaran.{package}"
                module = base if node.module is None else f"{base}.{node.module}"
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "random":
                found.extend((node.lineno, f"random.{a.name}") for a in node.names)
    return found


def global_random_uses(tree: ast.AST) -> list[int]:
    """Lines calling module-level ``random.<fn>`` (anything but constructing ``random.Random``)."""
    lines = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            lines.append(node.lineno)
    return lines


def violations(package: str, module_name: str, source: str) -> list[str]:
    """Every import-rule violation in one module of ``trimaran.<package>``."""
    tree = ast.parse(source)
    out: list[str] = []
    allowed = ALLOWED.get(package)
    trio_tier = package == "simulations" and module_name.startswith(TRIO_TIER_PREFIX)
    for line, module in imported_modules(tree, package):
        top = module.split(".")[0]
        where = f"trimaran/{package}/{module_name}.py:{line}"
        is_entry_point = package == "" and module_name == "__main__"  # ``python -m trimaran``
        # The CLI's own modules import each other (a command group registers on trimaran.cli.main).
        inside_cli = package == "cli"
        if (module == "trimaran.cli" or module.startswith("trimaran.cli.")) and not (is_entry_point or inside_cli):
            out.append(f"{where}: nothing imports trimaran.cli")
            continue
        if package in DETERMINISTIC and not trio_tier:
            if top in NONDETERMINISTIC_STDLIB:
                out.append(f"{where}: {package} is deterministic and may not import {module}")
            if module.startswith("random.") and module != "random.Random":
                out.append(f"{where}: {package} may not use the global random ({module})")
        if allowed is None:
            continue
        project = top == "trimaran"
        if project and module not in SHARED:
            ok = any(module == a or module.startswith(a + ".") for a in allowed if a.startswith("trimaran"))
            if trio_tier and (module.startswith("trimaran.node") or module.startswith("trimaran.client")):
                ok = True
            if not ok:
                out.append(f"{where}: {package} may not import {module}")
        elif top in THIRD_PARTY and top not in allowed and not (trio_tier and top in {"trio", "trio_websocket"}):
            out.append(f"{where}: {package} may not import {top}")
    if package in DETERMINISTIC and not trio_tier:
        out.extend(f"trimaran/{package}/{module_name}.py:{ln}: global random used" for ln in global_random_uses(tree))
    return out


def all_modules() -> list[tuple[str, str, Path]]:
    mods = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        package = rel.parts[0] if len(rel.parts) > 1 else ""
        mods.append((package, path.stem, path))
    return mods


def test_source_tree_follows_the_import_rules() -> None:
    found: list[str] = []
    for package, module_name, path in all_modules():
        found.extend(violations(package, module_name, path.read_text()))
    assert found == []


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("cluster", "import trio\n"),
        ("cluster", "import time\n"),
        ("services", "from os import urandom\n"),
        ("cluster", "from uuid import uuid4\n"),
        ("cluster", "import random\nx = random.random()\n"),
        ("services", "from random import choice\n"),
        ("cluster", "from trimaran.services.register import RegisterService\n"),
        ("services", "from trimaran.cluster.raft import Raft\n"),
        ("cluster", "import lmdb\n"),
        ("client", "from trimaran.cluster import raft\n"),
        ("client", "from trimaran.node import runtime\n"),
        ("client", "import trimaran.storage\n"),
        ("node", "from trimaran.cli import main\n"),
        ("client", "import trimaran.cli\n"),
        ("protocols", "import trio\n"),
        ("storage", "import trio\n"),
        ("simulations", "import time\n"),
        ("cluster", "from croniter import croniter\n"),
        ("client", "import croniter\n"),
    ],
)
def test_a_forbidden_import_is_caught(package: str, source: str) -> None:
    assert violations(package, "example", source), f"{source!r} in {package} should be refused"


def test_allowed_imports_pass() -> None:
    assert violations("cluster", "example", "import random\nr = random.Random(3)\nfrom trimaran.protocols import codec\n") == []
    assert violations("simulations", "trio_tier", "import trio\nfrom trimaran.node import runtime\n") == []
    assert violations("services", "cron", "from croniter import croniter\n") == []


def test_python_version_supported() -> None:
    assert sys.version_info >= (3, 11)
