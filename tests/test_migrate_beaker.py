"""`fastsess migrate-beaker`: Beaker 1.14's file, ext:redis and ext:database sessions move into fastsess.

The Beaker stores here are written by Beaker 1.14 itself (pickle serializer,
its default), then read back through the restricted unpickler. Hostile
pickles must be refused and reported without running anything.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import pickle
import time
import uuid
from decimal import Decimal

import pytest
from beaker.middleware import SessionMiddleware as BeakerMiddleware
from webtest import TestApp

from fastsess import SessionMiddleware, core
from fastsess import migrate as migrate_module
from fastsess.cli import main, read_ini
from fastsess.migrate import (
    DELTA_SLACK_SECONDS,
    MAX_PICKLE_NODES,
    PickleRefused,
    RestrictedUnpickler,
    _hide_password,
    _without_password,
    parse_since,
)

SECRET = "a-fastsess-secret-of-at-least-32-characters"
BEAKER_SECRET = "pylons-era-secret"
HTTPS = {"wsgi.url_scheme": "https", "HTTP_HOST": "example.com"}
NAME = "beaker.session.id"

RICH = {
    "user": "ada",
    "when": _dt.datetime(2026, 1, 2, 3, 4, 5, 600),
    "aware": _dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=_dt.timezone(_dt.timedelta(hours=-5))),
    "day": _dt.date(2026, 1, 2),
    "at": _dt.time(12, 30),
    "raw": b"\x00\xff\x80bytes",
    "tags": {"a", "b", 3},
    "frozen": frozenset({1, 2}),
    "pair": (1, "two"),
    "price": Decimal("9.99"),
    "u": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "cart": [{"sku": 1, "qty": 2}, None, True, 1.5],
}


# ---------------------------------------------------------------- helpers


def beaker_app(environ, start_response):
    session = environ["beaker.session"]
    session.update(environ.get("test.data", {}))
    session.save()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b""]


def beaker_settings(kind: str, where: str) -> dict:
    settings = {"session.type": kind, "session.secret": BEAKER_SECRET}
    settings["session.data_dir" if kind == "file" else "session.url"] = where
    return settings


def beaker_write(settings: dict, data: dict, cookie: str | None = None) -> str:
    """One request through Beaker 1.14's middleware; the Beaker id cookie it set (or the one given)."""
    app = TestApp(BeakerMiddleware(beaker_app, settings), extra_environ={"test.data": data})
    headers = {"Cookie": f"{NAME}={cookie}"} if cookie else {}
    response = app.get("/", headers=headers)
    if cookie:
        return cookie
    return response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]


