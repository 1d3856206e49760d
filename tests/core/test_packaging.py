"""Packaging: no top-level folder hides an installed package, README's commands hold, the wheel is whole.

The subprocess tests start from the project root, as a user's ``python -c``, ``python -m pytest``
and Ray workers do: the root is then on ``sys.path``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def readme_command(word: str) -> str:
    """The README's one-line shell command that contains ``word`` (one of the two Quick start commands)."""
    lines = [ln.strip() for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("pip install ")]
    found = [ln for ln in lines if word in ln]
    assert len(found) == 1, f"README should hold exactly one `pip install ...` command with {word!r}: {found}"
    return found[0]


def run_from_root(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_no_top_level_folder_is_a_regular_package():
    """A folder with ``__init__.py`` on ``sys.path`` would hide an installed package of its name."""
    folders = [d for d in ROOT.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert {"layerbudget", "kernels", "search"} <= {d.name for d in folders}
    assert [d.name for d in folders if (d / "__init__.py").exists()] == []
    mapped = SETUPTOOLS["package-dir"]
    assert sorted(mapped) == sorted(SETUPTOOLS["packages"])
    assert all(name == "layerbudget" or name.startswith("layerbudget.") for name in mapped)
    assert all((ROOT / folder).is_dir() and "/" not in folder for folder in mapped.values())


def test_import_kernels_from_the_root_is_the_installed_package():
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the Hugging Face `kernels` package is not installed")
    proc = run_from_root("-c", "import kernels, transformers.integrations.hub_kernels; print(kernels.__file__)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = Path(proc.stdout.strip().splitlines()[-1]).resolve()
    assert where.is_relative_to(Path(str(dist.locate_file(""))).resolve())
    assert not where.is_relative_to(ROOT)


def test_readme_test_command_collects_from_the_root():
    install, test = readme_command("pytest").split(" && ")
    assert install == 'pip install "torch==2.13.0" -e ".[test]"' and test == "python -m pytest -q"
    proc = run_from_root(*test.split()[1:], "--collect-only", "-p", "no:cacheprovider")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert re.search(r"^\d+(/\d+)? tests collected", proc.stdout, re.M), proc.stdout[-3000:]


def test_ci_installs_with_readme_test_command():
    install = readme_command("pytest").split(" && ")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m venv" in ci and "pip freeze" in ci
    assert f"\n{install}\n" in ci
    assert "python -m pytest -q" in ci


SHARED_FIXTURE_TESTS = """
import os, pytest

@pytest.fixture(scope="module")
def shared():
    with open(os.environ["BUILDS"], "a") as f:
        f.write(__name__ + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_uses_the_shared_fixture(shared, i):
    with open(os.environ["RUNS"], "a") as f:
        f.write(__name__ + " " + os.environ.get("PYTEST_XDIST_WORKER", "-") + "\\n")
"""


def test_the_suites_options_build_a_files_shared_fixture_once_on_one_worker(tmp_path):
    """pyproject's pytest options run the suite on workers (one per core, up to 4), each file whole on one."""
    for name in ("test_first.py", "test_second.py"):
        (tmp_path / name).write_text(SHARED_FIXTURE_TESTS)
    builds, runs = tmp_path / "builds.txt", tmp_path / "runs.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}  # this run's own workers
    env.update(BUILDS=str(builds), RUNS=str(runs))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
                           "--rootdir", str(tmp_path), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(builds.read_text().split()) == ["test_first", "test_second"]
    lines = runs.read_text().splitlines()
    workers: dict[str, set[str]] = {}
    for line in lines:
        module, worker = line.split()
        workers.setdefault(module, set()).add(worker)
    assert all(len(w) == 1 and "-" not in w for w in workers.values()), workers
    assert len(lines) == 12


def _build_wheel(dest: Path) -> Path:
    """A wheel built from a copy of the sources (the checkout itself stays untouched)."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"building the wheel offline needs setuptools>=68, this environment has {setuptools.__version__}")
    src = dest / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in SETUPTOOLS["package-dir"].values():
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(dest), "--no-deps", "--no-build-isolation", "-q"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dest.glob("layerbudget-*.whl")
    return wheel


def test_wheel_holds_every_module_and_package_file_under_layerbudget(tmp_path):
    names = set(zipfile.ZipFile(_build_wheel(tmp_path)).namelist())
    assert {n.split("/")[0] for n in names} == {"layerbudget", f"layerbudget-{PYPROJECT['project']['version']}.dist-info"}
    expected = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        where = package.replace(".", "/")
        expected |= {f"{where}/{p.name}" for p in (ROOT / folder).glob("*.py")}
        for pattern in SETUPTOOLS["package-data"].get(package, []):
            expected |= {f"{where}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).glob(pattern)}
    assert "layerbudget/experiments/default.toml" in expected and "layerbudget/search/registry.py" in expected
    assert sorted(expected - names) == []
    assert not any(n.endswith("__init__.py") for n in names)
