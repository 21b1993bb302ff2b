"""The pure kernel without orjson and xxhash (SPEC 1, "The pure kernel on other platforms").

Each test starts a fresh interpreter whose first lines make orjson, xxhash and
Cython's `cython` module unimportable and which sets FASTSESS_NO_EXTENSIONS=1,
so the pure kernel runs on the standard library: json for the codec, hashlib
for the fingerprint, and fastsess._pure for the compiled modules' declarations.
To run more of the suite that way, add its files to NO_OPTIONAL_DEPS_TESTS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastsess
from fastsess import _core_py as reference

TESTS = Path(__file__).resolve().parent

# Test files run again, whole, in an interpreter without orjson and xxhash.
NO_OPTIONAL_DEPS_TESTS = [
    "test_core.py",
    "test_core_properties.py",
    "test_session.py",
    "test_merge.py",
    "test_formats.py",
]

BLOCKED = ("orjson", "xxhash", "cython")

# Runs before anything else in the child interpreter.
PRELUDE = f"""
import sys

class _BlockOptionalDeps:
    \"\"\"A meta-path finder that makes the optional dependencies unimportable.\"\"\"

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is made unimportable for this test")
        return None

sys.meta_path.insert(0, _BlockOptionalDeps())
"""


def run_without_optional_deps(code: str, stdin: str = "") -> subprocess.CompletedProcess:
    """Run `code` after PRELUDE in a fresh interpreter with FASTSESS_NO_EXTENSIONS=1."""
    src = str(Path(fastsess.__file__).resolve().parents[1])
    env = dict(os.environ, FASTSESS_NO_EXTENSIONS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, str(TESTS), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + code],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        env=env,
        timeout=300,
    )


def test_listed_test_files_pass_without_orjson_and_xxhash():
    files = [str(TESTS / name) for name in NO_OPTIONAL_DEPS_TESTS]
    code = f"import pytest\nraise SystemExit(pytest.main({files!r} + ['-q', '-p', 'no:cacheprovider']))\n"
    result = run_without_optional_deps(code)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout


def test_the_session_module_runs_without_cython_installed():
    # Cython is a build requirement only: the session source reads its type
    # declarations from fastsess._pure when the cython module is not there.
    result = run_without_optional_deps(
        "import fastsess.session as s\n"
        "assert s.__name__ == 'fastsess._session_py', s.__name__\n"
        "assert s.cython.__module__ == 'fastsess._pure', s.cython\n"
        "print('ok')\n"
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# The child's half of the exchange: the parent sends blobs its orjson kernel wrote
# and the child checks it reads them, then sends back what its json path writes.
CHILD = """
import base64, json, sys

for name in ("orjson", "xxhash"):
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(name + " was importable")

from fastsess import _core_py, core
from test_core import REFUSED, ROUND_TRIPS

assert core.IMPLEMENTATION == "python", core.IMPLEMENTATION
assert _core_py._orjson is None and _core_py._xxhash is None

incoming = json.load(sys.stdin)
report = {"written": {}, "refused": {}, "fingerprint": core.fingerprint(b"fastsess")}
for key, value in ROUND_TRIPS.items():
    theirs = core.decode_data(base64.b64decode(incoming[key]))
    assert theirs == {key: value} and type(theirs[key]) is type(value), key
    blob = core.encode_data({key: value})
    mine = core.decode_data(blob)
    assert mine == {key: value} and type(mine[key]) is type(value), key
    report["written"][key] = base64.b64encode(blob).decode()
for key, value in REFUSED.items():
    outcome = []
    for call in (lambda: core.check_value(key, value), lambda: core.encode_data({"fine": 1, key: value})):
        try:
            call()
        except Exception as exc:
            outcome.append([type(exc).__name__, str(exc)])
        else:
            outcome.append(None)
    report["refused"][key] = outcome
json.dump(report, sys.stdout)
"""


def test_stdlib_and_orjson_kernels_read_each_other():
    from test_core import REFUSED, ROUND_TRIPS

    kernels = [reference]
    try:
        from fastsess import _core as c_kernel

        kernels.append(c_kernel)
    except ImportError:
        pass
    written_here = {
        key: base64.b64encode(reference.encode_data({key: value})).decode()
        for key, value in ROUND_TRIPS.items()
    }
    result = run_without_optional_deps(CHILD, json.dumps(written_here))
    assert result.returncode == 0, result.stderr[-6000:]
    report = json.loads(result.stdout)

    for key, value in ROUND_TRIPS.items():
        blob = base64.b64decode(report["written"][key])
        for kernel in kernels:
            decoded = kernel.decode_data(blob)
            assert decoded == {key: value} and type(decoded[key]) is type(value), (kernel.__name__, key)
        # Floats aside (json and orjson print some differently), the bytes are the same.
        assert blob == base64.b64decode(written_here[key]), key

    for key, value in REFUSED.items():
        with pytest.raises(TypeError) as here:
            reference.check_value(key, value)
        there = report["refused"][key]
        assert there[0] is not None and there[1] is not None, key
        assert there[0][0] == there[1][0] == "TypeError", (key, there)
        assert repr(key) in there[0][1] and repr(key) in there[1][1], (key, there)
        if key not in ("lone_surrogate", "surrogate_key"):  # json and orjson word this one differently
            assert there[0][1] == str(here.value), key

    # Without xxhash the fingerprint is 8 bytes of BLAKE2b: only ever compared within one process.
    assert report["fingerprint"] == int.from_bytes(
        hashlib.blake2b(b"fastsess", digest_size=8).digest(), "big"
    )