def write_ini(tmp_path, store: str = "lmdb", **extra) -> str:
    lines = [
        "[app:main]",
        f"session.type = {store}",
        f"session.secret = {SECRET}",
        "session.timeout = 3600",
        "session.beaker_compat = true",
        f"session.beaker_compat_secrets = {BEAKER_SECRET}",
    ]
    if store in ("lmdb", "file"):
        lines.append("session.data_dir = %(here)s/fastsess")
    lines.extend(f"session.{k} = {v}" for k, v in extra.items())
    path = tmp_path / "app.ini"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def migrate(capsys, ini: str, *args: str) -> dict:
    assert main(["migrate-beaker", "--config", ini, *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def fastsess_read(ini: str, cookie: str, path: str = "/") -> tuple[dict, object]:
    """The session a fastsess middleware built from `ini` serves for the Beaker cookie, and the response."""
    seen = {}

    def app(environ, start_response):
        session = environ["beaker.session"]
        if environ["PATH_INFO"] == "/set":
            session["fastsess"] = "wrote this"
            session.save()
        elif environ["PATH_INFO"] == "/logout":
            session.delete()
        seen.update(data=dict(session.items()), created=session.created, id=session.id)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    mw = SessionMiddleware(app, read_ini(ini))
    try:
        response = TestApp(mw, extra_environ=HTTPS).get(path, headers={"Cookie": f"{NAME}={cookie}"})
    finally:
        mw.close()
    return seen, response


def beaker_file(data_dir, beaker_id: str):
    return data_dir / "container_file" / beaker_id[0] / beaker_id[:2] / f"{beaker_id}.cache"


def age(path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


# ---------------------------------------------------------------- the restricted unpickler


def test_protocol_2_pickles_of_every_session_type_come_back_intact():
    blob = pickle.dumps(RICH, 2)
    assert RestrictedUnpickler.loads(blob) == RICH
    assert {type(v) for v in RestrictedUnpickler.loads(blob).values()} == {type(v) for v in RICH.values()}


class Hostile:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Evaluated:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_reduce_that_calls_os_system_is_refused_and_never_run(tmp_path, protocol):
    marker = tmp_path / "pwned"
    with pytest.raises(PickleRefused, match="refused global (posix|os|nt).system"):
        RestrictedUnpickler.loads(pickle.dumps({"x": Hostile(marker)}, protocol))
    assert not marker.exists()


@pytest.mark.parametrize(
    "value, match",
    [
        (Evaluated(), r"refused global (__builtin__|builtins)\.eval"),
        (bytearray(b"x"), "refused global"),
        (_dt.timezone.utc, "refused value of type timezone"),
        (ValueError("x"), "refused global"),
        (object(), "refused global"),
    ],
)
def test_anything_but_plain_data_is_refused(value, match):
    for protocol in (2, 4):
        with pytest.raises(PickleRefused, match=match):
            RestrictedUnpickler.loads(pickle.dumps(value, protocol))


def test_codecs_encode_is_allowed_only_with_latin1():
    hostile = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00utf-16\x86R."
    with pytest.raises(PickleRefused, match="latin1"):
        RestrictedUnpickler.loads(hostile)
    fine = hostile.replace(b"X\x06\x00\x00\x00utf-16", b"X\x06\x00\x00\x00latin1")
    assert RestrictedUnpickler.loads(fine) == b"abc"


def test_a_uuid_built_with_a_bogus_state_is_refused():
    blob = pickle.dumps(uuid.UUID(int=1), 2).replace(b"K\x01", b"X\x01\x00\x00\x00x")
    with pytest.raises(PickleRefused, match="malformed UUID"):
        RestrictedUnpickler.loads(blob)


def test_shared_references_cannot_blow_up_past_the_node_budget():
    """Ten levels of ten references each: 10**10 values once expanded, from a tiny pickle."""
    value: list = ["x"]
    for _ in range(10):
        value = [value] * 10
    blob = pickle.dumps(value, 2)
    assert len(blob) < 1000
    with pytest.raises(PickleRefused, match=f"more than {MAX_PICKLE_NODES} values"):
        RestrictedUnpickler.loads(blob)


def test_a_self_referencing_pickle_is_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(PickleRefused):
        RestrictedUnpickler.loads(pickle.dumps(loop, 2))


def test_the_size_budget_is_checked_before_anything_is_read():
    with pytest.raises(PickleRefused, match="over the budget"):
        RestrictedUnpickler.loads(pickle.dumps("x" * 100, 2), max_bytes=50)


@pytest.mark.parametrize("blob", [b"", b"\x80\x02", b"\x80\x02}q\x00(", b"garbage", b"\x80\x02Q."])
def test_malformed_pickles_are_refused(blob):
    with pytest.raises(PickleRefused):
        RestrictedUnpickler.loads(blob)


# ---------------------------------------------------------------- file stores


def test_beaker_file_sessions_migrate_into_lmdb_and_load_with_the_beaker_cookie(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir))
    before = time.time()
    rich = beaker_write(settings, RICH)
    plain = beaker_write(settings, {"user": "grace", "n": 7})
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["mode"], report["seen"], report["migrated"], report["refused"]) == ("bulk", 2, 2, 0)
    seen, response = fastsess_read(ini, rich)
    assert seen["data"] == RICH
    assert {k: type(v) for k, v in seen["data"].items()} == {k: type(v) for k, v in RICH.items()}
    assert before - 1 <= seen["created"] <= time.time()  # Beaker's _creation_time, now in the header
    assert seen["id"] == rich[40:]
    reissued = response.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
    assert core.b64url_decode(reissued)[0] == 0x41  # re-tagged in fastsess format
    assert fastsess_read(ini, reissued)[0]["data"] == RICH
    assert fastsess_read(ini, plain)[0]["data"] == {"user": "grace", "n": 7}


def test_a_custom_beaker_path_moves_into_the_record_header(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"

    def app(environ, start_response):
        environ["beaker.session"]["user"] = "ada"
        environ["beaker.session"].path = "/shop"
        environ["beaker.session"].save()
        start_response("200 OK", [])
        return [b""]

    header = TestApp(BeakerMiddleware(app, beaker_settings("file", str(beaker_dir)))).get("/").headers
    cookie = header["Set-Cookie"].split(";")[0].split("=", 1)[1]
    ini = write_ini(tmp_path)
    migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    seen, response = fastsess_read(ini, cookie)
    assert seen["data"] == {"user": "ada"}
    assert "Path=/shop" in response.headers["Set-Cookie"]


def test_inspect_verifies_a_beaker_id_cookie_and_shows_the_migrated_record(tmp_path, capsys):
    # At cutover the operator checks a user's Beaker cookie: it must find what migrate-beaker wrote.
    beaker_dir = tmp_path / "beaker"
    cookie = beaker_write(beaker_settings("file", str(beaker_dir)), {"user": "ada"})
    ini = write_ini(tmp_path)
    migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert main(["inspect", "--config", ini, "--json", f"{NAME}={cookie}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["verified"], report["state"], report["data"]) == (True, "live", {"user": "ada"})
    assert cookie[40:] not in json.dumps(report)  # the sid, never the id itself
    forged = ("0" * 40) + cookie[40:]
    assert main(["inspect", "--config", ini, "--json", forged]) == 1
    assert json.loads(capsys.readouterr().out) == {"verified": False}


def test_inspect_decodes_a_beaker_cookie_session(tmp_path, capsys):
    settings = {"session.type": "cookie", "session.validate_key": BEAKER_SECRET, "session.data_serializer": "json"}
    cookie = beaker_write(settings, {"user": "ada", "n": 2})
    ini = write_ini(tmp_path)
    assert main(["inspect", "--config", ini, "--json", cookie]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["verified"], report["data"]) == (True, {"user": "ada", "n": 2})


def test_the_delta_pass_migrates_only_what_changed_since_the_bulk_pass(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir))
    cookies = [beaker_write(settings, {"n": i}) for i in range(3)]
    for cookie in cookies:
        age(beaker_file(beaker_dir, cookie[40:]), 2 * DELTA_SLACK_SECONDS)
    ini = write_ini(tmp_path)
    bulk = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (bulk["mode"], bulk["migrated"]) == ("bulk", 3)
    assert os.path.exists(tmp_path / ".fastsess-migrate-beaker.json")

    beaker_write(settings, {"n": 100}, cookie=cookies[0])  # changed on Beaker after the bulk pass
    added = beaker_write(settings, {"n": 200})  # created on Beaker after the bulk pass
    delta = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert delta["mode"] == "delta" and delta["since"] == bulk["started_at"]  # from the state file
    assert (delta["migrated"], delta["updated"], delta["unchanged"], delta["refused"]) == (1, 1, 2, 0)
    assert fastsess_read(ini, cookies[0])[0]["data"] == {"n": 100}
    assert fastsess_read(ini, added)[0]["data"] == {"n": 200}
    assert fastsess_read(ini, cookies[1])[0]["data"] == {"n": 1}


def test_a_delta_pass_never_overwrites_what_fastsess_wrote_after_cutover(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir))
    cookie = beaker_write(settings, {"n": 1})
    ini = write_ini(tmp_path)
    migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    fastsess_read(ini, cookie, "/set")  # the application, now on fastsess, changes the session
    again = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir), "--since", "0")
    assert (again["migrated"], again["updated"], again["unchanged"]) == (0, 0, 1)
    assert fastsess_read(ini, cookie)[0]["data"] == {"n": 1, "fastsess": "wrote this"}


