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


def test_a_filter_section_with_plain_keys_reads_as_the_paste_filter_reads_it(tmp_path, capsys):
    # The Paste filter takes its own section's keys without a prefix; the CLI must too.
    ini = tmp_path / "app.ini"
    ini.write_text(
        "[DEFAULT]\n"
        "debug = true\n"
        "[filter:session]\n"
        "use = egg:fastsess#session\n"
        "type = lmdb\n"
        "data_dir = %(here)s/sessions\n"
        f"secret = {SECRET}\n"
        "timeout = 60\n"
    )
    from paste.deploy import loadfilter

    def app(environ, start_response):
        environ["beaker.session"]["user"] = "ada"
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    mw = loadfilter(f"config:{ini}", name="session")(app)
    headers = {}
    mw({"REQUEST_METHOD": "GET", "wsgi.url_scheme": "https"}, lambda s, h, e=None: headers.update(h))
    mw.close()
    cookie = headers["Set-Cookie"].split(";")[0]
    assert main(["inspect", "--config", str(ini), "--section", "filter:session", "--json", cookie]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == {"user": "ada"}


def test_a_filter_app_section_with_plain_keys_reads_as_paste_reads_it(tmp_path, capsys):
    # [filter-app:...] is the other Paste form of the filter: plain keys, and a "next" that is Paste's own.
    ini = tmp_path / "app.ini"
    ini.write_text(
        "[app:main]\n"
        f"use = call:{__name__}:saving_app_factory\n"
        "[filter-app:site]\n"
        "use = egg:fastsess#session\n"
        "next = main\n"
        "type = lmdb\n"
        "data_dir = %(here)s/sessions\n"
        f"secret = {SECRET}\n"
        "timeout = 60\n"
    )
    from paste.deploy import loadapp

    mw = loadapp(f"config:{ini}", name="site")
    headers = {}
    mw({"REQUEST_METHOD": "GET", "wsgi.url_scheme": "https"}, lambda s, h, e=None: headers.update(h))
    mw.close()
    cookie = headers["Set-Cookie"].split(";")[0]
    assert main(["inspect", "--config", str(ini), "--section", "filter-app:site", "--json", cookie]) == 0
    assert json.loads(capsys.readouterr().out)["data"] == {"user": "ada"}


def saving_app_factory(global_conf, **local_conf):
    """A Paste app factory whose app saves one key."""
    def app(environ, start_response):
        environ["beaker.session"]["user"] = "ada"
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    return app


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


def test_inspect_json_reports_a_forged_cookie_as_json(ini, capsys):
    forged = "session=" + core.b64url_encode(b"\x01" * 50)
    assert main(["inspect", "--config", str(ini), "--json", forged]) == 1
    assert json.loads(capsys.readouterr().out) == {"verified": False}


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
        # a record that does not unpack; built at collection, so its expiry must outlast the whole run
        struct.pack("<BBxxIQdd", 2, 0, 4, 1, time.time() + 30 * 86400, time.time()) + b"junk",
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


@pytest.fixture
def memory_ini(tmp_path):
    path = tmp_path / "memory.ini"
    path.write_text(f"[app:main]\nsession.type = memory\nsession.secret = {SECRET}\nsession.timeout = 60\n")
    return path


def test_cleanup_of_memory_sessions_is_an_error_not_removed_zero(memory_ini, capsys):
    # The command's own memory store is empty; the application's lives in the application's process.
    assert main(["cleanup", "--config", str(memory_ini)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("fastsess: ") and "session.type = memory" in captured.err


def test_inspect_of_a_memory_session_verifies_the_cookie_and_does_not_claim_it_is_missing(memory_ini, capsys):
    cookie = make_cookie(memory_ini)
    assert main(["inspect", "--config", str(memory_ini), "--json", cookie]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verified"] is True
    assert report["state"].startswith("unknown")


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


def test_migrate_beaker_into_memory_sessions_is_refused_and_records_no_pass(memory_ini, tmp_path, capsys):
    # This process's memory store is not the application's: "1 migrated" would be a lie, and the
    # state file it left would turn the real first pass into a delta pass.
    beaker_dir = tmp_path / "beaker" / "container_file" / "a" / "ab"
    beaker_dir.mkdir(parents=True)
    (beaker_dir / f"ab{'0' * 30}.cache").write_bytes(b"")
    assert main(["migrate-beaker", "--config", str(memory_ini), "--from-type", "file",
                 "--from-data-dir", str(tmp_path / "beaker")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "memory" in captured.err and "\n" not in captured.err.strip()
    assert not (tmp_path / ".fastsess-migrate-beaker.json").exists()


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


# ---------------------------------------------------------------- bad input: one line on stderr, never a traceback


def fails_cleanly(capsys, argv: list[str], *expected: str) -> str:
    """main(argv) prints `fastsess: ...` on one line of stderr and exits 2; the message, returned."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("fastsess: ") and "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], "required: command"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["inspect", "--config", "app.ini"], "required: cookie"),
        (["cleanup", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["migrate-beaker", "--from-type", "file"], "required"),
        (["gen-secret", "--bytes", "3"], "argument --bytes"),
    ],
)
def test_wrong_arguments_are_one_fastsess_line_and_exit_status_2(capsys, argv, expected):
    # The README: bad input prints one `fastsess: ...` line on stderr and exits 2; wrong arguments too.
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and err.startswith("fastsess: ") and "\n" not in err, err
    assert expected in err and "--help" in err


def test_ctrl_c_is_one_line_and_exit_status_130_not_a_traceback(ini, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LmdbStore, "cleanup", interrupted)
    assert main(["cleanup", "--config", str(ini)]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == "fastsess: interrupted"


def write(tmp_path, text: str, name: str = "app.ini") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[app:main\nsession.type = file\n", "line 1: expected a [section] header"),
        (f"session.secret = {SECRET}\n[app:main]\n", "line 1: expected a [section] header"),
        (f"[app:main]\nsession.secret = {SECRET}\nthis line has no equals sign\n", "line 3: neither"),
        (f"[app:main]\nsession.secret = {SECRET}\nsession.secret = {SECRET}\n", "option 'session.secret'"),
    ],
    ids=["header", "option-first", "no-equals", "duplicate"],
)
def test_a_malformed_ini_file_is_a_clear_error_that_quotes_no_line(tmp_path, capsys, text, expected):
    err = fails_cleanly(capsys, ["cleanup", "--config", write(tmp_path, text)], expected)
    assert SECRET not in err


def test_a_lone_percent_in_a_secret_is_a_clear_error_that_never_shows_the_secret(tmp_path, capsys):
    secret = "abc%def" + "s" * 30
    path = write(tmp_path, f"[app:main]\nsession.type = cookie\nsession.timeout = 60\nsession.secret = {secret}\n")
    err = fails_cleanly(capsys, ["inspect", "--config", path, "x"], "[app:main] session.secret", "'%%'")
    assert "def" + "s" * 10 not in err


def test_read_ini_reads_values_as_pastedeploy_does(tmp_path):
    """%% is a literal %, %(here)s and %(__file__)s expand: the command sees the app's very settings."""
    loadwsgi = pytest.importorskip("paste.deploy.loadwsgi")
    path = write(tmp_path, "[app:main]\nuse = egg:myapp\nsession.secret = 100%%-" + "s" * 30 + "\n"
                 "session.data_dir = %(here)s/sessions\nsession.log_file = %(__file__)s.log\n")
    ours = read_ini(path)
    theirs = loadwsgi.ConfigLoader(path).parser
    for key in ("session.secret", "session.data_dir", "session.log_file"):
        assert ours[key] == theirs.get("app:main", key)
    assert ours["session.secret"] == "100%-" + "s" * 30
    assert "here" not in ours and "__file__" not in ours


@pytest.mark.parametrize("problem", ["missing", "directory", "not-utf8"])
def test_a_config_file_that_cannot_be_read_is_a_clear_error(tmp_path, capsys, problem):
    path = tmp_path / "app.ini"
    if problem == "directory":
        path.mkdir()
    elif problem == "not-utf8":
        path.write_bytes(b"[app:main]\nsession.secret = caf\xe9" + b"s" * 40 + b"\n")
    expected = "is not UTF-8 text" if problem == "not-utf8" else "cannot read config file"
    fails_cleanly(capsys, ["cleanup", "--config", str(path)], expected)


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_demo_refuses_a_port_that_is_not_a_port_number(capsys, port):
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--port", port])
    assert exit_.value.code == 2
    assert "argument --port: must be a port number from 0 to 65535" in capsys.readouterr().err


def test_demo_on_a_host_that_does_not_resolve_is_a_clear_error(tmp_path, capsys):
    fails_cleanly(capsys, ["demo", "--host", "no.such.host.invalid", "--port", "0", "--data-dir", str(tmp_path)],
                  "demo cannot listen on no.such.host.invalid:0")


def test_demo_on_a_port_in_use_is_a_clear_error(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        fails_cleanly(capsys, ["demo", "--port", port, "--data-dir", str(tmp_path)],
                      f"demo cannot listen on 127.0.0.1:{port}", "in use")


def test_demo_with_a_data_dir_that_cannot_be_created_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    fails_cleanly(capsys, ["demo", "--port", "0", "--data-dir", str(blocker / "demo")],
                  f"--data-dir {blocker / 'demo'}: cannot create or write there")


def test_bench_with_an_out_dir_that_cannot_be_created_fails_before_any_benchmark(tmp_path, capsys):
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    fails_cleanly(capsys, ["bench", "--quick", "--out", str(blocker / "results")],
                  f"--out {blocker / 'results'}: cannot create or write there")


def test_migrate_beaker_checks_its_state_file_before_migrating_anything(tmp_path, capsys):
    from beaker.middleware import SessionMiddleware as BeakerMiddleware

    def beaker_app(environ, start_response):
        environ["beaker.session"]["user"] = "ada"
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    beaker_dir = tmp_path / "beaker"
    BeakerMiddleware(beaker_app, {"session.type": "file", "session.data_dir": str(beaker_dir)})(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http", "SERVER_NAME": "x",
         "SERVER_PORT": "80"}, lambda s, h, e=None: None)
    ini = write(tmp_path, f"[app:main]\nsession.type = lmdb\nsession.data_dir = %(here)s/fastsess\n"
                          f"session.secret = {SECRET}\nsession.timeout = 60\n")
    blocker = tmp_path / "regular-file"
    blocker.write_text("x")
    source = ["--from-type", "file", "--from-data-dir", str(beaker_dir)]
    fails_cleanly(capsys, ["migrate-beaker", "--config", ini, *source, "--state", str(blocker / "state.json")],
                  f"cannot write the migrate-beaker state file {blocker / 'state.json'}")
    fails_cleanly(capsys, ["migrate-beaker", "--config", ini, *source, "--state", str(tmp_path)], "is a directory")
    assert main(["migrate-beaker", "--config", ini, *source, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["mode"], report["seen"], report["migrated"]) == ("bulk", 1, 1)  # nothing was migrated before


def test_version_names_the_kernel_in_use(capsys):
    # The README points here to tell whether an install got the C kernel or fell back.
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert f"({core.IMPLEMENTATION} kernel)" in capsys.readouterr().out
