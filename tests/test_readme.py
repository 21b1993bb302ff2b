"""The README's INI examples load as written, through the command line's INI reader and load_config.

INI readers keep a `# comment` after a value as part of the value, so an
example with one fails with ConfigError when copied; this keeps them honest.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fastsess.cli import read_ini
from fastsess.config import load_config

README = Path(__file__).resolve().parent.parent / "README.md"
#: What a fragment (an example without a [section] line) leaves to the rest of the application's section.
FRAGMENT_BASE = {"session.type": "memory", "session.secret": "r" * 40}
#: Environment variables the examples name (`session.secret = env:...`).
EXAMPLE_ENV = {"MYAPP_SESSION_SECRET": "e" * 40}


def ini_examples() -> list[tuple[int, str]]:
    """(line number, text) of every ```ini block in the README."""
    text = README.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, match.start()) + 2, match.group(1))
        for match in re.finditer(r"^```ini\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    ]


EXAMPLES = ini_examples()


def test_the_readme_has_ini_examples():
    assert len(EXAMPLES) >= 2


@pytest.mark.parametrize(("line", "example"), EXAMPLES, ids=[f"README.md:{line}" for line, _ in EXAMPLES])
def test_a_readme_ini_example_loads_as_written(line, example, tmp_path, monkeypatch):
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    settings = [raw for raw in example.splitlines() if raw.strip() and raw.lstrip()[0] not in "#;["]
    if any(raw.partition("=")[2].strip() in ("...", "…") for raw in settings):
        pytest.skip(f"README.md:{line} has placeholder values: a fragment to fill in, not a config")
    header = re.search(r"^\[([^\]]+)\]", example, re.MULTILINE)
    if header is None:  # a fragment of an application's section: completed with what it leaves out
        section = "app:main"
        keys = {raw.partition("=")[0].strip() for raw in settings}
        base = "".join(f"{k} = {v}\n" for k, v in FRAGMENT_BASE.items() if k not in keys)
        example = f"[{section}]\n{base}{example}"
    else:
        section = header.group(1)
    path = tmp_path / "example.ini"
    path.write_text(example, encoding="utf-8")
    options = read_ini(str(path), section)
    load_config(options)
    for key, value in options.items():  # nor a comment swallowed into a value that takes any text
        assert not re.search(r"\s[#;]", value), f"README.md:{line}: {key} = {value!r}"


def differences_from_beaker() -> dict[str, tuple[str, str]]:
    """The README's "Differences from Beaker" table: Beaker's side -> (fastsess's side, why)."""
    text = README.read_text(encoding="utf-8").split("## Differences from Beaker", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    return {beaker.strip(): (fastsess.strip(), why.strip()) for beaker, fastsess, why in rows[2:]}


@pytest.mark.parametrize("refused", ["data_serializer = pickle", "type = dbm", "ext:mongodb"])
def test_differences_from_beaker_say_why_each_refusal_and_what_to_use(refused):
    # SPEC 3, "Beaker migration": the table lists pickle, MongoDB and dbm, and why.
    [(fastsess, why)] = [cells for beaker, cells in differences_from_beaker().items() if refused in beaker]
    assert fastsess.startswith("refused") and why
    assert "use" in fastsess or "JSON" in fastsess
