"""The house rules a newcomer relies on: imports run one way (entry points -> jobs -> library) without cycles, no
file edits sys.path, and the tools leave nothing behind in the folder they run in."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

# The jobs: one per command, composing the library. Every other module in mt/ is library.
JOBS = {"trainer", "translate", "force_align", "export", "eval_alignment", "average_checkpoints"}
ENTRY_POINTS = [ROOT / "train.py", ROOT / "translate.py", *sorted((ROOT / "scripts").glob("*.py"))]


def imported_modules(path: Path) -> set[str]:
    """The mt modules a file imports (mt.x -> "x"), wherever the import stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "mt":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("mt."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("mt.")}
    return found


def graph() -> dict[str, set[str]]:
    return {path.stem: imported_modules(path) for path in (ROOT / "mt").glob("*.py")}


def test_the_library_imports_no_job_and_jobs_import_no_other_job():
    for module, imports in graph().items():
        assert not imports & JOBS, f"mt/{module}.py imports the job(s) {sorted(imports & JOBS)}"


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


def test_entry_points_call_one_job_and_nothing_edits_sys_path():
    for path in [*ENTRY_POINTS, *sorted((ROOT / "tests").glob("*.py"))]:
        assert not re.search(r"sys\.path\.(insert|append)|sys\.path\s*\+?=", path.read_text()), f"{path} edits it"
    for path in ENTRY_POINTS:
        if path.name.startswith("bench"):
            continue  # benchmarks: measurement code, not a user's command
        called = imported_modules(path) & JOBS
        assert len(called) == 1, f"{path.name} calls {sorted(called)}"


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
