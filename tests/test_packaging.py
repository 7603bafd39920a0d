"""The package configuration covers every file the code reads at run time.

New setuptools installs only the folders named in ``packages`` and only the files ``package-data`` matches; a data
folder or file left out installs silently without it (a wheel without the chat page or the default model's LoRA).
This reads pyproject.toml and the tracked files; tests/test_wheel.py (slow) builds and installs a real wheel.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _tracked_files() -> list[PurePosixPath]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout: the packaged files are the tracked ones")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [PurePosixPath(p) for p in out.split("\0") if p]


def _package_of(folder: PurePosixPath) -> str | None:
    """The dotted package a source folder installs as, by the longest matching ``package-dir`` entry."""
    best: tuple[int, str] | None = None
    for name, src in CONFIG["package-dir"].items():
        src_parts = PurePosixPath(src).parts
        if folder.parts[: len(src_parts)] == src_parts and (best is None or len(src_parts) > best[0]):
            best = (len(src_parts), ".".join([name, *folder.parts[len(src_parts):]]))
    return None if best is None else best[1]


def _shipped_files() -> dict[str, list[PurePosixPath]]:
    by_package: dict[str, list[PurePosixPath]] = {}
    for path in _tracked_files():
        package = _package_of(path.parent)
        if package is not None:
            by_package.setdefault(package, []).append(path)
    return by_package


def test_every_folder_with_files_is_a_declared_package():
    declared = set(CONFIG["packages"])
    missing = sorted(set(_shipped_files()) - declared)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_data_file_is_matched_by_package_data():
    patterns = CONFIG.get("package-data", {})
    left_out = [str(path) for package, files in _shipped_files().items() for path in files
                if path.suffix != ".py" and not any(fnmatch.fnmatch(path.name, p) for p in patterns.get(package, ()))]
    assert not left_out, f"no [tool.setuptools.package-data] pattern ships these: {left_out}"


def test_the_data_the_code_reads_is_in_the_declared_packages():
    files = {str(p) for fs in _shipped_files().values() for p in fs}
    for needed in ("serve/web/index.html", "facellm/pretrained/default/lora/adapter_model.safetensors",
                   "facellm/train/recipes/default.toml", "tools/data/verify_calibration.json"):
        assert needed in files, needed