def test_a_later_delta_pass_never_brings_back_a_session_fastsess_ended(tmp_path, capsys, monkeypatch):
    # A logout on fastsess leaves no record; a delta pass after it must not copy Beaker's
    # (still changing) session back in, or the old cookie would log the user in again.
    monkeypatch.setattr(migrate_module, "DELTA_SLACK_SECONDS", 0.0)  # no clock skew to allow for here
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir))
    ended, kept = beaker_write(settings, {"user": "bob"}), beaker_write(settings, {"user": "ada"})
    ini = write_ini(tmp_path)
    assert migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))["migrated"] == 2
    fastsess_read(ini, ended, "/logout")
    assert fastsess_read(ini, ended)[0]["data"] == {}
    beaker_write(settings, {"user": "bob", "cart": 3}, cookie=ended)  # a Beaker node still serving bob
    beaker_write(settings, {"user": "ada", "cart": 1}, cookie=kept)
    added = beaker_write(settings, {"user": "cy"})  # started on Beaker after the bulk pass
    delta = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (delta["mode"], delta["migrated"], delta["updated"]) == ("delta", 1, 1)
    assert delta["skipped_reasons"] == {"ended in fastsess after an earlier pass copied it": 1}
    assert fastsess_read(ini, ended)[0]["data"] == {}
    assert fastsess_read(ini, kept)[0]["data"] == {"user": "ada", "cart": 1}
    assert fastsess_read(ini, added)[0]["data"] == {"user": "cy"}


