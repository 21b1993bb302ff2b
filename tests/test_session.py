"""The Session object on its own: dict API, laziness, saving, lifecycle, CSRF, timeouts, merge (SPEC 2-4).

Sessions are built directly on a SessionService over a MemoryStore that counts
its calls, with a fake clock, so every test can say exactly what a request
loaded and wrote without a WSGI server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import MutableMapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastsess.session as session_module
from fastsess import core
from fastsess.config import load_config
from fastsess.errors import ConflictError, CorruptRecord, SessionTooLarge, StoreError
from fastsess.session import EXPIRE_COOKIE, SET_COOKIE, Session, SessionService
from fastsess.stores.base import TOMBSTONE, StoredRecord
from fastsess.stores.memory import MemoryStore

SECRET = "s" * 32
OTHER_SECRET = "o" * 32
T0 = 1_700_000_000.0
TIMEOUT = 600
TOUCH_INTERVAL = TIMEOUT / 10  # the default: a tenth of timeout
TOMBSTONE_SECONDS = 60


class FakeClock:
    """Unix time that moves only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingStore(MemoryStore):
    """A MemoryStore that counts its calls and can be told to fail, so tests see every write."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.calls: Counter[str] = Counter()
        self.written_keys: list[bytes] = []
        self.failing: set[str] = set()  # method names that raise StoreError
        self.damaged: set[bytes] = set()  # keys whose load() finds the stored bytes damaged

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.failing:
            raise StoreError(f"{name} failed: store down")

    def load(self, key):
        self._call("load")
        if key in self.damaged:
            raise CorruptRecord("memory store: a stored session record is damaged")
        return super().load(key)

    def create(self, key, blob, expires_at):
        self._call("create")
        self.written_keys.append(key)
        return super().create(key, blob, expires_at)

    def cas(self, key, blob, expected_version, expires_at):
        self._call("cas")
        self.written_keys.append(key)
        return super().cas(key, blob, expected_version, expires_at)

    def touch(self, key, expires_at):
        self._call("touch")
        return super().touch(key, expires_at)

    def delete(self, key):
        self._call("delete")
        return super().delete(key)

    def rotate(self, old_key, new_key, blob, expires_at, tombstone_seconds, expected_version=None):
        self._call("rotate")
        self.written_keys.append(new_key)
        return super().rotate(old_key, new_key, blob, expires_at, tombstone_seconds, expected_version)

    def locked_update(self, key, fn):
        self._call("locked_update")
        self.written_keys.append(key)
        return super().locked_update(key, fn)

    def writes(self) -> dict:
        """Every call but load, with its count."""
        return {name: n for name, n in self.calls.items() if name != "load" and n}

    def peek(self, key: bytes):
        """What load() would return, without counting it."""
        return MemoryStore.load(self, key)

    def forget_calls(self) -> None:
        self.calls.clear()
        self.written_keys.clear()


class Env:
    """One middleware's worth of session machinery: fake clock, counting store, service, events."""

    def __init__(self, **options) -> None:
        self.clock = FakeClock()
        self.store = CountingStore(self.clock)
        self.events: list[tuple[str, dict]] = []
        options = {"type": "memory", "secret": SECRET, "timeout": TIMEOUT, "on_event": self._on_event, **options}
        self.service = SessionService(load_config(None, **options), self.store, clock=self.clock)

    def _on_event(self, name: str, **fields) -> None:
        self.events.append((name, fields))

    def event_names(self) -> list[str]:
        return [name for name, _ in self.events]

    def cookie(self, session_id: str) -> str:
        return "session=" + self.service.sign(session_id)

    def request(self, session_id: str | None = None) -> Session:
        """The session a request carrying this id's cookie (or no cookie) would see."""
        return Session(self.service, self.cookie(session_id) if session_id else None)

    def existing(self, **data) -> str:
        """The id of a stored session holding data; call counts and events start afresh."""
        session = Session(self.service)
        session.update(data)
        session.save()
        session.persist()
        self.store.forget_calls()
        self.events.clear()
        return session.id

    def record(self, session_id: str):
        return self.store.peek(store_key(session_id))

    def data(self, session_id: str) -> dict:
        record = self.record(session_id)
        assert isinstance(record, StoredRecord), f"no live record, got {record!r}"
        return core.decode_data(core.unpack_record(record.blob)[-1])


def store_key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("ascii")).digest()


def cookie_action(session: Session):
    return session.__dict__["_sess"].cookie_action


@pytest.fixture
def env() -> Env:
    return Env()


# ---------------------------------------------------------------- the dict API


def test_getitem_returns_value_and_raises_key_error_when_missing(env):
    session = env.request(env.existing(name="ann"))
    assert session["name"] == "ann"
    with pytest.raises(KeyError):
        session["missing"]


def test_get_returns_value_or_default(env):
    session = env.request(env.existing(name="ann"))
    assert session.get("name") == "ann"
    assert session.get("missing") is None
    assert session.get("missing", 5) == 5


def test_setdefault_sets_only_missing_keys(env):
    session = env.request(env.existing(a=1))
    assert session.setdefault("a", 2) == 1
    assert session.setdefault("b", 3) == 3
    assert dict(session.items()) == {"a": 1, "b": 3}


def test_setdefault_of_existing_key_is_not_a_change(env):
    session = env.request(env.existing(a=1))
    session.setdefault("a", 2)
    session.save()
    session.persist()
    assert env.store.writes() == {}


def test_pop_removes_key_and_honours_default(env):
    session = env.request(env.existing(a=1, b=2))
    assert session.pop("a") == 1
    assert "a" not in session
    assert session.pop("missing", "default") == "default"
    with pytest.raises(KeyError):
        session.pop("missing")


def test_pop_of_missing_key_with_default_is_not_a_change(env):
    session = env.request(env.existing(a=1))
    session.pop("missing", None)
    session.save()
    session.persist()
    assert env.store.writes() == {}


def test_popitem_removes_an_item_and_raises_key_error_when_empty(env):
    session = env.request(env.existing(a=1))
    assert session.popitem() == ("a", 1)
    assert len(session) == 0
    with pytest.raises(KeyError):
        session.popitem()


def test_update_accepts_mappings_pairs_and_keywords(env):
    session = env.request()
    session.update({"a": 1}, b=2)
    session.update([("c", 3)])
    assert dict(session.items()) == {"a": 1, "b": 2, "c": 3}


def test_keys_values_items_len_contains_and_iteration(env):
    session = env.request(env.existing(a=1, b=[2]))
    assert sorted(session.keys()) == ["a", "b"]
    assert sorted(session) == ["a", "b"]
    assert len(session) == 2
    assert "a" in session and "z" not in session
    assert sorted(map(repr, session.values())) == ["1", "[2]"]
    assert dict(session.items()) == {"a": 1, "b": [2]}


def test_delitem_removes_key_and_raises_key_error_when_missing(env):
    session = env.request(env.existing(a=1))
    del session["a"]
    assert "a" not in session
    with pytest.raises(KeyError):
        del session["a"]


def test_clear_empties_the_session_and_is_written_on_save(env):
    sid = env.existing(a=1, b=2)
    session = env.request(sid)
    session.clear()
    assert len(session) == 0
    session.save()
    session.persist()
    assert env.data(sid) == {}


def test_has_key_mirrors_in(env):
    session = env.request(env.existing(a=1))
    assert session.has_key("a") is True
    assert session.has_key("b") is False


def test_copy_is_an_independent_plain_dict(env):
    session = env.request(env.existing(a=1))
    snapshot = session.copy()
    assert type(snapshot) is dict and snapshot == {"a": 1}
    snapshot["b"] = 2
    assert "b" not in session


def test_session_is_a_mutable_mapping(env):
    assert isinstance(env.request(), MutableMapping)


def test_non_str_keys_are_refused(env):
    session = env.request()
    with pytest.raises(TypeError):
        session[1] = "x"


