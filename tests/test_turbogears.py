"""A real TurboGears 2.5 application on fastsess: `from tg import session`, set_lang, no_session_touch.

Each test builds the application with TurboGears' own configurator, swaps its
`session` component with fastsess.contrib.turbogears.configure(), feeds it the
settings a quickstart's INI file gives (strings, the whole configuration,
unprefixed keys included) and drives it with WebTest, once with cookie sessions
as the quickstart has them and once with LMDB sessions.
"""

from __future__ import annotations

import logging
import secrets
import types
import warnings

import pytest

tg = pytest.importorskip("tg", reason="TurboGears2 is not installed (pip install 'TurboGears2>=2.5,<2.6')")
webtest = pytest.importorskip("webtest")

from tg import (  # noqa: E402 - only once TurboGears is known to be there
    FullStackApplicationConfigurator,
    MinimalApplicationConfigurator,
    TGController,
    expose,
    redirect,
    request,
    session,
)
from tg.configuration.utils import TGConfigError  # noqa: E402
from tg.util import Bunch  # noqa: E402

from fastsess.contrib.turbogears import FastsessSessionComponent, configure  # noqa: E402

PACKAGE = "fastsess_tg_testapp"
COOKIE = "myapp"
HTTPS = {"wsgi.url_scheme": "https", "HTTP_HOST": "example.com"}


class RootController(TGController):
    @expose()
    def index(self):
        return "hello"  # never touches the session itself

    @expose("json")
    def whoami(self):
        current = session._current_obj()
        environ = request.environ
        return {
            "class": None if current is None else f"{type(current).__module__}.{type(current).__name__}",
            "is_fastsess": current is not None and current is environ.get("fastsess.session"),
            "is_beaker_session": current is not None and current is environ.get("beaker.session"),
            "user": None if current is None else current.get("user"),
        }

    @expose()
    def put(self, k, v):
        session[k] = v
        session.save()
        return "saved"

    @expose("json")
    def get(self, k):
        return {"value": session.get(k)}

    @expose()
    def count(self):
        session["n"] = session.get("n", 0) + 1
        session.save()
        return str(session["n"])

    @expose()
    def set_lang(self, code):
        tg.i18n.set_lang(code)
        return "ok"

    @expose("json")
    def lang(self):
        return {"languages": tg.i18n.get_lang(all=True), "stored": session.get("tg_lang")}

    @expose()
    def login(self, user):
        session["user"] = user
        session.save()
        redirect("/whoami")


def quickstart_settings(tmp_path, backend: str, **overrides: str) -> dict:
    """What a quickstart's development.ini gives make_app: strings, session.* among everything else."""
    key = secrets.token_hex(20)  # the quickstart's one random 40-character string, used twice
    settings = {
        "debug": "false",
        "here": str(tmp_path),
        "__file__": str(tmp_path / "development.ini"),
        "cache_dir": str(tmp_path / "data"),
        "session.key": COOKIE,
        "session.secret": key,
        "session.type": "cookie",
        "session.validate_key": key,
        "session.data_serializer": "json",
        "trace_errors.from_address": "turbogears@localhost",
        "trace_errors.smtp_server": "localhost",
        "toscawidgets.framework.resource_variant": "debug",
        "sqlalchemy.url": f"sqlite:///{tmp_path}/devdata.db",
        "templating.genshi.method": "xhtml",
        "templating.mako.compiled_templates_dir": str(tmp_path / "data" / "templates"),
    }
    if backend == "lmdb":
        del settings["session.validate_key"]
        settings["session.type"] = "lmdb"
        settings["session.data_dir"] = str(tmp_path / "sessions")
        settings["session.timeout"] = "3600"
    settings.update(overrides)
    return settings


def make_configurator(tmp_path, configurator_class=FullStackApplicationConfigurator):
    cfg = configurator_class()
    configure(cfg)
    # A package with no files: TurboGears finds its paths (and so turns i18n on) from __file__.
    package = types.ModuleType(PACKAGE)
    package.__file__ = str(tmp_path / PACKAGE / "__init__.py")
    cfg.update_blueprint({
        "package": package,
        "root_controller": RootController(),
        "app_globals": Bunch,
        "helpers": Bunch(),
        "renderers": ["json"],
        "default_renderer": "json",
        "tm.enabled": False,  # the transaction package is not needed here
    })
    return cfg


def make_app(tmp_path, backend="cookie", configurator_class=FullStackApplicationConfigurator, **overrides):
    cfg = make_configurator(tmp_path, configurator_class)
    settings = quickstart_settings(tmp_path, backend, **overrides)
    global_conf = {k: settings.pop(k) for k in ("debug", "here", "__file__")}
    app = cfg.make_wsgi_app(global_conf, settings)
    return webtest.TestApp(app, extra_environ=HTTPS)


def set_cookies(response) -> list:
    return [v for v in response.headers.getall("Set-Cookie") if v.split("=", 1)[0] == COOKIE]