def test_a_pass_that_finds_no_session_is_not_recorded_so_the_next_stays_a_bulk_pass(tmp_path, capsys, monkeypatch):
    # The first pass ran before the Beaker directory was filled (a share not mounted yet): recorded,
    # it would make the next run a delta pass, which never copies sessions Beaker changed before it.
    beaker_dir = tmp_path / "beaker"
    (beaker_dir / "container_file").mkdir(parents=True)
    ini = write_ini(tmp_path)
    assert main(["migrate-beaker", "--config", ini, "--from-type", "file", "--from-data-dir", str(beaker_dir)]) == 0
    assert "no Beaker sessions found" in capsys.readouterr().out
    assert not (tmp_path / ".fastsess-migrate-beaker.json").exists()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 600)  # a session Beaker last used ten minutes ago
    cookie = beaker_write(beaker_settings("file", str(beaker_dir)), {"user": "ada"})
    monkeypatch.setattr(time, "time", real)
    age(beaker_file(beaker_dir, cookie[40:]), 600)
    report = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["mode"], report["migrated"]) == ("bulk", 1)
    assert fastsess_read(ini, cookie)[0]["data"] == {"user": "ada"}


def test_the_state_file_tells_destinations_apart(tmp_path, capsys):
    # development.ini beside production.ini: a trial pass into one store must leave the
    # first pass into the other a bulk pass, or it would copy nothing.
    beaker_dir = tmp_path / "beaker"
    cookie = beaker_write(beaker_settings("file", str(beaker_dir)), {"n": 1})
    age(beaker_file(beaker_dir, cookie[40:]), 2 * DELTA_SLACK_SECONDS)
    real = write_ini(tmp_path)
    trial = tmp_path / "development.ini"
    trial.write_text(open(real).read().replace("%(here)s/fastsess", "%(here)s/trial"))
    trial = str(trial)
    assert migrate(capsys, trial, "--from-type", "file", "--from-data-dir", str(beaker_dir))["mode"] == "bulk"
    report = migrate(capsys, real, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["mode"], report["migrated"]) == ("bulk", 1)
    assert fastsess_read(real, cookie)[0]["data"] == {"n": 1}


