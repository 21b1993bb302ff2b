"""Paste Deploy: fastsess as `[filter:session] use = egg:fastsess#session`, in a pipeline and as a filter-app.

Each test writes an INI file, loads it with paste.deploy.loadapp and drives the
result with WebTest. The `egg:fastsess#session` form needs fastsess's entry
points, which exist only once the package is installed (`make install`
installs it editable); the `call:` and explicit-protocol forms load the same
factories without them.
"""

from __future__ import annotations

import importlib.metadata
import textwrap

import pytest

loadwsgi = pytest.importorskip("paste.deploy.loadwsgi", reason="PasteDeploy is not installed")
webtest = pytest.importorskip("webtest")

from paste.deploy import loadapp  # noqa: E402 - only once PasteDeploy is known to be there

from fastsess import ConfigError, SessionMiddleware  # noqa: E402

SECRET = "paste-deploy-test-secret-" + "p" * 15  # 40 characters
HTTPS = {"wsgi.url_scheme": "https", "HTTP_HOST": "example.com"}


def _installed_entry_points() -> dict:
    """fastsess's Paste entry points, by group, as the installed metadata declares them."""
    found = {}
    for group in ("paste.filter_factory", "paste.filter_app_factory"):
        for entry in importlib.metadata.entry_points(group=group):
            if entry.name == "session" and entry.dist is not None and entry.dist.name == "fastsess":
                found[group] = entry.value
    return found


ENTRY_POINTS = _installed_entry_points()
needs_entry_points = pytest.mark.skipif(
    len(ENTRY_POINTS) < 2,
    reason="fastsess is not installed, so egg:fastsess#session cannot resolve (pip install -e .)",
)


def app_factory(global_conf, greeting="n", **local_conf):
    """paste.app_factory: a counter kept in environ["beaker.session"]."""

    def counter(environ, start_response):
        session = environ["beaker.session"]
        session["n"] = session.get("n", 0) + 1
        session.save()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{greeting}={session['n']}".encode()]

    return counter


EVENTS: list = []


def record_event(name, **fields):
    """An on_event hook, named in the INI file as test_paste:record_event."""
    EVENTS.append(name)


APP_SECTION = f"""
[app:counter]
use = call:{__name__}:app_factory
greeting = visits
"""

SESSION_SETTINGS = f"""
session.type = lmdb
session.data_dir = %(here)s/sessions
session.secret = {SECRET}
session.timeout = 600
session.key = myapp
session.httponly = false
session.samesite = Strict
"""


def load(tmp_path, ini: str) -> webtest.TestApp:
    path = tmp_path / "site.ini"
    path.write_text(textwrap.dedent(ini))
    return webtest.TestApp(loadapp(f"config:{path}"), extra_environ=HTTPS)


def pipeline_ini(use_line: str, settings: str = SESSION_SETTINGS, defaults: str = "") -> str:
    return f"""
[DEFAULT]
debug = false
{defaults}

[pipeline:main]
pipeline = session counter

[filter:session]
{use_line}
{settings}
{APP_SECTION}
"""


def filter_app_ini(use_line: str, settings: str = SESSION_SETTINGS) -> str:
    return f"""
[filter-app:main]
{use_line}
next = counter
{settings}
{APP_SECTION}
"""


def assert_counts_in_a_session(app: webtest.TestApp, tmp_path) -> None:
    assert isinstance(app.app, SessionMiddleware)
    first = app.get("/")
    assert first.text == "visits=1"
    [cookie] = first.headers.getall("Set-Cookie")
    # INI strings are coerced: httponly = false, samesite = Strict, key = myapp.
    assert cookie.startswith("myapp=")
    assert "HttpOnly" not in cookie and "SameSite=Strict" in cookie
    assert [app.get("/").text for _ in range(2)] == ["visits=2", "visits=3"]
    assert (tmp_path / "sessions" / "data.mdb").exists()  # %(here)s was expanded


# ---------------------------------------------------------------- egg:fastsess#session


@needs_entry_points
def test_entry_points_name_the_wsgi_factories():
    assert ENTRY_POINTS == {
        "paste.filter_factory": "fastsess.wsgi:filter_factory",
        "paste.filter_app_factory": "fastsess.wsgi:filter_app_factory",
    }


@needs_entry_points
def test_egg_filter_in_a_pipeline_gives_the_app_sessions(tmp_path):
    app = load(tmp_path, pipeline_ini("use = egg:fastsess#session"))
    assert_counts_in_a_session(app, tmp_path)


@needs_entry_points
def test_egg_filter_app_section_gives_its_next_app_sessions(tmp_path):
    app = load(tmp_path, filter_app_ini("use = egg:fastsess#session"))
    assert_counts_in_a_session(app, tmp_path)


@needs_entry_points
def test_beaker_style_section_works_with_only_the_egg_name_changed(tmp_path):
    beaker_settings = SESSION_SETTINGS.replace("\nsession.", "\nbeaker.session.")
    app = load(tmp_path, pipeline_ini("use = egg:fastsess#session", beaker_settings))
    assert_counts_in_a_session(app, tmp_path)


# ---------------------------------------------------------------- the same factories, without entry points


def test_call_filter_in_a_pipeline_gives_the_app_sessions(tmp_path):
    app = load(tmp_path, pipeline_ini("use = call:fastsess.wsgi:filter_factory"))
    assert_counts_in_a_session(app, tmp_path)


def test_explicit_filter_app_factory_gives_its_next_app_sessions(tmp_path):
    app = load(tmp_path, filter_app_ini("paste.filter_app_factory = fastsess.wsgi:filter_app_factory"))
    assert_counts_in_a_session(app, tmp_path)


@pytest.mark.parametrize(
    "make_ini, use_line",
    [
        (pipeline_ini, "use = call:fastsess.wsgi:filter_factory"),
        (filter_app_ini, "paste.filter_app_factory = fastsess.wsgi:filter_app_factory"),
    ],
)
def test_plain_option_names_in_the_filter_section_are_read_and_coerced(make_ini, use_line, tmp_path):
    """Paste passes a filter's own keys as keyword arguments, where the prefix is optional."""
    plain = SESSION_SETTINGS.replace("\nsession.", "\n")
    app = load(tmp_path, make_ini(use_line, plain))
    assert_counts_in_a_session(app, tmp_path)


def test_an_on_event_hook_named_in_the_ini_file_receives_the_events(tmp_path):
    EVENTS.clear()
    settings = SESSION_SETTINGS + f"session.on_event = {__name__}:record_event\n"
    app = load(tmp_path, pipeline_ini("use = call:fastsess.wsgi:filter_factory", settings))
    assert_counts_in_a_session(app, tmp_path)
    assert "created" in EVENTS


def test_session_keys_in_the_default_section_reach_the_filter(tmp_path):
    settings = SESSION_SETTINGS.replace(f"session.secret = {SECRET}\n", "")
    use = "use = call:fastsess.wsgi:filter_factory"
    app = load(tmp_path, pipeline_ini(use, settings, defaults=f"session.secret = {SECRET}"))
    assert_counts_in_a_session(app, tmp_path)


def test_bad_setting_in_the_ini_fails_when_the_app_is_loaded(tmp_path):
    settings = SESSION_SETTINGS + "session.tiemout = 60\n"
    with pytest.raises(ConfigError, match="did you mean session.timeout"):
        load(tmp_path, pipeline_ini("use = call:fastsess.wsgi:filter_factory", settings))
