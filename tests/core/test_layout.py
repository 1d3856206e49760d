"""The layout's direction of dependency, read from the AST of every module (lazy imports included).

Rooms are the top-level source folders, except the floor ``layerbudget/``, whose modules are rooms
of their own. Imports point one way: ``kernels/`` imports nothing of the project; ``layerbudget/``
at most ``kernels/``; ``profiles/`` those two; ``evaluators/`` those three; ``search/`` only
``layerbudget/``; ``experiments/`` anything. No module imports itself back through others, lazily
or not, so no import needs to sit inside a function to dodge a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLOOR = "layerbudget"
FOLDERS = ("kernels", "profiles", "evaluators", "search", "experiments")
ALLOWED = {  # folder -> the folders it may import
    "kernels": set(),
    FLOOR: {"kernels"},
    "profiles": {FLOOR, "kernels"},
    "evaluators": {FLOOR, "kernels", "profiles"},
    "search": {FLOOR},
    "experiments": {FLOOR, "kernels", "profiles", "evaluators", "search"},
}


def folder_of(module: str) -> str | None:
    """The source folder of a ``layerbudget.*`` module name (None for other packages)."""
    parts = module.split(".")
    if parts[0] != "layerbudget":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else FLOOR


def module_of(path: Path) -> str:
    folder = path.parent.name
    return f"layerbudget.{path.stem}" if folder == FLOOR else f"layerbudget.{folder}.{path.stem}"


def imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every ``layerbudget`` import in a file, wherever it stands in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("layerbudget")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("layerbudget"):
            for a in node.names:  # `from layerbudget.search import dp` imports the module layerbudget.search.dp
                sub = f"{node.module}.{a.name}"
                out.append((sub if node.module.count(".") < 2 and is_module(sub) else node.module, node.lineno))
    return out


def is_module(name: str) -> bool:
    parts = name.split(".")
    folder = parts[1] if parts[1] in FOLDERS else FLOOR
    rest = parts[2:] if folder != FLOOR else parts[1:]
    return len(rest) == 1 and (ROOT / folder / f"{rest[0]}.py").is_file()


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    out: dict[str, set[str]] = {}
    for folder in (FLOOR, *FOLDERS):
        for path in sorted((ROOT / folder).glob("*.py")):
            out[module_of(path)] = {m for m, _ in imports(path) if is_module(m)}
    return out


def room(module: str) -> str:
    folder = folder_of(module)
    return module.removeprefix("layerbudget.") if folder == FLOOR else f"{folder}/"


def test_imports_point_one_way_and_report_the_map(capsys):
    back = []
    for folder in (FLOOR, *FOLDERS):
        for path in sorted((ROOT / folder).glob("*.py")):
            for module, line in imports(path):
                target = folder_of(module)
                if target != folder and target not in ALLOWED[folder]:
                    back.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    g = graph()
    arrows = {(room(a), room(b)) for a, targets in g.items() for b in targets if room(a) != room(b)}
    rooms = {room(m) for m in g}
    folders = {(folder_of(a), folder_of(b)) for a, targets in g.items() for b in targets if folder_of(a) != folder_of(b)}
    with capsys.disabled():
        print(f"\nimport map: {len(rooms)} rooms, {len(arrows)} arrows between them; "
              f"{len(folders)} arrows between the {len(ALLOWED)} folders; {len(back)} back-arrows")
    assert back == [], "imports against the direction of dependency:\n" + "\n".join(back)


def test_no_module_imports_itself_back():
    """The module graph, lazy and TYPE_CHECKING imports included, has no cycle."""
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_no_module_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for folder in (FLOOR, *FOLDERS, "benchmarks")
        for p in (ROOT / folder).glob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert long == {}


def test_core_nouns_load_no_searcher_solver_or_sampler():
    """Importing Problem, Plan and Budget loads no searcher, and neither PuLP nor Optuna."""
    code = (
        "import sys\n"
        "from layerbudget.problem import Budget\n"
        "from layerbudget.plan import Plan\n"
        "from layerbudget.problem import Problem\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pulp', 'optuna', 'ray')\n"
        "             or m.startswith(('layerbudget.search', 'layerbudget.profiles', 'layerbudget.evaluators')))\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