def test_since_takes_a_unix_time_or_an_iso_date_and_full_forces_a_bulk_pass(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    beaker_write(beaker_settings("file", str(beaker_dir)), {"n": 1})
    ini = write_ini(tmp_path)
    args = ("--from-type", "file", "--from-data-dir", str(beaker_dir))
    future = migrate(capsys, ini, *args, "--since", "2999-01-01T00:00:00+00:00")
    assert (future["mode"], future["migrated"], future["unchanged"]) == ("delta", 0, 1)
    assert migrate(capsys, ini, *args, "--full")["mode"] == "bulk"
    assert parse_since("1700000000") == 1700000000.0
    assert parse_since("2023-11-14T22:13:20+00:00") == 1700000000.0


def test_a_hostile_pickle_in_a_beaker_file_is_refused_reported_and_never_run(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir))
    good = beaker_write(settings, {"user": "ada"})
    marker = tmp_path / "pwned"
    # The session pickle inside Beaker's container (where Beaker's PickleSerializer puts it) ...
    inner_id = uuid.uuid4().hex
    inner = pickle.dumps({"_creation_time": time.time(), "x": Hostile(marker)}, 2)
    path = beaker_file(beaker_dir, inner_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"session": base64.b64encode(inner).decode()}))
    # ... and the container pickle itself.
    outer_id = uuid.uuid4().hex
    path = beaker_file(beaker_dir, outer_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"session": Hostile(marker)}))
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert not marker.exists()
    assert (report["migrated"], report["refused"]) == (1, 2)
    assert all("refused global posix.system" in r["reason"] for r in report["refusals"])
    refs = {r["ref"] for r in report["refusals"]}
    assert refs == {core.store_key(inner_id).hex()[:16], core.store_key(outer_id).hex()[:16]}
    assert inner_id not in json.dumps(report) and outer_id not in json.dumps(report)
    assert fastsess_read(ini, good)[0]["data"] == {"user": "ada"}


def test_sessions_fastsess_cannot_store_are_refused_with_the_reason(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir))
    beaker_write(settings, {"ttl": _dt.timedelta(days=1)})
    beaker_write(settings, {"nan": float("nan")})
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert report["refused"] == 2
    reasons = sorted(r["reason"] for r in report["refusals"])
    assert "timedelta is not a session value" in reasons[1] and "NaN" in reasons[0]


def test_expired_sessions_are_counted_not_migrated(tmp_path, capsys, monkeypatch):
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 7200)  # Beaker stamps _accessed_time two hours ago
    old = beaker_write(settings, {"n": 1})
    monkeypatch.setattr(time, "time", real)
    age(beaker_file(beaker_dir, old[40:]), 7200)
    beaker_write(settings, {"n": 2})
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["migrated"], report["expired"]) == (1, 1)


def test_cache_entries_and_stray_files_are_skipped(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    beaker_write(beaker_settings("file", str(beaker_dir)), {"n": 1})
    cache = beaker_dir / "container_file" / "a" / "ab" / ("ab" * 20 + ".cache")  # a digest-named cache entry
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(pickle.dumps({"value": 1}))
    (cache.parent / "something.cache.temp").write_bytes(b"half written")
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "file", "--from-data-dir", str(beaker_dir))
    assert (report["migrated"], report["skipped"], report["refused"]) == (1, 1, 0)


def test_a_dry_run_writes_nothing(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    cookie = beaker_write(beaker_settings("file", str(beaker_dir)), {"n": 1})
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "file", "--from-data-dir", str(beaker_dir), "--dry-run")
    assert (report["dry_run"], report["migrated"]) == (True, 1)
    assert not os.path.exists(tmp_path / ".fastsess-migrate-beaker.json")
    assert not os.path.exists(tmp_path / "fastsess")  # not even the store's directory
    assert fastsess_read(ini, cookie)[0]["data"] == {}