def test_key_that_is_not_valid_utf8_is_refused_at_setitem(env):
    session = env.request()
    with pytest.raises(TypeError, match="UTF-8"):
        session["\ud800"] = "x"
    assert "\ud800" not in session
    session["caf\u00e9"] = 1  # any other str key is a key
    assert session["caf\u00e9"] == 1


# ---------------------------------------------------------------- truthiness and laziness


def test_session_is_truthy_without_loading(env):
    session = env.request(env.existing(a=1))
    assert bool(session) is True
    assert session.accessed() is False
    assert bool(env.request()) is True
    assert env.store.calls["load"] == 0


def test_nothing_is_loaded_until_first_use(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    repr(session)
    session.dirty()
    session.accessed()
    assert env.store.calls["load"] == 0
    assert session.get("a") == 1
    assert session["a"] == 1
    assert env.store.calls["load"] == 1


def test_persist_of_an_unused_session_loads_and_writes_nothing(env):
    session = env.request(env.existing(a=1))
    session.persist()
    assert env.store.calls == Counter()
    assert session.accessed() is False


def test_resetting_sess_to_none_undoes_the_load_and_the_next_access_reloads(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    assert session["a"] == 1
    session["unsaved"] = True
    other = env.request(sid)
    other["a"] = 2
    other.save()
    other.persist()
    session.__dict__["_sess"] = None
    assert session.accessed() is False
    assert session["a"] == 2
    assert "unsaved" not in session
    assert env.store.calls["load"] == 3


def test_a_fresh_state_starts_with_every_field_at_its_default():
    # Compiled, __init__ sets only what tp_new does not start at None, False or 0;
    # in pure Python the class holds those defaults. Both must give this.
    state = session_module._State(5.0)
    fields = {
        name: getattr(state, name) for name in dir(state)
        if not name.startswith("__") and not callable(getattr(state, name))
    }
    assert fields == {
        "id": None, "version": None, "created": 5.0, "last_access": 5.0, "last_accessed": None,
        "data": {}, "shared": None, "loaded_data": b"{}", "is_new": True,
        "domain": None, "path": None, "loaded_domain": None, "loaded_path": None,
        "csrf_gen": 0, "loaded_csrf_gen": 0, "rotate_from": None, "had_cookie": False, "dropped": False,
        "tombstoned": False, "sealed": None, "merge_from": None, "keyed": None, "read_only": False,
        "anonymous": False, "save_requested": False, "modified": False, "flash_modified": False,
        "mutable_out": False, "dead": False, "deleted": False, "invalidated": False, "retag": False,
        "doomed": (), "cookie_action": None, "flash": {}, "loaded_flash": {},
    }
    assert type(fields["csrf_gen"]) is int and type(fields["is_new"]) is bool
    flashed = session_module._State(5.0, {"a": 1}, {"q": [[1, "hi"]]})
    assert flashed.data == {"a": 1} and flashed.flash == {"q": [[1, "hi"]]}
    assert flashed.loaded_flash == {"q": [[1, "hi"]]} and flashed.loaded_flash["q"] is not flashed.flash["q"]


@pytest.mark.parametrize("shape", [StoredRecord._make, tuple, list], ids=["StoredRecord", "tuple", "list"])
def test_a_record_loads_from_its_four_fields_whatever_sequence_holds_them(env, shape, monkeypatch):
    # Compiled, a tuple's fields are read as C; a store of another kind (a list,
    # say) still loads through plain unpacking.
    sid = env.existing(a=1)
    loaded = env.store.load
    monkeypatch.setattr(env.store, "load", lambda key: shape(loaded(key)))
    session = env.request(sid)
    assert session["a"] == 1 and session.last_accessed == T0
    session["a"] = 2
    session.save()
    session.persist()
    assert env.request(sid)["a"] == 2


def test_a_state_deleted_from_the_instance_dict_reads_as_not_loaded_and_loads_again(env):
    session = env.request(env.existing(a=1))
    assert session["a"] == 1
    del session.__dict__["_sess"]
    assert session.accessed() is False
    session.persist()  # nothing loaded: nothing to write, nothing raised
    assert session["a"] == 1
    assert session.accessed() is True


# ---------------------------------------------------------------- saving


def test_save_marks_and_persist_writes_once(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    session["a"] = 2
    session.save()
    assert env.store.writes() == {}
    session.persist()
    assert env.store.writes() == {"cas": 1}
    session.persist()
    assert env.store.writes() == {"cas": 1}
    assert env.data(sid) == {"a": 2}


def test_untouched_sessions_never_write(env):
    existing = env.request(env.existing(a=1))
    new = env.request()
    env.clock.advance(TOUCH_INTERVAL + 1)
    existing.persist()
    new.persist()
    assert env.store.calls == Counter()


def test_new_session_that_is_only_read_writes_nothing_and_sets_no_cookie(env):
    session = env.request()
    session.get("a")
    assert "a" not in session
    session.persist()
    assert env.store.writes() == {}
    assert cookie_action(session) is None


def test_reading_an_existing_session_writes_no_data(env):
    session = env.request(env.existing(a=1, cart=[1]))
    assert session["a"] == 1
    assert session["cart"] == [1]
    session.persist()
    assert env.store.writes() == {}


def test_reading_within_touch_interval_does_not_touch(env):
    sid = env.existing(a=1)
    env.clock.advance(TOUCH_INTERVAL - 1)
    session = env.request(sid)
    session["a"]
    session.persist()
    assert env.store.writes() == {}


def test_reading_after_touch_interval_touches_once_without_bumping_version(env):
    sid = env.existing(a=1)
    version = env.record(sid).version
    env.clock.advance(TOUCH_INTERVAL + 1)
    session = env.request(sid)
    session["a"]
    session.persist()
    session.persist()
    again = env.request(sid)
    again["a"]
    again.persist()
    assert env.store.writes() == {"touch": 1}
    record = env.record(sid)
    assert record.version == version
    assert record.last_access == env.clock()
    assert env.data(sid) == {"a": 1}


def test_touch_slides_the_idle_expiry(env):
    sid = env.existing(a=1)
    env.clock.advance(TIMEOUT - 100)
    touched = env.request(sid)
    touched["a"]
    touched.persist()
    env.clock.advance(TIMEOUT - 100)  # long past the first access, not past the touch
    session = env.request(sid)
    assert session["a"] == 1
    assert session.is_new is False


def test_save_accessed_time_false_never_touches():
    env = Env(save_accessed_time=False)
    sid = env.existing(a=1)
    env.clock.advance(TOUCH_INTERVAL + 1)
    session = env.request(sid)
    session["a"]
    session.persist()
    assert env.store.writes() == {}


def test_save_of_an_unchanged_existing_session_writes_nothing(env):
    session = env.request(env.existing(a=1, cart=[1]))
    session["cart"]
    session["a"] = 1  # set, but to the value it had
    session.save()
    session.persist()
    assert env.store.writes() == {}


def test_new_session_saved_empty_is_created_with_a_cookie(env):
    session = env.request()
    session.save()
    session.persist()
    assert env.store.writes() == {"create": 1}
    assert cookie_action(session) == SET_COOKIE
    assert env.data(session.id) == {}
    assert "created" in env.event_names()


ACCESSORS = [
    pytest.param(lambda s: s["cart"], id="getitem"),
    pytest.param(lambda s: s.get("cart"), id="get"),
    pytest.param(lambda s: s.setdefault("cart", []), id="setdefault"),
    pytest.param(lambda s: list(s.values())[0], id="values"),
    pytest.param(lambda s: dict(s.items())["cart"], id="items"),
    pytest.param(lambda s: s.copy()["cart"], id="copy"),
]


@pytest.mark.parametrize("take_cart", ACCESSORS)
def test_nested_mutation_after_save_is_detected_and_written(env, take_cart):
    sid = env.existing(cart=["apple"])
    session = env.request(sid)
    session.save()
    take_cart(session).append("pear")
    session.persist()
    assert env.data(sid) == {"cart": ["apple", "pear"]}
    assert env.store.writes() == {"cas": 1}


def test_nested_mutation_of_a_dict_value_is_written(env):
    sid = env.existing(profile={"name": "ann"})
    session = env.request(sid)
    session["profile"]["name"] = "bob"
    session.save()
    session.persist()
    assert env.data(sid) == {"profile": {"name": "bob"}}


def test_nested_mutation_of_a_list_inside_a_tuple_is_written(env):
    # A tuple can hold a list: handing one out may lead to an in-place change, as a list does.
    sid = env.existing(pair=(1, [2]))
    session = env.request(sid)
    session["pair"][1].append(3)
    session.save()
    session.persist()
    assert env.data(sid) == {"pair": (1, [2, 3])}


@pytest.mark.parametrize("take_cart", ACCESSORS)
def test_unsaved_in_place_changes_never_reach_another_request(env, take_cart):
    # Decoded data is remembered per process: each request must still get its own containers.
    sid = env.existing(cart=["apple"], profile={"tags": {"a"}, "pair": (1, [2])})
    for _ in range(3):
        session = env.request(sid)
        assert session["profile"] == {"tags": {"a"}, "pair": (1, [2])}
        take_cart(session).append("pear")
        session["profile"]["tags"].add("b")
        session["profile"]["pair"][1].append(3)
        session.read_only()
        session.persist()
    assert env.store.writes() == {}
    assert env.request(sid)["cart"] == ["apple"]


def test_revert_after_in_place_changes_gives_the_stored_value_again(env):
    sid = env.existing(cart=["apple"])
    session = env.request(sid)
    session["cart"].append("pear")
    session.revert()
    assert session["cart"] == ["apple"]
    session["cart"].append("plum")
    session.revert()
    assert session["cart"] == ["apple"]
    assert env.request(sid)["cart"] == ["apple"]


def test_remembered_decoded_data_stays_within_its_budget(monkeypatch):
    monkeypatch.setattr(session_module, "DECODED_BYTES_LIMIT", 400)
    monkeypatch.setattr(session_module, "DECODED_ENTRY_LIMIT", 150)
    env = Env()
    ids = [env.existing(n=i, pad="x" * 60) for i in range(20)]
    big = env.existing(pad="y" * 200)  # over the entry limit: decoded every time, never kept
    for _ in range(3):
        for i, sid in enumerate(ids):
            assert env.request(sid)["n"] == i
        assert env.request(big)["pad"] == "y" * 200
        entries = env.service._decoded.entries()
        assert sum(len(blob) for blob, _ in entries) == env.service._decoded.size <= 400
        assert all(len(blob) <= 150 for blob, _ in entries)


def change_in_place(value) -> None:
    """Change a container the session handed out, the way application code would."""
    if type(value) is list:
        value.append("more")
    elif type(value) is dict:
        value["more"] = 1
    elif type(value) is set:
        value.add("more")
    elif type(value) is tuple and value and type(value[-1]) is list:
        value[-1].append("more")


SESSION_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["getitem", "get", "setdefault", "values", "items", "copy", "keys", "set", "del", "pop", "popitem",
             "clear", "revert"]
        ),
        st.sampled_from(["cart", "prefs", "tags", "pair", "name", "absent"]),
    ),
    max_size=8,
)


