"""TurboGears 2.5 on fastsess: a configuration component that takes the place of TurboGears' Beaker sessions.

TurboGears' own `session` component wraps every request in Beaker. The
component here takes its place in the configurator, reads the same `session.*`
settings from the same INI file, and wraps the application in
fastsess.SessionMiddleware instead. `from tg import session`, `session.save()`,
`tg.i18n.set_lang` and `i18n.no_session_touch` work unchanged.

Setup, in a TurboGears 2.5 application:

1. In `config/app_cfg.py`, after `base_config` is created and before any
   application is made from it, add::

       from fastsess.contrib.turbogears import configure as configure_fastsess

       configure_fastsess(base_config)

   `base_config` may be a `FullStackApplicationConfigurator` (the quickstart's),
   a `MinimalApplicationConfigurator`, or a legacy `AppConfig`.

2. Keep the `session.*` keys in `development.ini` / `production.ini`. The
   quickstart's cookie sessions work as they are, with a key of at least
   32 characters::

       session.type = cookie
       session.key = myapp
       session.secret = <random, 32+ characters>
       session.validate_key = <random, 32+ characters: may be the same string>
       session.data_serializer = json

   or, for sessions kept on the server::

       session.type = lmdb
       session.key = myapp
       session.secret = <random, 32+ characters>
       session.timeout = 3600
       session.data_dir = %(here)s/data/sessions

   Keys without the `session.` prefix are ignored, so TurboGears can pass its
   whole configuration. `session.data_dir` defaults to `$cache_dir/sessions`, as
   in TurboGears, and `session.enabled = false` turns sessions off. Cookies
   are `Secure` by default: a development server on plain HTTP may need
   `session.secure = auto` in development.ini.

3. Nothing else changes: controllers keep `from tg import session`,
   `session["k"] = v`, `session.save()` and `tg.i18n.set_lang()`;
   `i18n.no_session_touch` keeps working. Beaker is no longer needed for
   sessions. Switch all nodes at once: Beaker nodes cannot read fastsess cookies.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tg.configuration import AppConfig
from tg.configuration.utils import TGConfigError
from tg.configurator import ApplicationConfigurator
from tg.configurator.base import (
    AppReadyConfigurationAction,
    BeforeConfigConfigurationAction,
    ConfigurationComponent,
)
from tg.support.converters import asbool

from ..wsgi import SessionMiddleware

__all__ = ["FastsessSessionComponent", "configure"]


class FastsessSessionComponent(ConfigurationComponent):
    """TurboGears' `session` component, served by fastsess.

    TGApp takes `tg.session` from `environ["beaker.session"]` at the start of
    each request, so the middleware around it is all TurboGears needs: its
    i18n wrapper, `tg.i18n.set_lang` and the templates all see the fastsess
    session.
    """

    id = "session"

    def get_defaults(self) -> dict[str, Any]:
        return {"session.enabled": True}

    def get_actions(self) -> tuple:
        return (
            BeforeConfigConfigurationAction(self._configure),
            AppReadyConfigurationAction(self._wrap),
        )

    def on_bind(self, configurator: Any) -> None:
        if not isinstance(configurator, ApplicationConfigurator):
            raise TGConfigError("fastsess sessions only work on an ApplicationConfigurator")

    def _configure(self, conf: dict, app: None) -> None:
        # TurboGears' own default, so an application that relied on it keeps its directory.
        if "cache_dir" in conf:
            conf.setdefault("session.data_dir", os.path.join(conf["cache_dir"], "sessions"))

    def _wrap(self, conf: dict, app: Callable) -> Callable:
        if not asbool(conf.get("session.enabled", True)):
            return app
        # The whole configuration goes in: keys without a `session.` prefix are ignored.
        return SessionMiddleware(app, conf)


def configure(base_config: Any) -> None:
    """Serve a TurboGears application's sessions with fastsess instead of Beaker.

    Replaces the configurator's `session` component (FullStack, legacy
    AppConfig) or adds one (Minimal). Call it before the first application is
    made from `base_config`: TurboGears binds its components then.
    """
    configurator = base_config._configurator if isinstance(base_config, AppConfig) else base_config
    if not isinstance(configurator, ApplicationConfigurator):
        raise TGConfigError(
            "configure() needs a TurboGears ApplicationConfigurator or AppConfig, "
            f"got {type(base_config).__name__}"
        )
    if getattr(configurator, "_initialized", False):
        # Its components are bound: Beaker's session wrapper is already registered and would
        # shadow fastsess's session in every application made from now on.
        raise TGConfigError("call fastsess.contrib.turbogears.configure() before making the application")
    if configurator.get_component("session") is None:
        configurator.register(FastsessSessionComponent)
    else:
        configurator.replace("session", FastsessSessionComponent)
