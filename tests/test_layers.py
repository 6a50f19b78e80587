"""The floor plan holds: no import circle, nothing imports a job or a command from below, modules stay readable.

Imports are read from the source (every ``import`` and ``from … import``,
also those inside functions, which is where a circle used to hide), as edges
between modules of the ``fleetpulse`` namespace mapped onto the folders
(``pipeline/`` → ``fleetpulse.pipeline`` …).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fleetpulse": "fleetpulse", "schemas": "fleetpulse.schemas", "devices": "fleetpulse.devices",
            "pipeline": "fleetpulse.pipeline"}
#: modules over this many lines must say at their top why (issue 13)
MAX_LINES = 600


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The ``fleetpulse`` modules ``name`` imports (a ``from package import module`` counts as the module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imports(name, path, known)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_there_is_no_import_circle() -> None:
    assert cycles(graph()) == []


def test_the_check_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_dispatcher_imports_a_command_and_only_commands_and_the_demo_import_a_job() -> None:
    commands, jobs = "fleetpulse.pipeline.cli", "fleetpulse.pipeline.jobs"
    wrong = []
    for name, targets in graph().items():
        for target in targets:
            if target.startswith(commands) and not (name.startswith(commands) or name == "fleetpulse.cli"):
                wrong.append(f"{name} imports the command module {target}")
            if target.startswith(jobs) and not name.startswith((jobs, commands, "fleetpulse.pipeline.demo")):
                wrong.append(f"{name} imports the job {target}")
    assert wrong == []


def test_devices_import_neither_pipeline_nor_heavy_packages() -> None:
    # The gateway installs paho-mqtt and the standard library only.
    wrong = [f"{name} imports {target}" for name, targets in graph().items() if name.startswith("fleetpulse.devices")
             for target in targets if target.startswith("fleetpulse.pipeline")]
    assert wrong == []


def test_a_long_module_says_why_at_its_top() -> None:
    long = []
    for name, path in modules().items():
        text = path.read_text("utf-8")
        if text.count("\n") > MAX_LINES:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if "600 lines" not in docstring:
                long.append(f"{name} ({text.count(chr(10))} lines)")
    assert long == [], "split these, or say in the docstring why they are longer than ~600 lines"