#: stored data with tagged values (never primed after a write), and with JSON's own types only (primed)
TAGGED_DATA = {"cart": ["apple"], "prefs": {"lang": "en"}, "tags": {"a"}, "pair": (1, ["x"]), "name": "ann"}
JSON_DATA = {"cart": ["apple"], "prefs": {"lang": "en", "seen": [1]}, "tags": [["a"]], "pair": [1, ["x"]], "name": "ann"}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    requests=st.lists(st.tuples(SESSION_OPS, st.booleans()), min_size=1, max_size=4),
    initial=st.sampled_from([TAGGED_DATA, JSON_DATA]),
)
def test_any_use_of_a_session_leaves_the_remembered_decoded_data_intact(requests, initial):
    # Decoded data is remembered per process (SessionService.decode): loads share its
    # containers until they hand one out, and writes remember what they wrote. Whatever
    # a request does, what is remembered must still be what its bytes decode to, and
    # the next request must load exactly what the last saved one wrote.
    env = Env()
    sid = env.existing(**initial)
    ids = [sid, env.existing(**initial)]  # two sessions with the same bytes: one remembered dict
    stored = initial
    for ops, save in requests:
        session = env.request(sid)
        for op, key in ops:
            if op in ("getitem", "get", "setdefault") and key in session:
                change_in_place(getattr(session, "__getitem__" if op == "getitem" else op)(key))
            elif op in ("values", "items", "copy"):
                for value in getattr(session, op)().values() if op == "copy" else getattr(session, op)():
                    change_in_place(value[1] if op == "items" else value)
            elif op == "keys":
                session.keys()
            elif op == "set":
                session[key] = ["new", key]
            elif op in ("del", "pop") and key in session:
                session.pop(key) if op == "pop" else session.__delitem__(key)
            elif op == "popitem" and len(session):
                session.popitem()
            elif op == "clear":
                session.clear()
            elif op == "revert":
                session.revert()
        expected = {k: session[k] for k in session}
        if save:
            session.save()
        else:
            session.read_only()
        session.persist()
        for blob, data in env.service._decoded.entries():
            assert data is None or data == core.decode_data(blob)  # None: seen once, nothing kept
        stored = expected if save else stored
        assert env.data(sid) == stored
        assert env.request(sid).copy() == stored
    assert env.request(ids[1]).copy() == initial


def test_a_container_of_remembered_data_is_copied_once_when_handed_out(env):
    sid = env.existing(cart=["apple"], prefs={"lang": "en"})
    env.request(sid)["cart"]
    env.request(sid)["cart"]  # the second sighting: the decoded data is remembered
    session = env.request(sid)
    cart = session["cart"]
    assert session["cart"] is cart and session.get("cart") is cart  # one copy, then the session's own
    cart.append("pear")
    session.setdefault("prefs")["lang"] = "fr"
    session.save()
    session.persist()
    assert env.data(sid) == {"cart": ["apple", "pear"], "prefs": {"lang": "fr"}}
    for blob, data in env.service._decoded.entries():
        assert data is None or data == core.decode_data(blob)


def test_a_written_session_is_loaded_next_from_remembered_data(env):
    sid = env.existing(visits=0, cart=["apple"])
    for visits in range(1, 4):
        session = env.request(sid)
        session["visits"] = session["visits"] + 1
        session.save()
        session.persist()
        data_bytes = core.unpack_record(env.record(sid).blob)[-1]
        assert (data_bytes, {"visits": visits, "cart": ["apple"]}) in env.service._decoded.entries()
        session["cart"].append("changed after the write")  # the remembered dict is a copy
        assert env.request(sid).copy() == {"visits": visits, "cart": ["apple"]}