def test_the_human_report_shows_counts_and_reasons_without_ids(tmp_path, capsys):
    beaker_dir = tmp_path / "beaker"
    settings = beaker_settings("file", str(beaker_dir))
    cookie = beaker_write(settings, {"ttl": _dt.timedelta(days=1)})
    ini = write_ini(tmp_path)
    args = ["migrate-beaker", "--config", ini, "--from-type", "file", "--from-data-dir", str(beaker_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "bulk pass" in out and "1 seen, 0 migrated" in out and "1 refused" in out
    assert "timedelta" in out and cookie[40:] not in out


def test_migrate_beaker_refuses_a_cookie_store_and_missing_sources(tmp_path, capsys):
    ini = write_ini(tmp_path, store="cookie")
    assert main(["migrate-beaker", "--config", ini, "--from-type", "file", "--from-data-dir",
                 str(tmp_path)]) == 2
    assert "server-side fastsess store" in capsys.readouterr().err
    ini = write_ini(tmp_path)
    assert main(["migrate-beaker", "--config", ini, "--from-type", "file", "--from-data-dir",
                 str(tmp_path / "missing")]) == 2
    assert main(["migrate-beaker", "--config", ini, "--from-type", "ext:redis", "--from-data-dir",
                 str(tmp_path)]) == 2
    assert "needs --from-url" in capsys.readouterr().err


def test_passwords_never_show_in_source_names():
    assert _without_password("redis://user:hunter2@host:6379/0") == "redis://user:***@host:6379/0"
    assert _without_password("postgresql://app@db/sessions") == "postgresql://app@db/sessions"
    assert _without_password("sqlite:////var/db.sqlite") == "sqlite:////var/db.sqlite"


def test_passwords_never_show_in_error_messages():
    url = "redis://user:hunter2@host:6379/0"
    assert _hide_password(f"cannot parse {url}, password hunter2", url) == (
        "cannot parse redis://user:***@host:6379/0, password ***"
    )
    assert _hide_password("no password here", "postgresql://app@db/x") == "no password here"


# ---------------------------------------------------------------- ext:redis and ext:database


@pytest.mark.servers
def test_beaker_redis_sessions_migrate_and_load_with_the_beaker_cookie(tmp_path, capsys, redis_server):
    settings = beaker_settings("ext:redis", redis_server.url)
    rich = beaker_write(settings, RICH)
    plain = beaker_write(settings, {"user": "grace"})
    ini = write_ini(tmp_path)
    report = migrate(capsys, ini, "--from-type", "ext:redis", "--from-url", redis_server.url)
    assert (report["seen"], report["migrated"], report["refused"]) == (2, 2, 0)
    assert fastsess_read(ini, rich)[0]["data"] == RICH
    assert fastsess_read(ini, plain)[0]["data"] == {"user": "grace"}
    beaker_write(settings, {"user": "grace", "n": 2}, cookie=plain)
    delta = migrate(capsys, ini, "--from-type", "ext:redis", "--from-url", redis_server.url)
    assert (delta["mode"], delta["migrated"], delta["updated"]) == ("delta", 0, 1)
    assert fastsess_read(ini, plain)[0]["data"] == {"user": "grace", "n": 2}


@pytest.mark.servers
def test_a_hostile_pickle_in_redis_is_refused_and_never_run(tmp_path, capsys, redis_server):
    import redis

    marker = tmp_path / "pwned"
    client = redis.Redis.from_url(redis_server.url)
    client.set(f"beaker_cache:{uuid.uuid4().hex}:session", pickle.dumps(Hostile(marker)))
    client.close()
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "ext:redis", "--from-url", redis_server.url)
    assert report["refused"] == 1 and not marker.exists()


def test_beaker_database_sessions_migrate_into_the_sql_store(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'beaker.sqlite'}"
    settings = beaker_settings("ext:database", url)
    rich = beaker_write(settings, RICH)
    ini = write_ini(tmp_path, store="sql", url=f"sqlite:///{tmp_path / 'fastsess.sqlite'}")
    report = migrate(capsys, ini, "--from-type", "ext:database", "--from-url", url)
    assert (report["seen"], report["migrated"], report["refused"]) == (1, 1, 0)
    assert fastsess_read(ini, rich)[0]["data"] == RICH
    beaker_write(settings, {"user": "lin"}, cookie=rich)
    delta = migrate(capsys, ini, "--from-type", "ext:database", "--from-url", url)
    assert (delta["mode"], delta["updated"]) == ("delta", 1)
    assert fastsess_read(ini, rich)[0]["data"]["user"] == "lin"


def test_a_hostile_pickle_in_the_database_is_refused_and_never_run(tmp_path, capsys):
    sa = pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'beaker.sqlite'}"
    beaker_write(beaker_settings("ext:database", url), {"user": "ada"})
    marker = tmp_path / "pwned"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO beaker_cache (namespace, accessed, created, data) VALUES (:n, :a, :a, :d)"),
            {"n": uuid.uuid4().hex, "a": _dt.datetime.now(), "d": pickle.dumps({"session": Hostile(marker)})},
        )
    engine.dispose()
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "ext:database", "--from-url", url)
    assert (report["migrated"], report["refused"]) == (1, 1) and not marker.exists()


