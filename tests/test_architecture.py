"""The layer contract (pyproject.toml, ARCHITECTURE.md) holds, fails on an upward import, and every
on-disk name is spelled in exactly one module."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "model", "formats", "pipelines", "trainer", "demo")
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(root)})


def test_the_repository_keeps_its_import_contracts():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module,line,broken", [
    ("model/network.py", "import pipelines.shard", "layers point down"),
    ("trainer/data.py", "from pipelines.embedding import worker", "layers point down"),
    ("model/kmeans.py", "import ray", "model is pure torch"),
    ("pipelines/sharding/dedup.py", "from pipelines.embedding import prototypes", "one job's parts"),
])
def test_an_upward_or_sideways_import_breaks_the_contract(tmp_path, module, line, broken):
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.png"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(f"{line}  # noqa\n" + target.read_text())
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert re.search(re.escape(broken) + r".*BROKEN", done.stdout), done.stdout[-2000:]


# Each on-disk name or shared constant, and the one module allowed to define it.
OWNERS = {
    r'"_stats\.json"': "formats/shards.py",
    r'"manifest\.json"': "formats/manifest.py",
    r'"embed_manifest\.json"': "formats/sidecar.py",
    r'"prototypes\.pt"': "formats/prototypes.py",
    r"\bIGNORE_INDEX = ": "model/metrics.py",
    r"\b[A-Z_]*EXTENSIONS = ": "formats/images.py",
    r"\bSAMPLE_IMAGE_KEYS = ": "formats/shards.py",
}


@pytest.mark.parametrize("pattern", OWNERS)
def test_every_on_disk_name_is_defined_once(pattern):
    sources = [p for name in PACKAGES for p in (REPO / name).rglob("*.py")] + list((REPO / "bench").rglob("*.py"))
    found = [str(p.relative_to(REPO)) for p in sources for _ in re.finditer(pattern, p.read_text())]
    assert found == [OWNERS[pattern]]