def test_setting_a_key_without_save_is_not_written(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    session["a"] = 2
    session.persist()
    new = env.request()
    new["a"] = 1
    new.persist()
    assert env.store.writes() == {}
    assert env.data(sid) == {"a": 1}
    assert cookie_action(new) is None


def test_auto_writes_changed_data_without_save():
    env = Env(auto=True)
    sid = env.existing(a=1)
    session = env.request(sid)
    session["a"] = 2
    session.persist()
    new = env.request()
    new["b"] = 1
    new.persist()
    assert env.store.writes() == {"cas": 1, "create": 1}
    assert env.data(sid) == {"a": 2}
    assert env.data(new.id) == {"b": 1}


def test_auto_writes_nothing_when_data_is_unchanged():
    env = Env(auto=True)
    session = env.request(env.existing(cart=[1]))
    session["cart"]
    session.persist()
    new = env.request()
    new.get("x")
    new.persist()
    assert env.store.writes() == {}


# ---------------------------------------------------------------- values (SPEC 4)


class Text(str):
    pass


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class Point:
    x: int


REFUSED = [
    pytest.param(object(), id="object"),
    pytest.param(Text("hunter2"), id="str-subclass"),
    pytest.param(Colour.RED, id="enum"),
    pytest.param(Point(1), id="dataclass"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="infinity"),
    pytest.param(2**64, id="int-above-2**64-1"),
    pytest.param(-(2**63) - 1, id="int-below-minus-2**63"),
    pytest.param(decimal.Decimal("NaN"), id="decimal-nan"),
    pytest.param({1: "a"}, id="dict-with-int-key"),
    pytest.param([object()], id="refused-inside-list"),
    pytest.param((1, object()), id="refused-inside-tuple"),
    pytest.param(bytearray(b"x"), id="bytearray"),
]


@pytest.mark.parametrize("value", REFUSED)
def test_refused_value_raises_type_error_naming_the_key_at_setitem(env, value):
    session = env.request()
    with pytest.raises(TypeError, match="basket"):
        session["basket"] = value
    assert "basket" not in session


@pytest.mark.parametrize("store_it", [
    pytest.param(lambda s: s.update(basket=object()), id="update"),
    pytest.param(lambda s: s.setdefault("basket", object()), id="setdefault"),
])
def test_refused_value_raises_type_error_through_update_and_setdefault(env, store_it):
    session = env.request()
    with pytest.raises(TypeError, match="basket"):
        store_it(session)


def test_type_error_for_a_refused_value_does_not_contain_the_value(env):
    session = env.request()
    with pytest.raises(TypeError) as info:
        session["password"] = Text("hunter2-secret")
    assert "hunter2" not in str(info.value)


def test_nested_refused_value_raises_type_error_naming_the_key_at_persist(env):
    sid = env.existing(cart=[])
    session = env.request(sid)
    session.save()
    session["cart"].append(object())  # nothing can see this until persist
    with pytest.raises(TypeError, match="cart"):
        session.persist()
    assert env.store.writes() == {}
    assert env.data(sid) == {"cart": []}


def test_every_spec_value_type_round_trips_with_its_exact_type(env):
    values = {
        "str": "x",
        "max_int": 2**64 - 1,
        "min_int": -(2**63),
        "float": 1.5,
        "bool": True,
        "none": None,
        "list": [1, "a", [2.0]],
        "dict": {"k": [1]},
        "tuple": (1, "a"),
        "set": {1, 2},
        "frozenset": frozenset({"a"}),
        "bytes": b"\x00\xff",
        "aware": dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "naive": dt.datetime(2024, 5, 1, 12, 30, 15, 123456),
        "date": dt.date(2024, 5, 1),
        "time": dt.time(12, 30),
        "decimal": decimal.Decimal("1.10"),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "looks_like_a_tag": {"~t": [1]},
    }
    session = env.request()
    session.update(values)
    session.save()
    session.persist()
    loaded = env.request(session.id)
    for key, value in values.items():
        assert loaded[key] == value, key
        assert type(loaded[key]) is type(value), key
    assert loaded["aware"].utcoffset() == dt.timedelta(hours=2)
    assert str(loaded["decimal"]) == "1.10"


# ---------------------------------------------------------------- delete, invalidate, regenerate_id


def test_delete_removes_the_record_and_expires_the_cookie(env):
    sid = env.existing(user="ann")
    session = env.request(sid)
    session.delete()
    assert session.dirty() is True
    session.persist()
    assert env.record(sid) is None
    assert cookie_action(session) == EXPIRE_COOKIE
    assert env.store.writes() == {"delete": 1}


def test_delete_expires_the_cookie_even_for_a_session_the_client_never_had(env):
    session = env.request()
    session.delete()
    session.persist()
    assert cookie_action(session) == EXPIRE_COOKIE
    assert env.store.writes() == {}


def test_delete_then_an_unsaved_write_still_expires_the_cookie(env):
    sid = env.existing(user="ann")
    session = env.request(sid)
    session.delete()
    session["scratch"] = 1  # starts a new session, but nothing asks to save it
    session.persist()
    assert env.record(sid) is None
    assert cookie_action(session) == EXPIRE_COOKIE


def test_writing_after_delete_starts_a_new_session_with_a_new_id(env):
    sid = env.existing(user="ann")
    session = env.request(sid)
    session.delete()
    session.flash("goodbye")
    session["note"] = "x"
    session.save()
    session.persist()
    assert session.id != sid
    assert env.record(sid) is None
    assert env.data(session.id) == {"note": "x"}
    assert cookie_action(session) == SET_COOKIE
    after = env.request(session.id)
    assert "user" not in after
    assert after.peek_flash() == ["goodbye"]


def test_invalidate_clears_data_issues_a_new_id_and_deletes_the_old_record(env):
    sid = env.existing(user="ann")
    session = env.request(sid)
    session.invalidate()
    assert len(session) == 0
    assert session.id != sid
    session["visitor"] = 1
    session.save()
    session.persist()
    assert env.record(sid) is None
    assert env.data(session.id) == {"visitor": 1}
    assert cookie_action(session) == SET_COOKIE


def test_invalidate_without_a_later_write_deletes_the_old_record(env):
    sid = env.existing(user="ann")
    session = env.request(sid)
    session.invalidate()
    session.persist()
    assert env.record(sid) is None
    assert env.store.writes() == {"delete": 1}


def test_regenerate_id_keeps_the_data_under_a_new_id_and_tombstones_the_old(env):
    sid = env.existing(user="ann")
    session = env.request(sid)
    session.regenerate_id()  # marks the session for saving by itself
    new_id = session.id
    assert new_id != sid
    assert session["user"] == "ann"
    session.persist()
    assert env.store.writes() == {"rotate": 1}
    assert env.store.peek(store_key(sid)) is TOMBSTONE
    assert env.data(new_id) == {"user": "ann"}
    assert cookie_action(session) == SET_COOKIE
    assert "regenerated" in env.event_names()


def test_tombstone_of_a_regenerated_id_lives_sixty_seconds(env):
    sid = env.existing(user="ann")
    session = env.request(sid)
    session.regenerate_id()
    session.persist()
    env.clock.advance(TOMBSTONE_SECONDS - 1)
    assert env.store.peek(store_key(sid)) is TOMBSTONE
    env.clock.advance(2)
    assert env.store.peek(store_key(sid)) is None


def test_regenerate_id_keeps_a_concurrent_change_to_the_old_record(env):
    sid = env.existing(user="ann")
    login = env.request(sid)
    parallel = env.request(sid)
    login["user"], parallel["cart"] = "ann", []
    parallel["cart"].append("book")
    parallel.save()
    parallel.persist()
    login.regenerate_id()
    login.persist()
    assert env.data(login.id) == {"user": "ann", "cart": ["book"]}
    assert env.store.peek(store_key(sid)) is TOMBSTONE


def test_request_with_a_tombstoned_id_is_empty_read_only_and_sets_no_cookie():
    env = Env(touch_interval=10)
    sid = env.existing(user="ann")
    login = env.request(sid)
    login.regenerate_id()
    login.persist()
    env.store.forget_calls()
    env.events.clear()
    env.clock.advance(30)  # a touch is due, and the tombstone still stands

    stale = env.request(sid)
    assert len(stale) == 0
    stale["user"] = "mallory"  # succeeds in memory
    assert stale["user"] == "mallory"
    stale.flash("hi")
    stale.save()
    stale.persist()
    assert env.store.writes() == {}
    assert cookie_action(stale) is None
    assert "write_dropped" in env.event_names()
    assert env.data(login.id) == {"user": "ann"}


@pytest.mark.parametrize("end", ["delete", "invalidate", "regenerate_id"])
def test_old_cookie_loads_nothing_after(env, end):
    sid = env.existing(user="ann")
    session = env.request(sid)
    getattr(session, end)()
    session.persist()
    old = env.request(sid)
    assert "user" not in old
    assert len(old) == 0


# ---------------------------------------------------------------- revert, dirty, accessed, attributes


def test_revert_undoes_this_requests_changes(env):
    sid = env.existing(a=1, cart=[1])
    session = env.request(sid)
    session["a"] = 2
    session["b"] = 3
    session["cart"].append(2)
    session.revert()
    assert dict(session.items()) == {"a": 1, "cart": [1]}
    session.save()
    session.persist()
    assert env.store.writes() == {}


def test_dirty_turns_true_on_save_or_delete_only(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    assert session.dirty() is False
    session["a"] = 2
    assert session.dirty() is False
    session.save()
    assert session.dirty() is True
    deleted = env.request(sid)
    deleted.delete()
    assert deleted.dirty() is True


def test_accessed_turns_true_on_first_use(env):
    session = env.request(env.existing(a=1))
    assert session.accessed() is False
    session.get("a")
    assert session.accessed() is True


def test_new_session_has_created_time_and_no_last_accessed(env):
    session = env.request()
    assert session.is_new is True
    assert session.created == T0 and type(session.created) is float
    assert session.last_accessed is None


def test_loaded_session_reports_creation_and_previous_access(env):
    sid = env.existing(a=1)
    env.clock.advance(TOUCH_INTERVAL + 1)
    touched = env.request(sid)
    touched["a"]
    touched.persist()
    env.clock.advance(5)
    session = env.request(sid)
    assert session.is_new is False
    assert session.created == T0
    assert session.last_accessed == T0 + TOUCH_INTERVAL + 1


def test_domain_and_path_are_kept_with_the_session_and_reissue_the_cookie(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    assert session.domain is None and session.path == "/"
    session.domain = ".example.com"
    session.path = "/app"
    session.save()
    session.persist()
    assert cookie_action(session) == SET_COOKIE
    again = env.request(sid)
    assert again.domain == ".example.com"
    assert again.path == "/app"


@pytest.mark.parametrize("attribute", ["domain", "path"])
def test_domain_or_path_too_long_for_the_record_is_refused_when_set(env, attribute):
    session = env.request()
    session["a"] = 1
    first = "/" if attribute == "path" else "x"  # a path starts with '/', a domain is a host name
    with pytest.raises(ValueError, match=attribute):
        setattr(session, attribute, first + "x" * 255)
    setattr(session, attribute, first + "x" * 254)  # 255 characters: the most a record holds
    session.save()
    session.persist()
    assert getattr(env.request(session.id), attribute) == first + "x" * 254


def test_domain_and_path_default_to_the_configuration():
    env = Env(cookie_domain="example.com", cookie_path="/shop")
    session = env.request()
    assert session.domain == "example.com"
    assert session.path == "/shop"


@pytest.mark.parametrize(
    ("attribute", "value"),
    [("domain", "exa mple.com"), ("domain", "example.com:8080"), ("domain", "a,b.com"), ("path", "app")],
)
def test_a_per_session_domain_or_path_follows_the_rules_of_the_configured_one(env, attribute, value):
    # The configuration refuses these, since browsers drop such a cookie; so does the setter.
    session = env.request(env.existing(a=1))
    assert session["a"] == 1
    with pytest.raises(ValueError):
        setattr(session, attribute, value)
    session.persist()
    assert cookie_action(session) is None


def test_a_host_prefixed_cookie_refuses_a_per_session_domain_or_path():
    # Browsers drop a __Host- cookie that has a Domain, or a Path other than /: the
    # session would silently never come back. The configuration refuses the same.
    env = Env(key="__Host-session", secure=True)
    session = env.request()
    with pytest.raises(ValueError, match="__Host-"):
        session.domain = ".example.com"
    with pytest.raises(ValueError, match="__Host-"):
        session.path = "/app"
    session.path = "/"
    session.persist()
    assert session.domain is None and session.path == "/"


def test_a_host_prefix_in_another_case_refuses_a_per_session_domain_or_path():
    # Browsers match the prefix in any case: __host-session is held to the __Host- rules.
    session = Env(key="__host-session", secure=True).request()
    with pytest.raises(ValueError, match="__Host-"):
        session.domain = ".example.com"
    with pytest.raises(ValueError, match="__Host-"):
        session.path = "/app"


# ---------------------------------------------------------------- get_by_id and read_only


def test_get_by_id_returns_a_session_whose_save_writes_at_once(env):
    sid = env.existing(a=1)
    other = env.request().get_by_id(sid)
    assert other is not None and other["a"] == 1
    other["a"] = 2
    other.save()
    assert env.data(sid) == {"a": 2}
    assert env.store.writes() == {"cas": 1}


@pytest.mark.parametrize("session_id", [pytest.param(core.new_session_id(), id="unknown"), "not-an-id"])
def test_get_by_id_of_a_missing_session_returns_none(env, session_id):
    assert env.request().get_by_id(session_id) is None


def test_get_by_id_of_a_tombstoned_id_returns_none(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    session.regenerate_id()
    session.persist()
    assert env.request().get_by_id(sid) is None


@pytest.mark.parametrize("when", ["before-load", "after-load"])
def test_read_only_session_neither_writes_nor_touches(env, when):
    sid = env.existing(a=1)
    env.clock.advance(TOUCH_INTERVAL + 1)
    session = env.request(sid)
    if when == "after-load":
        session["a"]
    session.read_only()
    session["a"] = 2
    session.flash("x")
    session.save()
    session.persist()
    assert session["a"] == 2
    assert env.store.writes() == {}
    assert env.data(sid) == {"a": 1}
    assert "write_dropped" in env.event_names()


def test_read_only_session_that_only_reads_logs_no_dropped_write(env):
    session = env.request(env.existing(a=1))
    session.read_only()
    session["a"]
    session.persist()
    assert "write_dropped" not in env.event_names()


# ---------------------------------------------------------------- flash messages


def test_flash_marks_for_saving_and_messages_reach_the_next_request(env):
    sid = env.existing()
    session = env.request(sid)
    session.flash("saved")
    session.flash("careful", queue="errors")
    session.persist()
    assert env.store.writes() == {"cas": 1}
    after = env.request(sid)
    assert after.peek_flash() == ["saved"]
    assert after.peek_flash() == ["saved"]
    assert after.peek_flash("errors") == ["careful"]


def test_flash_on_a_new_session_creates_it(env):
    session = env.request()
    session.flash("welcome")
    session.persist()
    assert cookie_action(session) == SET_COOKIE
    assert env.request(session.id).peek_flash() == ["welcome"]


def test_pop_flash_returns_the_messages_and_persists_their_removal(env):
    session = env.request()
    session.flash("one")
    session.flash("two")
    session.flash("careful", queue="errors")
    session.persist()
    reader = env.request(session.id)
    assert reader.pop_flash() == ["one", "two"]
    assert reader.pop_flash() == []
    reader.persist()
    after = env.request(session.id)
    assert after.peek_flash() == []
    assert after.peek_flash("errors") == ["careful"]


def test_peek_flash_and_pop_of_an_empty_queue_write_nothing(env):
    session = env.request()
    session.flash("one")
    session.persist()
    env.store.forget_calls()
    reader = env.request(session.id)
    reader.peek_flash()
    reader.pop_flash("empty")
    reader.persist()
    assert env.store.writes() == {}


def test_flash_refuses_values_outside_spec(env):
    with pytest.raises(TypeError):
        env.request().flash(object())


@pytest.mark.parametrize("queue", [1, None, b"errors", "\ud800"])
def test_flash_refuses_a_queue_name_that_is_not_a_str_when_flashing(env, queue):
    session = env.request()
    with pytest.raises(TypeError, match="queue"):
        session.flash("hi", queue=queue)
    session.persist()  # nothing was queued, so nothing fails here


def test_concurrent_pop_and_flash_lose_nothing_and_show_nothing_twice(env):
    writer = env.request()
    writer.flash("old")
    writer.persist()
    sid = writer.id
    reader = env.request(sid)
    flasher = env.request(sid)
    reader.peek_flash(), flasher.peek_flash()  # both load the queue
    assert reader.pop_flash() == ["old"]
    reader.persist()
    flasher.flash("new")
    flasher.persist()
    assert env.request(sid).peek_flash() == ["new"]


# ---------------------------------------------------------------- CSRF


def test_csrf_token_is_stable_within_and_across_requests(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    token = session.get_csrf_token()
    assert session.get_csrf_token() == token
    assert env.request(sid).get_csrf_token() == token


def test_get_csrf_token_on_an_existing_session_writes_nothing(env):
    session = env.request(env.existing(a=1))
    session.get_csrf_token()
    session.persist()
    assert env.store.writes() == {}


def test_get_csrf_token_on_a_new_session_marks_it_for_saving(env):
    session = env.request()
    token = session.get_csrf_token()
    session.persist()
    assert env.store.writes() == {"create": 1}
    assert cookie_action(session) == SET_COOKIE
    after = env.request(session.id)
    assert after.get_csrf_token() == token
    assert after.check_csrf_token(token) is True


def test_csrf_token_changes_after_regenerate_id(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    old_token = session.get_csrf_token()
    session.regenerate_id()
    new_token = session.get_csrf_token()
    assert new_token != old_token
    session.persist()
    after = env.request(session.id)
    assert after.check_csrf_token(new_token) is True
    assert after.check_csrf_token(old_token) is False


def test_new_csrf_token_bumps_the_generation_and_is_persisted(env):
    sid = env.existing(a=1)
    session = env.request(sid)
    old_token = session.get_csrf_token()
    new_token = session.new_csrf_token()
    assert new_token != old_token
    assert session.check_csrf_token(old_token) is False
    assert session.check_csrf_token(new_token) is True
    session.persist()
    after = env.request(sid)
    assert after.get_csrf_token() == new_token
    assert after.check_csrf_token(old_token) is False


def test_check_csrf_token_accepts_the_token_and_every_masked_form(env):
    session = env.request(env.existing(a=1))
    token = session.get_csrf_token()
    masked = {session.csrf_token_for_form() for _ in range(5)}
    assert len(masked) == 5  # a fresh mask every call
    assert token not in masked
    assert session.check_csrf_token(token) is True
    assert all(session.check_csrf_token(form) is True for form in masked)


def _flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1:]


@pytest.mark.parametrize("make_bad", [
    pytest.param(lambda token, other: "", id="empty"),
    pytest.param(lambda token, other: None, id="none"),
    pytest.param(lambda token, other: 12345, id="int"),
    pytest.param(lambda token, other: token.encode(), id="bytes"),
    pytest.param(lambda token, other: token[:-1], id="truncated"),
    pytest.param(lambda token, other: _flip(token, 10), id="one-character-changed"),
    pytest.param(lambda token, other: token + "AA", id="extended"),
    pytest.param(lambda token, other: other.get_csrf_token(), id="other-sessions-token"),
    pytest.param(lambda token, other: other.csrf_token_for_form(), id="other-sessions-masked-token"),
    pytest.param(lambda token, other: "A" * 200, id="oversized"),
    pytest.param(lambda token, other: "!" * 43, id="not-base64url"),
])
def test_check_csrf_token_rejects_anything_else(env, make_bad):
    session = env.request(env.existing(a=1))
    other = env.request(env.existing(b=2))
    assert session.check_csrf_token(make_bad(session.get_csrf_token(), other)) is False


def test_check_csrf_token_compares_in_constant_time(env, monkeypatch):
    compared = []
    real = core.constant_time_equal

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(core, "constant_time_equal", spy)
    session = env.request(env.existing(a=1))
    assert session.check_csrf_token(session.get_csrf_token()) is True
    assert session.check_csrf_token(session.csrf_token_for_form()) is True
    assert session.check_csrf_token(_flip(session.get_csrf_token(), 10)) is False
    assert len(compared) >= 3


# ---------------------------------------------------------------- timeouts


def test_idle_timeout_gives_a_fresh_session_and_logs_it(env):
    sid = env.existing(a=1)
    env.clock.advance(TIMEOUT + 1)
    session = env.request(sid)
    assert len(session) == 0
    assert session.is_new is True
    # The store still held the timed-out record and says so (EXPIRED); memcached and
    # Redis drop it themselves, and there the same request logs "unknown_id".
    assert env.event_names() == ["expired"]


def test_session_idle_for_exactly_timeout_is_still_valid(env):
    sid = env.existing(a=1)
    env.clock.advance(TIMEOUT)  # expired only when now - last_access > timeout
    assert env.request(sid).get("a") == 1


def test_session_layer_expires_a_record_the_store_still_holds(env):
    sid = env.existing(a=1)  # stored with a 600 s expiry
    events = []
    stricter = SessionService(
        load_config(None, type="memory", secret=SECRET, timeout=60,
                    on_event=lambda name, **fields: events.append(name)),
        env.store,
        clock=env.clock,
    )
    env.clock.advance(61)
    session = Session(stricter, env.cookie(sid))
    assert len(session) == 0 and session.is_new is True
    assert "expired" in events


def test_expired_session_that_writes_gets_a_new_id(env):
    sid = env.existing(a=1)
    env.clock.advance(TIMEOUT + 1)
    session = env.request(sid)
    session["b"] = 2
    session.save()
    session.persist()
    assert session.id != sid
    assert env.data(session.id) == {"b": 2}
    assert env.record(sid) is None


def test_absolute_timeout_ends_a_session_despite_activity():
    env = Env(absolute_timeout=1000)
    sid = env.existing(a=1)
    for _ in range(2):  # active at +500 and +999
        env.clock.advance(499.5)
        active = env.request(sid)
        assert active["a"] == 1
        active.persist()
    env.clock.advance(2)
    session = env.request(sid)
    assert len(session) == 0
    assert session.is_new is True


# ---------------------------------------------------------------- strict mode and store keys


def test_signed_id_without_a_record_gets_a_new_id_when_the_request_writes(env):
    unknown = core.new_session_id()
    session = env.request(unknown)
    assert len(session) == 0
    session["a"] = 1
    session.save()
    session.persist()
    assert session.id != unknown
    assert env.record(unknown) is None
    assert env.data(session.id) == {"a": 1}


def test_signed_id_without_a_record_creates_nothing_when_the_request_only_reads(env):
    session = env.request(core.new_session_id())
    session.get("a")
    session.persist()
    assert env.store.writes() == {}
    assert cookie_action(session) is None


FORGERIES = [
    pytest.param(lambda env, sid: sid, id="unsigned-raw-id"),
    pytest.param(lambda env, sid: _flip(env.service.sign(sid), 50), id="tampered-tag"),
    pytest.param(lambda env, sid: _flip(env.service.sign(sid), 10), id="tampered-id"),
    pytest.param(lambda env, sid: Env(secret=OTHER_SECRET).service.sign(sid), id="signed-with-another-secret"),
    pytest.param(lambda env, sid: env.service.sign(sid) + "A", id="extended"),
    pytest.param(lambda env, sid: "garbage", id="garbage"),
]


@pytest.mark.parametrize("forge", FORGERIES)
def test_forged_cookie_is_ignored_before_any_store_lookup(env, forge):
    sid = env.existing(user="ann")
    session = Session(env.service, "session=" + forge(env, sid))
    assert "user" not in session
    assert session.is_new is True
    assert env.store.calls["load"] == 0
    session["a"] = 1
    session.save()
    session.persist()
    assert session.id != sid
    assert env.data(sid) == {"user": "ann"}


def test_store_key_is_sha256_of_the_id_and_the_raw_id_never_reaches_the_store(env):
    session = env.request()
    session["a"] = 1
    session.save()
    session.persist()
    session.regenerate_id()
    session.persist()
    first, second = env.store.written_keys
    assert second == store_key(session.id)
    assert first != second
    raw_id = core.b64url_decode(session.id)
    blob = env.record(session.id).blob
    assert session.id.encode() not in blob and raw_id not in blob
    assert raw_id not in second


# ---------------------------------------------------------------- size


def test_record_over_max_record_size_raises_at_persist_and_the_stored_record_is_unchanged():
    env = Env(max_record_size=256)
    sid = env.existing(a=1)
    before = env.record(sid)
    session = env.request(sid)
    session["big"] = "x" * 300
    session.save()
    with pytest.raises(SessionTooLarge):
        session.persist()
    assert env.store.writes() == {}
    assert env.record(sid) == before


def test_new_session_over_max_record_size_is_not_created():
    env = Env(max_record_size=256)
    session = env.request()
    session["big"] = "x" * 300
    session.save()
    with pytest.raises(SessionTooLarge):
        session.persist()
    assert env.store.writes() == {}


# ---------------------------------------------------------------- concurrency


def two_requests(env: Env, **data) -> tuple[str, Session, Session]:
    """Two requests that loaded the same record before either wrote."""
    sid = env.existing(**data)
    first, second = env.request(sid), env.request(sid)
    len(first), len(second)
    return sid, first, second


def test_concurrent_saves_of_different_keys_both_land(env):
    sid, first, second = two_requests(env, base=0)
    first["x"] = 1
    first.save()
    first.persist()
    second["y"] = 2
    second.save()
    second.persist()
    assert env.data(sid) == {"base": 0, "x": 1, "y": 2}
    assert second["x"] == 1  # the merged data is what the request now holds
    assert "conflict_merged" in env.event_names()


def test_concurrent_delete_of_one_key_and_set_of_another_both_land(env):
    sid, first, second = two_requests(env, a=1, b=2)
    del first["a"]
    first.save()
    first.persist()
    second["c"] = 3
    second.save()
    second.persist()
    assert env.data(sid) == {"b": 2, "c": 3}


def test_concurrent_nested_mutation_merges_with_another_key(env):
    sid, first, second = two_requests(env, cart=[], seen=0)
    first["cart"].append("book")
    first.save()
    first.persist()
    second["seen"] = 1
    second.save()
    second.persist()
    assert env.data(sid) == {"cart": ["book"], "seen": 1}


def test_concurrent_saves_of_the_same_key_last_writer_wins(env):
    sid, first, second = two_requests(env, colour="red")
    first["colour"] = "green"
    first.save()
    first.persist()
    second["colour"] = "blue"
    second.save()
    second.persist()
    assert env.data(sid) == {"colour": "blue"}
    assert "conflict_merged" in env.event_names()


def test_concurrent_saves_of_the_same_key_raise_conflict_error_when_configured():
    env = Env(on_conflict="raise")
    sid, first, second = two_requests(env, colour="red")
    first["colour"] = "green"
    first.save()
    first.persist()
    second["colour"] = "blue"
    second.save()
    with pytest.raises(ConflictError):
        second.persist()
    assert env.data(sid) == {"colour": "green"}


class BusyStore(CountingStore):
    """A store without a lock whose compare-and-set loses `losses` races to other writers first."""

    has_locked_update = False

    def __init__(self, clock, losses: int) -> None:
        super().__init__(clock)
        self.losses = losses

    def cas(self, key, blob, expected_version, expires_at):
        if self.losses:
            self.losses -= 1
            current = self.peek(key)  # another request lands first: same bytes, new version
            super().cas(key, current.blob, current.version, current.expires_at)
        return super().cas(key, blob, expected_version, expires_at)


@pytest.mark.parametrize("losses", [12, session_module.MAX_CAS_ATTEMPTS])
def test_a_write_lands_after_many_lost_races_and_gives_up_only_past_the_limit(monkeypatch, losses):
    monkeypatch.setattr(session_module, "MAX_BACKOFF", 0.0)
    env = Env()
    env.store = env.service.store = BusyStore(env.clock, 0)
    sid = env.existing(base=0)
    session = env.request(sid)
    session["x"] = 1
    session.save()
    env.store.losses = losses + 1  # the first compare-and-set, then one per merge attempt
    if losses < session_module.MAX_CAS_ATTEMPTS:
        session.persist()
        assert env.data(sid) == {"base": 0, "x": 1}
    else:
        with pytest.raises(ConflictError):
            session.persist()
        assert "conflict_raised" in env.event_names()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_merge_lock_held_when_the_process_forks_does_not_block_the_child(env):
    key = store_key(env.existing(a=1))
    held = env.service.merge_lock(key)
    held.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # the child: its merges must not wait for a lock nobody there will release
            os._exit(0 if env.service.merge_lock(key).acquire(timeout=5) else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        held.release()
    assert os.waitstatus_to_exitcode(status) == 0


def test_threads_of_one_process_wait_for_a_stores_merge_lock_one_at_a_time():
    # A store's locked_update (a database row lock) counts its queue toward the statement
    # timeout: 16 threads of one gthread worker merging into one hot session must queue
    # in the process, not on the database.
    class SlowLockedStore(CountingStore):
        inside = peak = 0
        guard = threading.Lock()

        def locked_update(self, key, fn):
            with self.guard:
                self.inside += 1
                self.peak = max(self.peak, self.inside)
            time.sleep(0.01)
            try:
                return super().locked_update(key, fn)
            finally:
                with self.guard:
                    self.inside -= 1

    env = Env()
    env.store = SlowLockedStore(env.clock)
    env.service = SessionService(env.service.config, env.store, clock=env.clock)
    sid = env.existing(seed=0)
    sessions = [env.request(sid) for _ in range(8)]
    for i, session in enumerate(sessions):
        session[f"k{i}"] = i  # every session loaded the same version: all but one conflict
    threads = [threading.Thread(target=lambda s=s: (s.save(), s.persist())) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert env.store.calls["locked_update"] == 7
    assert env.store.peak == 1
    assert env.data(sid) == {"seed": 0, **{f"k{i}": i for i in range(8)}}


def test_concurrent_delete_makes_the_other_save_gone_without_raising(env):
    sid, first, second = two_requests(env, user="ann")
    first.delete()
    first.persist()
    env.store.forget_calls()
    second["cart"] = ["book"]
    second.save()
    second.persist()  # a concurrent logout wins; nothing is raised
    assert env.record(sid) is None
    assert "create" not in env.store.writes()
    assert cookie_action(second) == EXPIRE_COOKIE
    assert "save_gone" in env.event_names()


# ---------------------------------------------------------------- events


def test_event_hook_gets_a_keyed_hash_of_the_id_never_the_id(env):
    session = env.request()
    session["a"] = 1
    session.save()
    session.persist()
    (name, fields), = env.events
    assert name == "created"
    assert fields["sid"] == env.service.sid(session.id)
    assert len(fields["sid"]) == 16 and int(fields["sid"], 16) >= 0
    assert session.id not in repr(fields)


def test_failing_event_hook_does_not_break_the_request():
    def hook(name, **fields):
        raise RuntimeError("hook broke")

    env = Env(on_event=hook)
    session = env.request()
    session["a"] = 1
    session.save()
    session.persist()
    assert env.data(session.id) == {"a": 1}


# ---------------------------------------------------------------- corrupt records and store errors

_HEADER_ONLY = core.pack_record(T0, T0, 0, None, None, None, b"")

CORRUPT = [
    pytest.param(b"garbage", id="garbage"),
    pytest.param(b"", id="empty"),
    pytest.param(_HEADER_ONLY + b"{not json", id="bad-json"),
    pytest.param(_HEADER_ONLY + b"[1, 2]", id="not-an-object"),
    pytest.param(_HEADER_ONLY + b'{"a": {"~dt": "yesterday"}}', id="bad-tag"),
    pytest.param(b"\x63" + _HEADER_ONLY[1:] + b"{}", id="unknown-format-version"),
    pytest.param(core.pack_record(T0, T0, 0, None, None, b"{oops", b"{}"), id="bad-flash"),
]


@pytest.mark.parametrize("blob", CORRUPT)
def test_corrupt_record_is_treated_as_missing_and_logged(env, blob):
    sid = core.new_session_id()
    env.store.create(store_key(sid), blob, T0 + TIMEOUT)
    session = env.request(sid)
    assert len(session) == 0
    assert session.is_new is True
    assert "corrupt_record" in env.event_names()
    session["a"] = 1
    session.save()
    session.persist()
    assert session.id != sid


def test_corrupt_record_raises_store_error_when_invalidate_corrupt_is_off():
    env = Env(invalidate_corrupt=False)
    sid = core.new_session_id()
    env.store.create(store_key(sid), b"garbage", T0 + TIMEOUT)
    with pytest.raises(CorruptRecord) as raised:
        len(env.request(sid))
    assert isinstance(raised.value, StoreError)
    assert "corrupt_record" in env.event_names()


def test_record_the_store_finds_damaged_is_treated_as_missing_and_logged(env):
    sid = env.existing(a=1)
    env.store.damaged.add(store_key(sid))
    session = env.request(sid)
    assert len(session) == 0
    assert session.is_new is True
    assert env.event_names() == ["corrupt_record"]  # not a store_error: the store answered
    session["b"] = 2
    session.save()
    session.persist()
    assert session.id != sid
    assert env.data(session.id) == {"b": 2}


@pytest.mark.parametrize("on_store_error", ["raise", "anonymous"])
@pytest.mark.parametrize("damage", ["store", "codec"])
def test_damaged_record_raises_when_invalidate_corrupt_is_off_whatever_on_store_error(damage, on_store_error):
    env = Env(invalidate_corrupt=False, on_store_error=on_store_error)
    if damage == "store":
        sid = env.existing(a=1)
        env.store.damaged.add(store_key(sid))
    else:
        sid = core.new_session_id()
        env.store.create(store_key(sid), b"garbage", T0 + TIMEOUT)
    with pytest.raises(CorruptRecord, match="invalidate_corrupt is off") as raised:
        env.request(sid).get("a")
    assert raised.value.__suppress_context__
    assert "corrupt_record" in env.event_names()
    assert "store_error" not in env.event_names()


@pytest.mark.parametrize("invalidate_corrupt", [True, False])
@pytest.mark.parametrize("kind", ["file", "lmdb", "sql-sqlite-file"])
def test_record_damaged_on_disk_follows_invalidate_corrupt(tmp_path, kind, invalidate_corrupt):
    from test_store_contract import STORE_KINDS

    clock = FakeClock()
    store = STORE_KINDS[kind].make(tmp_path, clock)
    config = load_config(None, type="memory", secret=SECRET, timeout=TIMEOUT, invalidate_corrupt=invalidate_corrupt)
    service = SessionService(config, store, clock=clock)
    try:
        session = Session(service)
        session["a"] = 1
        session.save()
        session.persist()
        sid = session.id
        STORE_KINDS[kind].damage(store, store_key(sid))
        cookie = "session=" + service.sign(sid)
        if not invalidate_corrupt:
            with pytest.raises(CorruptRecord):
                Session(service, cookie).get("a")
            return
        session = Session(service, cookie)
        assert session.get("a") is None and session.is_new
        session["b"] = 2
        session.save()
        session.persist()
        assert session.id != sid
        assert Session(service, "session=" + service.sign(session.id))["b"] == 2
        assert isinstance(store.cleanup(clock() + 2 * TIMEOUT, 100), int)
    finally:
        store.close()


def test_store_error_on_load_propagates_by_default(env):
    sid = env.existing(a=1)
    env.store.failing.add("load")
    with pytest.raises(StoreError):
        env.request(sid).get("a")


def test_store_error_on_load_gives_an_empty_unsaved_session_when_anonymous():
    env = Env(on_store_error="anonymous")
    sid = env.existing(a=1)
    env.store.failing.add("load")
    session = env.request(sid)
    assert len(session) == 0
    session["a"] = 2
    session.save()
    session.persist()
    assert env.store.writes() == {}
    assert env.data(sid) == {"a": 1}
    assert "store_error" in env.event_names()


def test_store_error_on_write_propagates_and_leaves_the_record_intact(env):
    sid = env.existing(a=1)
    env.store.failing.add("cas")
    session = env.request(sid)
    session["a"] = 2
    session.save()
    with pytest.raises(StoreError):
        session.persist()
    assert env.data(sid) == {"a": 1}


def test_store_error_on_write_is_logged_not_raised_when_anonymous():
    env = Env(on_store_error="anonymous")
    sid = env.existing(a=1)
    env.store.failing.add("cas")
    session = env.request(sid)
    session["a"] = 2
    session.save()
    session.persist()
    assert env.data(sid) == {"a": 1}
    assert "store_error" in env.event_names()


# ---------------------------------------------------------------- automatic cleanup


def _write_new_sessions(env: Env, count: int) -> None:
    for i in range(count):
        session = env.request()
        session["n"] = i
        session.save()
        session.persist()


def test_every_cleanup_every_writes_one_bounded_cleanup_step_runs(env, monkeypatch):
    monkeypatch.setattr(session_module, "CLEANUP_EVERY", 3)
    expired = env.existing(a=1)
    env.clock.advance(TIMEOUT + 1)
    env.service._writes = 0
    steps: list = []
    original = env.store.cleanup_step
    monkeypatch.setattr(env.store, "cleanup_step", lambda now, budget: steps.append(budget) or original(now, budget))
    _write_new_sessions(env, 2)
    assert steps == []
    _write_new_sessions(env, 1)
    assert steps == [session_module.CLEANUP_BUDGET]
    assert env.store.peek(store_key(expired)) is None
    assert ("cleanup", {"sid": None, "removed": 1}) in env.events
    _write_new_sessions(env, 3)
    assert len(steps) == 2


def test_a_failing_cleanup_step_is_an_event_and_the_write_stands(env, monkeypatch):
    monkeypatch.setattr(session_module, "CLEANUP_EVERY", 1)

    def down(now, budget):
        raise StoreError("disk gone")

    monkeypatch.setattr(env.store, "cleanup_step", down)
    session = env.request()
    session["a"] = 1
    session.save()
    session.persist()
    assert env.data(session.id) == {"a": 1}
    assert env.event_names() == ["created", "store_error"]


# ---------------------------------------------------------------- what never reaches the logs


def test_logs_never_contain_ids_cookie_values_tokens_or_data(caplog):
    caplog.set_level(logging.DEBUG, logger="fastsess")
    env = Env()
    secrets: list[str] = []

    def remember(session: Session) -> None:
        secrets.extend([session.id, env.service.sign(session.id)])

    # created, read, flashed, CSRF tokens issued and bumped
    session = env.request()
    session["card"] = "data-4111-1111"
    session.flash("flash-text-hello")
    secrets.append(session.get_csrf_token())
    session.persist()
    remember(session)
    sid = session.id
    reader = env.request(sid)
    secrets += [reader.new_csrf_token(), reader.csrf_token_for_form()]
    reader.persist()
    # merged and raised conflicts, a concurrent delete
    _, first, second = two_requests(env, note="data-merge-note")
    remember(first)
    first["note"], second["note"] = "data-first", "data-second"
    first.save(), second.save()
    first.persist()
    second.persist()
    deleter = env.request(first.id)
    deleter.delete()
    deleter.persist()
    second["again"] = "data-after-delete"
    second.save()
    second.persist()
    # regenerated, then the tombstoned id writes
    login = env.request(sid)
    login.regenerate_id()
    login.persist()
    remember(login)
    stale = env.request(sid)
    stale["user"] = "data-mallory"
    stale.save()
    stale.persist()
    # forged, expired, corrupt and failing
    forged = _flip(env.service.sign(sid), 50)
    secrets.append(forged)
    Session(env.service, "session=" + forged).get("x")
    env.clock.advance(TIMEOUT + 1)
    env.request(login.id).get("x")
    corrupt_id = core.new_session_id()
    secrets.append(corrupt_id)
    env.store.create(store_key(corrupt_id), b"data-garbage", env.clock() + TIMEOUT)
    env.request(corrupt_id).get("x")
    env.store.failing.add("load")
    with pytest.raises(StoreError):
        env.request(corrupt_id).get("x")

    records = [r for r in caplog.records if r.name == "fastsess"]
    logged = {getattr(r, "fastsess_event", None) for r in records}
    assert {"created", "regenerated", "write_dropped", "conflict_merged", "save_gone",
            "corrupt_record", "store_error"} <= logged
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in records)
    for secret in secrets:
        assert secret not in text
    for fragment in ("data-", "flash-text"):
        assert fragment not in text
