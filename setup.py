"""Build the optional C kernel: fastsess._core from src/fastsess/_core.pyx, and four
pure-Python modules compiled as they are: fastsess._request, the request cycle, from
src/fastsess/_request_py.py; fastsess._session, the session object, from
src/fastsess/_session_py.py; fastsess.stores._memory, the memory store's table, from
src/fastsess/stores/_memory_py.py; and fastsess.stores._lmdb_fast, the LMDB store's
load() and cas(), from src/fastsess/stores/_lmdb_fast_py.py.

Everything else about the package is declared in pyproject.toml. The kernel also
exists in pure Python (fastsess._core_py), so a machine that cannot compile it
still gets a working, slower package, with a warning. Two switches, read at build
time:

- FASTSESS_REQUIRE_EXTENSIONS=1: a failed build is an error (CI and wheels set it),
  so a broken build can never pass as the fallback.
- FASTSESS_NO_EXTENSIONS=1: do not build the C kernel at all. It wins over
  FASTSESS_REQUIRE_EXTENSIONS, as it does at import time.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError


def env_flag(name: str) -> bool:
    """Set means non-empty and not "0", the rule fastsess.core applies at import time."""
    return os.environ.get(name, "") not in ("", "0")


# Off CPython (PyPy, GraalPy) the pure kernel is the faster one, as with orjson and xxhash.
NO_EXTENSIONS = env_flag("FASTSESS_NO_EXTENSIONS") or sys.implementation.name != "cpython"
REQUIRE_EXTENSIONS = env_flag("FASTSESS_REQUIRE_EXTENSIONS") and not NO_EXTENSIONS

CYTHON_DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False}

# What a missing or broken toolchain raises. ValueError: the MSVC lookup on Windows.
BUILD_ERRORS: tuple[type[BaseException], ...] = (
    CCompilerError,  # includes CompileError and LinkError
    ExecError,
    PlatformError,
    ValueError,
)


class CKernelBuildError(Exception):
    """The C kernel failed to build and FASTSESS_REQUIRE_EXTENSIONS=1 forbids the fallback."""


class OptionalBuildExt(build_ext):
    """build_ext that cythonizes each extension and treats failure as optional.

    Cythonizing here rather than at the top of this file keeps metadata and sdist
    builds free of Cython and puts every failure, Cython's included, in one place.
    """

    def initialize_options(self) -> None:
        super().initialize_options()
        self.failed: set[str] = set()

    def run(self) -> None:
        inplace = self.inplace or self.editable_mode  # setuptools clears inplace while it builds
        try:
            super().run()
        except BUILD_ERRORS as exc:  # no usable compiler at all
            for ext in self.extensions:
                self.give_up(ext, exc)
        if inplace:
            self.remove_stale_inplace_copies()

    def build_extension(self, ext: Extension) -> None:
        try:
            from Cython.Build import cythonize
            from Cython.Compiler.Errors import CompileError as CythonError
        except ImportError as exc:
            self.give_up(ext, exc)
            return
        try:
            (cythonized,) = cythonize(
                [ext],
                compiler_directives=CYTHON_DIRECTIVES,
                force=self.force or declarations_changed(ext),
                quiet=not self.verbose,
            )
            ext.sources = cythonized.sources
            super().build_extension(ext)
        except (CythonError, *BUILD_ERRORS) as exc:
            self.give_up(ext, exc)

    def give_up(self, ext: Extension, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if REQUIRE_EXTENSIONS:
            raise CKernelBuildError(
                f"building the C kernel {ext.name} failed ({reason}), "
                "and FASTSESS_REQUIRE_EXTENSIONS=1 makes that an error"
            ) from exc
        self.failed.add(ext.name)
        # A module left from an earlier build must not be installed in place of this one.
        stale = self.get_ext_fullpath(ext.name)
        if os.path.exists(stale):
            os.remove(stale)
        banner = "*" * 76
        print(
            f"\n{banner}\n"
            f"WARNING: fastsess could not build its C kernel ({ext.name}):\n"
            f"    {reason}\n"
            "Installing the pure-Python kernel instead: the same behaviour, slower.\n"
            "Set FASTSESS_REQUIRE_EXTENSIONS=1 to make this an error, or\n"
            "FASTSESS_NO_EXTENSIONS=1 to skip the C kernel without this warning.\n"
            f"{banner}\n",
            file=sys.stderr,
        )

    def remove_stale_inplace_copies(self) -> None:
        """Delete src/fastsess/_core.*.so of a failed build, which an editable install would import."""
        build_py = self.get_finalized_command("build_py")
        for name in self.failed:
            package, _, _ = name.rpartition(".")
            filename = os.path.basename(self.get_ext_filename(name))
            inplace = os.path.join(build_py.get_package_dir(package), filename)
            if os.path.exists(inplace):
                print(f"fastsess: removing {inplace} left by an earlier build", file=sys.stderr)
                os.remove(inplace)


def declarations_changed(ext: Extension) -> bool:
    """True when a .pxd file of the package is newer than the C file made from ext's source.

    Cython's own dependency check misses them here: a module compiled from
    _request_py.py takes its declarations from _request.pxd, named after the
    module, which cimports from _session.pxd. A C file left behind by an earlier
    build would then disagree with the types the other modules now have.
    """
    c_file = os.path.splitext(ext.sources[0])[0] + ".c"
    if not os.path.exists(c_file):
        return False  # cythonize makes it anyway
    built = os.path.getmtime(c_file)
    package = os.path.dirname(ext.sources[0])
    return any(
        os.path.getmtime(os.path.join(package, name)) > built
        for name in os.listdir(package)
        if name.endswith(".pxd")
    )


def c_kernel() -> list[Extension]:
    """The kernel, and the request cycle, session and store hot paths compiled from their pure-Python sources.

    Each compiled source takes its declarations from the .pxd named after its module.
    """
    if NO_EXTENSIONS:
        return []
    return [
        Extension(
            name,
            [source],
            depends=["src/fastsess/_libcrypto.h"],  # included by _core.pyx; the others do not mind a rebuild
            extra_compile_args=["-O2"],  # MSVC accepts -O2 as well as /O2
            # Lets setuptools skip the in-place copy of a module that was not built.
            optional=not REQUIRE_EXTENSIONS,
        )
        for name, source in (
            ("fastsess._core", "src/fastsess/_core.pyx"),
            ("fastsess._request", "src/fastsess/_request_py.py"),
            ("fastsess._session", "src/fastsess/_session_py.py"),
            ("fastsess.stores._memory", "src/fastsess/stores/_memory_py.py"),
            ("fastsess.stores._lmdb_fast", "src/fastsess/stores/_lmdb_fast_py.py"),
        )
    ]


setup(ext_modules=c_kernel(), cmdclass={"build_ext": OptionalBuildExt})
