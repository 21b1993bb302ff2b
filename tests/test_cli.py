"""The `fastsess` command line: gen-secret, cleanup and inspect read the INI file like the middleware."""

from __future__ import annotations

import json

import pytest

from fastsess import SessionMiddleware, core
from fastsess.cli import main, read_ini

SECRET = "s" * 40


@pytest.fixture
def ini(tmp_path):
    path = tmp_path / "app.ini"
    path.write_text(
        "[app:main]\n"
        "use = egg:myapp\n"
        "session.type = lmdb\n"
        "session.data_dir = %(here)s/sessions\n"
        f"session.secret = {SECRET}\n"
        "session.timeout = 60\n"
    )
    return path


def make_cookie(ini_path) -> str:
    """A real cookie issued by a middleware configured from the same INI file."""
    def app(environ, start_response):
        environ["beaker.session"]["user"] = "ada"
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    mw = SessionMiddleware(app, read_ini(str(ini_path)))
    headers = {}
    mw({"REQUEST_METHOD": "GET", "wsgi.url_scheme": "https"}, lambda s, h, e=None: headers.update(h))
    mw.close()
    return headers["Set-Cookie"].split(";")[0]


def test_gen_secret_prints_a_long_random_secret(capsys):
    assert main(["gen-secret"]) == 0
    first = capsys.readouterr().out.strip()
    main(["gen-secret"])
    second = capsys.readouterr().out.strip()
    assert len(first) >= 32 and first != second


def test_read_ini_expands_here_and_keeps_every_key(ini):
    options = read_ini(str(ini))
    assert options["session.data_dir"] == str(ini.parent / "sessions")
    assert options["use"] == "egg:myapp"


def test_inspect_verifies_and_decodes_a_cookie(ini, capsys):
    cookie = make_cookie(ini)
    assert main(["inspect", "--config", str(ini), "--json", cookie]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True
    assert report["state"] == "live"
    assert report["data"] == {"user": "ada"}
    assert cookie.split("=", 1)[1] not in json.dumps(report)  # never echoes the id


def test_inspect_rejects_a_forged_cookie(ini, capsys):
    forged = "session=" + core.b64url_encode(b"\x01" * 50)
    assert main(["inspect", "--config", str(ini), forged]) == 1
    assert "does not verify" in capsys.readouterr().out


def test_cleanup_reports_what_it_removed_as_json(ini, capsys):
    make_cookie(ini)
    assert main(["cleanup", "--config", str(ini), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 0


def test_commands_take_the_config_from_the_environment(ini, capsys, monkeypatch):
    monkeypatch.setenv("FASTSESS_CONFIG", str(ini))
    assert main(["cleanup", "--json"]) == 0
    assert "removed" in json.loads(capsys.readouterr().out)


def test_a_bad_config_is_a_clear_error_and_exit_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.ini"
    bad.write_text("[app:main]\nsession.type = lmdb\nsession.data_dir = x\nsession.secret = short\n")
    assert main(["cleanup", "--config", str(bad)]) == 2
    assert "at least 32" in capsys.readouterr().err


def test_a_missing_config_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.delenv("FASTSESS_CONFIG", raising=False)
    assert main(["cleanup"]) == 2
    assert "--config" in capsys.readouterr().err