# ---------------------------------------------------------------- unreachable stores


def assert_one_clean_line(err: str, *absent: str) -> str:
    """A failed run's stderr: one `fastsess: ...` line, no traceback, none of `absent` (passwords)."""
    line = err.strip()
    assert line.startswith("fastsess: ") and "\n" not in line and "Traceback" not in line, err
    for text in absent:
        assert text not in line
    return line


def test_an_unreachable_beaker_redis_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("redis")
    from loopback import free_port

    port = free_port()
    args = ["--from-type", "ext:redis", "--from-url", f"redis://app:hunter2@127.0.0.1:{port}/0"]
    assert main(["migrate-beaker", "--config", write_ini(tmp_path), *args]) == 2
    line = assert_one_clean_line(capsys.readouterr().err, "hunter2")
    assert f"cannot reach Redis at redis://app:***@127.0.0.1:{port}/0" in line


def test_a_malformed_beaker_redis_url_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("redis")
    args = ["--from-type", "ext:redis", "--from-url", "http://app:hunter2@127.0.0.1/0"]
    assert main(["migrate-beaker", "--config", write_ini(tmp_path), *args]) == 2
    assert "not a usable Redis URL" in assert_one_clean_line(capsys.readouterr().err, "hunter2")


@pytest.mark.servers
def test_beaker_redis_going_down_during_a_pass_is_a_clear_error(tmp_path, capsys, redis_server, monkeypatch):
    from fastsess.migrate import RedisSource

    beaker_write(beaker_settings("ext:redis", redis_server.url), {"user": "ada"})
    read_values = RedisSource._values

    def stop_first(self, keys):
        redis_server.stop()  # the keys were listed; the server goes away before their values are read
        return read_values(self, keys)

    monkeypatch.setattr(RedisSource, "_values", stop_first)
    assert main(["migrate-beaker", "--config", write_ini(tmp_path), "--from-type", "ext:redis",
                 "--from-url", redis_server.url]) == 2
    line = assert_one_clean_line(capsys.readouterr().err)
    assert f"ext:redis:{redis_server.url} failed while reading sessions: ConnectionError" in line


def test_an_unreachable_beaker_postgresql_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    from loopback import free_port

    port = free_port()
    url = f"postgresql+psycopg://postgres:hunter2@127.0.0.1:{port}/x"
    for kind in ("ext:database", "ext:sqla"):
        assert main(["migrate-beaker", "--config", write_ini(tmp_path), "--from-type", kind, "--from-url", url]) == 2
        line = assert_one_clean_line(capsys.readouterr().err, "hunter2")
        assert f"cannot reach the database at postgresql+psycopg://postgres:***@127.0.0.1:{port}/x" in line
        assert "(OperationalError)" in line


