"""The `fastsess` command line: gen-secret, cleanup and inspect read the INI file like the middleware."""

from __future__ import annotations

import json
import struct
import time

import pytest

from fastsess import SessionMiddleware, core
from fastsess.cli import main, read_ini
from fastsess.config import Config, collect_options
from fastsess.stores.lmdb import LmdbStore

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


def id_keys(ini_path):
    """The id-cookie keys a middleware built from ini_path verifies with."""
    mw = SessionMiddleware(lambda e, s: [], read_ini(str(ini_path)))
    try:
        return mw.service.keys.id_keys
    finally:
        mw.close()


@pytest.mark.parametrize(
    "entry",
    [
        b"garbage",  # the store cannot parse it
        struct.pack("<BBxxIQdd", 2, 0, 4, 1, time.time() + 60, time.time()) + b"junk",  # a record that does not unpack
    ],
    ids=["entry", "blob"],
)
def test_inspect_reports_a_damaged_record_instead_of_failing(ini, capsys, entry):
    cookie = make_cookie(ini)
    session_id = core.open_id_cookie(cookie.split("=", 1)[1], id_keys(ini), "session")[0]
    store = LmdbStore(str(ini.parent / "sessions"))
    try:
        with store._environment().begin(write=True) as txn:
            txn.put(core.store_key(session_id), entry, db=store._shared().meta)
    finally:
        store.close()
    assert main(["inspect", "--config", str(ini), "--json", cookie]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True and report["state"].startswith("damaged")


def test_cleanup_reports_what_it_removed_as_json(ini, capsys):
    make_cookie(ini)
    assert main(["cleanup", "--config", str(ini), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 0


@pytest.mark.parametrize("batch", ["0", "-5", "ten", "1.5"])
def test_cleanup_refuses_a_batch_that_is_not_a_positive_whole_number(ini, capsys, batch):
    """--batch 0 used to loop forever: each step removed 0, never fewer than the batch."""
    with pytest.raises(SystemExit) as exit_:
        main(["cleanup", "--config", str(ini), "--batch", batch])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "argument --batch: must be a whole number of at least 1" in captured.err


def test_cleanup_with_a_batch_of_one_finishes(ini, capsys):
    make_cookie(ini)
    assert main(["cleanup", "--config", str(ini), "--batch", "1", "--json"]) == 0
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


@pytest.fixture
def cookie_ini(tmp_path):
    path = tmp_path / "cookie.ini"
    path.write_text(f"[app:main]\nsession.type = cookie\nsession.secret = {SECRET}\nsession.timeout = 60\n")
    return path


def test_cleanup_of_cookie_sessions_is_a_configuration_error_not_a_silent_success(cookie_ini, capsys):
    """Cookie sessions have no server-side store, so a cleanup job pointed at one is misconfigured
    (the wrong INI file, or a job left over from before a switch to cookies): exit 2 says so, where
    exit 0 would let a cron job report success while it cleans nothing."""
    assert main(["cleanup", "--config", str(cookie_ini)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert err.startswith("fastsess: ") and "\n" not in err
    assert "session.type = cookie" in err and "no server-side store" in err


@pytest.mark.parametrize("store_type, url", [("memcached", "127.0.0.1:9"), ("redis", "redis://127.0.0.1:9/0")])
def test_cleanup_of_a_ttl_store_says_the_server_expires_sessions_without_connecting(
    tmp_path, capsys, store_type, url
):
    """Nothing listens on port 9: cleanup neither connects nor pretends it removed something."""
    path = tmp_path / "ttl.ini"
    path.write_text(f"[app:main]\nsession.type = {store_type}\nsession.url = {url}\n"
                    f"session.secret = {SECRET}\nsession.timeout = 60\n")
    assert main(["cleanup", "--config", str(path)]) == 0
    assert "expires sessions itself" in capsys.readouterr().out
    assert main(["cleanup", "--config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["removed"] == 0 and "server TTL" in report["note"]


def test_inspect_decodes_a_cookie_session_without_a_store(cookie_ini, capsys):
    cookie = make_cookie(cookie_ini)
    assert main(["inspect", "--config", str(cookie_ini), "--json", cookie]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["state"], report["data"]) == ("cookie", {"user": "ada"})


def test_create_table_on_cookie_sessions_is_a_clear_error(cookie_ini, capsys):
    assert main(["create-table", "--config", str(cookie_ini)]) == 2
    assert "this config uses cookie" in capsys.readouterr().err


def test_migrate_beaker_into_cookie_sessions_is_refused_before_the_source_is_opened(cookie_ini, capsys):
    """The target's misconfiguration is the error to report, not whatever the Beaker source does."""
    from loopback import free_port

    assert main(["migrate-beaker", "--config", str(cookie_ini), "--from-type", "ext:memcached",
                 "--from-url", f"127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "server-side fastsess store" in err and "cannot reach" not in err


@pytest.mark.parametrize("count", ["24", "48", "1024"])
def test_gen_secret_prints_a_secret_the_middleware_accepts(count, capsys):
    assert main(["gen-secret", "--bytes", count]) == 0
    secret = capsys.readouterr().out.strip()
    config = Config(collect_options({"session.type": "cookie", "session.secret": secret}))
    assert config.secrets == [secret]


@pytest.mark.parametrize("count", ["-5", "0", "8", "23", "1025", "10000000", "many"])
def test_gen_secret_refuses_byte_counts_that_give_no_usable_secret(count, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["gen-secret", "--bytes", count])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert "argument --bytes" in captured.err and "24" in captured.err and "1024" in captured.err
