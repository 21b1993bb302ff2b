"""fastsess.session: the Session object, the state it loads, and what sessions share.

The source is _session_py.py. With the C kernel it is also compiled, as
fastsess._session (declarations in _session.pxd): the session's core, the
loaded state and the shared service become extension types whose attributes
are C struct fields, and the session's internal steps call each other as C.
Importing fastsess.session gives whichever of the two fastsess.core chose:
this module replaces itself with it, so `fastsess.session.Session` is the
class the middleware builds, and setting a module constant here sets it
where the code reads it.
"""

import sys
from typing import TYPE_CHECKING

from . import core

if TYPE_CHECKING:  # what type checkers see: the source both builds come from
    from ._session_py import *  # noqa: F403

sys.modules[__name__] = core.build_of("fastsess._session")
