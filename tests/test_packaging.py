"""Packaging (SPEC 10): the sdist carries what a build needs and no generated C; the pure wheel works.

The builds run without isolation, with the build tools of this environment, so
the tests need no network; they skip where the `build` package is missing.
"""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "fastsess"

#: what Cython and setuptools leave beside the sources in a checkout (all in .gitignore)
BUILD_PRODUCTS = (".c", ".so", ".pyd", ".html", ".pyc")


def build(kind: str, tmp_path: Path, **env: str) -> Path:
    """Build from a copy of the checkout, so that build/ and egg-info never land in the real one."""
    pytest.importorskip("build")
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("not a source checkout")
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "dist", "wheelhouse", "*.egg-info", "__pycache__", ".*_cache", "results",
    ))
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", str(out), str(tree)],
        check=True, capture_output=True, env={**os.environ, **env}, cwd=tmp_path,
    )
    (built,) = out.iterdir()
    return built


def test_the_package_directory_holds_only_sources_and_build_products():
    # A stray file (a merge tool's _session_py.py.orig, say) is not part of the package and must not
    # be committed next to the modules.
    stray = [
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
        and path.suffix not in (".py", ".pyx", ".pxd", ".pyi", *BUILD_PRODUCTS)
        and path.name not in ("py.typed", "_libcrypto.h")
    ]
    assert stray == []


def test_the_sdist_has_what_a_build_needs_and_no_generated_c(tmp_path):
    sdist = build("sdist", tmp_path)
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in (
        "setup.py", "pyproject.toml", "README.md", "LICENSE", "docs/FORMATS.md",
        "src/fastsess/_core.pyx", "src/fastsess/_libcrypto.h", "src/fastsess/_core_py.py", "src/fastsess/_request.pxd",
        "src/fastsess/_request_py.py", "src/fastsess/_session.pxd", "src/fastsess/_session_py.py",
        "src/fastsess/stores/_memory.pxd", "src/fastsess/stores/_memory_py.py", "src/fastsess/stores/_record.pxd",
        "src/fastsess/stores/_lmdb_fast.pxd", "src/fastsess/stores/_lmdb_fast_py.py",
    ):
        assert needed in names, needed
    assert not [name for name in names if name.endswith(BUILD_PRODUCTS)]


def test_a_wheel_built_with_no_extensions_is_pure_python_and_complete(tmp_path):
    wheel = build("wheel", tmp_path, FASTSESS_NO_EXTENSIONS="1")
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {
        "fastsess/_core_py.py", "fastsess/_request_py.py", "fastsess/_session_py.py", "fastsess/stores/_memory_py.py",
        "fastsess/stores/_lmdb_fast_py.py", "fastsess/cli.py",
    } <= names
    assert not [name for name in names if name.endswith(BUILD_PRODUCTS)]


def test_a_declaration_file_newer_than_a_generated_c_file_makes_the_build_cythonize_again(tmp_path, monkeypatch):
    """_request.pxd cimports _session.pxd: a C file older than either is stale, whatever Cython's check says."""
    if not (ROOT / "setup.py").exists():
        pytest.skip("not a source checkout")
    setuptools = pytest.importorskip("setuptools")
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)  # read setup.py's helpers, build nothing
    declarations_changed = runpy.run_path(str(ROOT / "setup.py"))["declarations_changed"]
    package = tmp_path / "pkg"
    package.mkdir()
    source, c_file, pxd = package / "_mod_py.py", package / "_mod_py.c", package / "_other.pxd"
    for path in (source, c_file, pxd):
        path.write_text("")
    ext = setuptools.Extension("pkg._mod", [str(source)])
    os.utime(pxd, (1_000_000, 1_000_000))
    os.utime(c_file, (2_000_000, 2_000_000))
    assert not declarations_changed(ext)
    os.utime(pxd, (3_000_000, 3_000_000))
    assert declarations_changed(ext)
    c_file.unlink()  # never built: cythonize makes it anyway
    assert not declarations_changed(ext)
