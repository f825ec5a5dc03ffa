"""The house rules a newcomer relies on, read from the folders: imports run one way (entry points -> mt/commands
-> the library), no command imports another, nothing imports in a cycle, no file edits sys.path, no file in mt/
outgrows one idea (400 lines, 200 for a class), and the tools leave nothing behind in the folder they run in."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "mt"
ENTRY_POINTS = [ROOT / "train.py", ROOT / "translate.py", *sorted((ROOT / "scripts").glob("*.py"))]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The mt modules a file imports (`from mt import x` counts as mt.x where that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mt":
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & known
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "mt"}
    return found - {"mt"}


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, known) for path in paths}


def is_command(module: str) -> bool:
    return module.startswith("mt.commands.")


def test_the_library_imports_no_command_and_commands_import_no_other_command():
    for module, imports in graph().items():
        commands = {other for other in imports if is_command(other)}
        assert not commands, f"{module} imports the command(s) {sorted(commands)}"


def test_there_is_no_import_cycle():
    imports, done, path = graph(), set(), []

    def visit(module):
        assert module not in path, "import cycle: " + " -> ".join([*path[path.index(module):], module])
        if module in done:
            return
        path.append(module)
        for other in sorted(imports.get(module, ())):
            visit(other)
        path.pop()
        done.add(module)

    for module in sorted(imports):
        visit(module)


def test_no_file_in_the_package_is_over_400_lines():
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"


def test_no_class_in_the_package_is_over_200_lines():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= 200, f"{path.relative_to(ROOT)}: class {node.name} has {lines} lines"


def test_entry_points_call_one_command_and_nothing_edits_sys_path():
    known = set(graph())
    for path in [*ENTRY_POINTS, *sorted((ROOT / "tests").glob("*.py"))]:
        assert not re.search(r"sys\.path\.(insert|append)|sys\.path\s*\+?=", path.read_text()), f"{path} edits it"
    for path in ENTRY_POINTS:
        if path.name.startswith("bench"):
            continue  # benchmarks and their harness: measurement code, not a user's command
        called = {module for module in imported_modules(path, known) if is_command(module)}
        assert len(called) == 1, f"{path.name} calls {sorted(called)}"


def test_every_command_has_an_entry_point_and_an_installed_program():
    pyproject = (ROOT / "pyproject.toml").read_text()
    entry_modules = set()
    for path in ENTRY_POINTS:
        entry_modules |= {m for m in imported_modules(path, set(graph())) if is_command(m)}
    for path in sorted((PACKAGE / "commands").glob("[!_]*.py")):
        module = module_name(path)
        assert module in entry_modules, f"{module} has no entry point in the checkout"
        assert f'"{module}:main"' in pyproject, f"{module} has no console script in pyproject.toml"


def test_translate_and_align_leave_nothing_behind_in_the_folder_they_run_in(trained, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "in.de").write_text("Ein Hund läuft über die Wiese .\nZwei Männer spielen Fußball .\n")
    checkpoint = trained / "checkpoints" / "best.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in ([ROOT / "translate.py", f"checkpoint={checkpoint}", "input=in.de", "output=out.en"],
                    [ROOT / "scripts" / "align.py", f"checkpoint={checkpoint}", "source=in.de", "target=out.en",
                     "output=out.align"]):
        done = subprocess.run([sys.executable, *map(str, command)], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in work.iterdir()) == ["in.de", "out.align", "out.en"]