def test_a_beaker_style_postgresql_url_reaches_the_installed_driver(tmp_path, capsys):
    """Beaker configs say postgresql://: it must reach a driver that is installed (psycopg 3 here)."""
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    from loopback import free_port

    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/x"
    assert main(["migrate-beaker", "--config", write_ini(tmp_path), "--from-type", "ext:database",
                 "--from-url", url]) == 2
    line = assert_one_clean_line(capsys.readouterr().err, "hunter2")
    assert "cannot reach the database" in line and "(OperationalError)" in line


def test_a_sqlite_beaker_database_keeps_its_journal_mode(tmp_path, capsys):
    """The source is Beaker's database, still in use: migrating reads it and changes nothing there."""
    sa = pytest.importorskip("sqlalchemy")
    path = tmp_path / "beaker.sqlite"
    url = f"sqlite:///{path}"
    cookie = beaker_write(beaker_settings("ext:database", url), {"user": "ada"})
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        before = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "ext:database", "--from-url", url)
    assert report["migrated"] == 1
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == before != "wal"
    engine.dispose()
    assert cookie


def test_a_malformed_or_missing_beaker_database_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    ini = write_ini(tmp_path)
    bad_port = "postgresql+psycopg://postgres:hunter2@127.0.0.1:port/x"
    assert main(["migrate-beaker", "--config", ini, "--from-type", "ext:database", "--from-url", bad_port]) == 2
    assert "not a usable SQLAlchemy URL" in assert_one_clean_line(capsys.readouterr().err, "hunter2")
    nowhere = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite'}"
    assert main(["migrate-beaker", "--config", ini, "--from-type", "ext:database", "--from-url", nowhere]) == 2
    assert "cannot reach the database" in assert_one_clean_line(capsys.readouterr().err)


def test_a_beaker_database_without_the_table_is_a_clear_error_while_reading(tmp_path, capsys):
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'empty.sqlite'}"
    assert main(["migrate-beaker", "--config", write_ini(tmp_path), "--from-type", "ext:database",
                 "--from-url", url]) == 2
    line = assert_one_clean_line(capsys.readouterr().err)
    assert "failed while reading sessions (OperationalError): no such table: beaker_cache" in line


def test_an_unreadable_beaker_session_file_is_skipped_with_the_reason(tmp_path, capsys):
    data_dir = tmp_path / "beaker"
    good = beaker_write(beaker_settings("file", str(data_dir)), {"user": "ada"})
    loop = beaker_file(data_dir, "ab" + "0" * 30)
    loop.parent.mkdir(parents=True)
    loop.symlink_to(loop)  # stat fails with ELOOP, not FileNotFoundError
    report = migrate(capsys, write_ini(tmp_path), "--from-type", "file", "--from-data-dir", str(data_dir))
    assert (report["migrated"], report["skipped"]) == (1, 1)
    assert "cannot be read" in next(iter(report["skipped_reasons"]))
    assert fastsess_read(write_ini(tmp_path), good)[0]["data"] == {"user": "ada"}


def test_the_fastsess_store_going_down_stops_the_pass_with_a_clear_error(tmp_path, capsys):
    pytest.importorskip("redis")
    from loopback import free_port

    data_dir = tmp_path / "beaker"
    beaker_write(beaker_settings("file", str(data_dir)), {"user": "ada"})
    ini = write_ini(tmp_path, store="redis", url=f"redis://app:hunter2@127.0.0.1:{free_port()}/0")
    assert main(["migrate-beaker", "--config", ini, "--from-type", "file", "--from-data-dir", str(data_dir)]) == 2
    line = assert_one_clean_line(capsys.readouterr().err, "hunter2")
    assert "the fastsess redis store failed, so the pass stopped" in line
    assert not (tmp_path / ".fastsess-migrate-beaker.json").exists()  # the next run repeats this pass