@pytest.fixture(params=["cookie", "lmdb"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def app(tmp_path, backend):
    return make_app(tmp_path, backend)


# ---------------------------------------------------------------- tg.session is fastsess's session


def test_tg_session_is_the_fastsess_session_in_the_environ(app):
    body = app.get("/whoami").json
    assert body["class"] == "fastsess.session.Session"
    assert body["is_fastsess"] and body["is_beaker_session"]


def test_saved_value_is_there_on_the_next_request(app):
    first = app.get("/put", params={"k": "colour", "v": "blue"})
    assert first.text == "saved"
    assert len(set_cookies(first)) == 1
    assert app.get("/get", params={"k": "colour"}).json == {"value": "blue"}


def test_counter_counts_across_requests(app):
    assert [app.get("/count").text for _ in range(4)] == ["1", "2", "3", "4"]


def test_a_fresh_client_does_not_see_another_clients_session(app, tmp_path):
    app.get("/put", params={"k": "colour", "v": "blue"})
    app.reset()  # drop the cookie
    response = app.get("/get", params={"k": "colour"})
    assert response.json == {"value": None}
    assert set_cookies(response) == []  # reading a new session issues no cookie


def test_value_saved_before_a_redirect_is_kept(app):
    response = app.get("/login", params={"user": "ada"})
    assert response.status_int == 302
    assert len(set_cookies(response)) == 1
    assert response.follow(extra_environ=HTTPS).json["user"] == "ada"


def test_session_cookie_uses_the_configured_name_and_secure_defaults(app):
    [header] = set_cookies(app.get("/count"))
    assert header.startswith(f"{COOKIE}=")
    assert "; Secure" in header and "; HttpOnly" in header


def test_page_that_never_uses_the_session_sets_no_cookie(app):
    assert set_cookies(app.get("/")) == []


# ---------------------------------------------------------------- i18n


def test_set_lang_is_kept_in_the_session_and_comes_before_the_browsers_languages(app):
    assert app.get("/set_lang", params={"code": "it"}).text == "ok"
    body = app.get("/lang", headers={"Accept-Language": "en"}).json
    assert body["stored"] == "it"
    assert body["languages"] == ["it", "en"]


def touchy_app(tmp_path, backend: str, no_session_touch: str):
    """Every read would slide the session (touch_interval 0); a persistent cookie shows each touch."""
    return make_app(
        tmp_path, backend,
        **{
            "session.touch_interval": "0",
            "session.cookie_expires": "3600",
            "i18n.no_session_touch": no_session_touch,
        },
    )


def test_language_lookup_touches_the_session_by_default(tmp_path, backend):
    app = touchy_app(tmp_path, backend, "false")
    app.get("/count")
    assert len(set_cookies(app.get("/"))) == 1


def test_no_session_touch_keeps_the_language_lookup_from_touching_the_session(tmp_path, backend):
    app = touchy_app(tmp_path, backend, "true")
    app.get("/set_lang", params={"code": "it"})
    response = app.get("/", headers={"Accept-Language": "en"})
    assert set_cookies(response) == []


def test_no_session_touch_still_reads_the_language_and_saves_changes(tmp_path, backend):
    app = touchy_app(tmp_path, backend, "true")
    app.get("/set_lang", params={"code": "it"})
    assert app.get("/lang", headers={"Accept-Language": "en"}).json["languages"] == ["it", "en"]
    app.get("/set_lang", params={"code": "fr"})
    assert app.get("/count").text == "1"
    assert app.get("/lang").json == {"languages": ["fr"], "stored": "fr"}


# ---------------------------------------------------------------- configuration


def test_whole_quickstart_configuration_goes_in_and_unprefixed_keys_are_ignored(tmp_path, backend, caplog):
    caplog.set_level(logging.WARNING, logger="fastsess")
    app = make_app(tmp_path, backend)
    assert app.get("/count").text == "1"
    ignored = [r.getMessage() for r in caplog.records if r.name == "fastsess" and "ignor" in r.getMessage()]
    assert ignored == []


def test_session_data_dir_defaults_to_cache_dir_sessions_as_in_turbogears(tmp_path):
    cfg = make_configurator(tmp_path)
    settings = quickstart_settings(tmp_path, "lmdb")
    del settings["session.data_dir"]
    app = webtest.TestApp(cfg.make_wsgi_app({}, settings), extra_environ=HTTPS)
    assert app.get("/count").text == "1"
    assert (tmp_path / "data" / "sessions" / "data.mdb").exists()
    assert not (tmp_path / "sessions").exists()


def test_session_enabled_false_leaves_the_application_without_sessions(tmp_path, backend):
    app = make_app(tmp_path, backend, **{"session.enabled": "false"})
    response = app.get("/whoami")
    assert response.json["class"] is None
    assert set_cookies(response) == []


def test_minimal_configurator_gets_sessions_from_configure(tmp_path, backend):
    app = make_app(tmp_path, backend, configurator_class=MinimalApplicationConfigurator)
    assert app.get("/whoami").json["class"] == "fastsess.session.Session"
    assert [app.get("/count").text for _ in range(2)] == ["1", "2"]


def test_configure_replaces_the_session_component_of_the_full_stack():
    cfg = FullStackApplicationConfigurator()
    configure(cfg)
    assert isinstance(cfg.get_component("session"), FastsessSessionComponent)


def test_configure_accepts_a_legacy_appconfig():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        base_config = tg.AppConfig()
    configure(base_config)
    assert isinstance(base_config._configurator.get_component("session"), FastsessSessionComponent)


def test_configure_after_the_first_application_is_an_error(tmp_path):
    cfg = make_configurator(tmp_path)
    cfg.make_wsgi_app({}, quickstart_settings(tmp_path, "cookie"))
    with pytest.raises(TGConfigError, match="before making the application"):
        configure(cfg)


def test_configure_refuses_what_is_not_a_configurator():
    with pytest.raises(TGConfigError, match="ApplicationConfigurator"):
        configure({"session.type": "cookie"})


def test_bad_session_setting_fails_when_the_application_is_made(tmp_path):
    from fastsess import ConfigError

    with pytest.raises(ConfigError, match="did you mean session.timeout"):
        make_app(tmp_path, "cookie", **{"session.timout": "60"})

