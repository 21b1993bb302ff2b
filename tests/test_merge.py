"""The three-way merge of concurrent saves: `merge` per top-level key, `merge_flash` per message id (SPEC 3).

base is the data as this request loaded it, ours is this request's data, theirs
is what the store holds now. Both functions are pure; these tables pin them.
The last table drives a save through concurrent writes, deletes and rotations
(a record that vanished is GONE), both under a store lock and with the
compare-and-set retries of stores that have none.
"""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsess import core
from fastsess.config import load_config
from fastsess.errors import ConflictError
from fastsess.session import EXPIRE_COOKIE, Session, SessionService, merge, merge_flash
from fastsess.stores.base import StoredRecord
from fastsess.stores.memory import MemoryStore


def typed(value):
    """value with every leaf paired with its type, so 1, 1.0 and True compare as different."""
    if isinstance(value, dict):
        return ("dict", sorted(((k, typed(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [typed(v) for v in value])
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(repr(typed(v)) for v in value))
    return (type(value).__name__, value)


# (base, ours, theirs, merged, keys changed on both sides)
MERGE_CASES = [
    # one side only
    pytest.param({"a": 1}, {"a": 2}, {"a": 1}, {"a": 2}, [], id="changed-only-by-us"),
    pytest.param({"a": 1}, {"a": 1}, {"a": 3}, {"a": 3}, [], id="changed-only-by-them"),
    pytest.param({}, {"b": 1}, {}, {"b": 1}, [], id="added-only-by-us"),
    pytest.param({}, {}, {"c": 1}, {"c": 1}, [], id="added-only-by-them"),
    pytest.param({"a": 1}, {"a": 1}, {"a": 1}, {"a": 1}, [], id="unchanged-everywhere"),
    pytest.param(
        {"a": 1, "b": 2, "c": 3},
        {"a": 10, "b": 2, "c": 3, "d": 4},
        {"a": 1, "b": 20, "e": 5},
        {"a": 10, "b": 20, "d": 4, "e": 5},
        [],
        id="disjoint-changes-on-both-sides-all-kept",
    ),
    # both sides
    pytest.param({"a": 1}, {"a": 2}, {"a": 2}, {"a": 2}, [], id="same-change-on-both-sides-is-no-clash"),
    pytest.param({}, {"a": "x"}, {"a": "x"}, {"a": "x"}, [], id="same-addition-on-both-sides-is-no-clash"),
    pytest.param({"a": 1}, {"a": 2}, {"a": 3}, {"a": 2}, ["a"], id="different-changes-ours-wins"),
    pytest.param({}, {"a": "ours"}, {"a": "theirs"}, {"a": "ours"}, ["a"], id="different-additions-ours-wins"),
    # deletes are changes
    pytest.param({"a": 1, "b": 2}, {"b": 2}, {"a": 1, "b": 2}, {"b": 2}, [], id="deleted-by-us"),
    pytest.param({"a": 1, "b": 2}, {"a": 1, "b": 2}, {"b": 2}, {"b": 2}, [], id="deleted-by-them"),
    pytest.param({"a": 1}, {}, {}, {}, [], id="deleted-on-both-sides-is-no-clash"),
    pytest.param({"a": 1}, {}, {"a": 2}, {}, ["a"], id="we-delete-they-modify-ours-wins"),
    pytest.param({"a": 1}, {"a": 2}, {}, {"a": 2}, ["a"], id="we-modify-they-delete-ours-wins"),
    pytest.param({"a": None}, {}, {"a": None}, {}, [], id="deleting-a-none-value-is-a-change"),
    pytest.param({}, {"a": None}, {}, {"a": None}, [], id="setting-none-is-a-change"),
    pytest.param({"a": 1}, {"a": 1}, {"a": 2}, {"a": 2}, [], id="deleted-and-reset-to-base-is-no-change"),
    # nested values compare as whole values
    pytest.param(
        {"cart": [1]}, {"cart": [1, 2]}, {"cart": [1], "x": 0}, {"cart": [1, 2], "x": 0}, [],
        id="nested-list-changed-by-us",
    ),
    pytest.param(
        {"p": {"x": [1]}}, {"p": {"x": [1]}}, {"p": {"x": [1, 9]}}, {"p": {"x": [1, 9]}}, [],
        id="nested-equal-copy-is-no-change",
    ),
    pytest.param(
        {"cart": [1]}, {"cart": [1, 2]}, {"cart": [1, 2]}, {"cart": [1, 2]}, [],
        id="nested-same-change-on-both-sides-is-no-clash",
    ),
    pytest.param(
        {"p": {"x": 1}}, {"p": {"x": 1, "y": 2}}, {"p": {"x": 1, "z": 3}}, {"p": {"x": 1, "y": 2}}, ["p"],
        id="nested-dict-changed-differently-clashes-as-a-whole",
    ),
    # equality is equality as stored: 1, 1.0 and True differ
    pytest.param({"a": 1}, {"a": 1.0}, {"a": 1}, {"a": 1.0}, [], id="int-to-float-is-a-change"),
    pytest.param({"a": 1}, {"a": True}, {"a": 1}, {"a": True}, [], id="int-to-true-is-a-change"),
    pytest.param({"a": 1}, {"a": 1}, {"a": True}, {"a": True}, [], id="their-int-to-true-is-their-change"),
    pytest.param({"a": True}, {"a": 1}, {"a": 1.0}, {"a": 1}, ["a"], id="int-vs-float-on-both-sides-clashes"),
    pytest.param({}, {"a": 1}, {"a": True}, {"a": 1}, ["a"], id="int-vs-true-additions-clash"),
    pytest.param({"l": [1]}, {"l": [1.0]}, {"l": [1]}, {"l": [1.0]}, [], id="nested-int-to-float-is-a-change"),
    pytest.param({"t": [1, 2]}, {"t": (1, 2)}, {"t": [1, 2]}, {"t": (1, 2)}, [], id="list-to-tuple-is-a-change"),
    pytest.param(
        {"s": {"b", "a", "c"}}, {"s": {"c", "b", "a"}}, {"s": {"a", "b", "c", "d"}}, {"s": {"a", "b", "c", "d"}}, [],
        id="equal-sets-are-no-change-whatever-their-order",
    ),
    pytest.param(
        {"d": dt.date(2024, 1, 1)}, {"d": dt.date(2024, 1, 2)}, {"d": dt.date(2024, 1, 1)},
        {"d": dt.date(2024, 1, 2)}, [], id="tagged-value-changed-by-us",
    ),
]


@pytest.mark.parametrize("base, ours, theirs, expected, clashes", MERGE_CASES)
def test_merge_keeps_one_sided_changes_and_ours_on_clash(base, ours, theirs, expected, clashes):
    merged, found = merge(base, ours, theirs)
    assert typed(merged) == typed(expected)
    assert sorted(found) == sorted(clashes)


@pytest.mark.parametrize("base, ours, theirs, expected, clashes", MERGE_CASES)
def test_merge_raises_conflict_error_only_on_clash_when_on_conflict_is_raise(base, ours, theirs, expected, clashes):
    if clashes:
        with pytest.raises(ConflictError):
            merge(base, ours, theirs, on_conflict="raise")
    else:
        merged, found = merge(base, ours, theirs, on_conflict="raise")
        assert typed(merged) == typed(expected)
        assert found == []


@pytest.mark.parametrize("base, ours, theirs, expected, clashes", MERGE_CASES)
def test_merge_does_not_mutate_its_inputs(base, ours, theirs, expected, clashes):
    before = copy.deepcopy((base, ours, theirs))
    merge(base, ours, theirs)
    assert typed((base, ours, theirs)) == typed(before)


def test_merge_lists_every_clashing_key_and_only_those():
    base = {"a": 1, "b": 1, "c": 1, "d": 1}
    ours = {"a": 2, "b": 2, "d": 1}
    theirs = {"a": 3, "b": 2, "c": 3}
    merged, clashes = merge(base, ours, theirs)
    assert merged == {"a": 2, "b": 2}  # c: we deleted, they changed; d: they deleted
    assert sorted(clashes) == ["a", "c"]


def test_conflict_error_message_does_not_contain_session_values():
    with pytest.raises(ConflictError) as info:
        merge({"card": "0000"}, {"card": "ours-secret-4111"}, {"card": "theirs-secret-5500"}, on_conflict="raise")
    assert "secret" not in str(info.value)


# ---------------------------------------------------------------- flash queues

A, B, C, D, E, F = (["m-a", "hello"], ["m-b", "theirs"], ["m-c", "ours"], ["m-d", "more"], ["m-e", "err"],
                    ["m-f", "err2"])

# (base, ours, theirs, merged)
FLASH_CASES = [
    pytest.param({"": [A]}, {}, {"": [A]}, {}, id="popped-by-us-is-not-resurrected"),
    pytest.param({"": [A]}, {}, {"": [A, B]}, {"": [B]}, id="popped-by-us-while-they-added-keeps-theirs"),
    pytest.param({}, {}, {"": [B]}, {"": [B]}, id="added-by-them-is-kept"),
    pytest.param({}, {"": [C]}, {}, {"": [C]}, id="added-by-us-is-kept"),
    pytest.param({"": [A]}, {"": [A, C]}, {"": [A, B]}, {"": [A, B, C]}, id="added-by-us-is-appended-after-theirs"),
    pytest.param({"": [A]}, {"": [A]}, {}, {}, id="popped-by-them-is-not-resurrected-by-us"),
    pytest.param({"": [A]}, {}, {}, {}, id="popped-by-both"),
    pytest.param({}, {"": [C]}, {"": [C]}, {"": [C]}, id="message-on-both-sides-is-shown-once"),
    pytest.param({"": [A]}, {"": [C]}, {"": [A, B]}, {"": [B, C]}, id="we-popped-and-flashed-anew"),
    pytest.param({"": [A]}, {"": [A, C]}, {"": [B]}, {"": [B, C]}, id="they-popped-and-flashed-we-flashed"),
    pytest.param(
        {}, {"": [["m-2", "Saved"]]}, {"": [["m-1", "Saved"]]}, {"": [["m-1", "Saved"], ["m-2", "Saved"]]},
        id="same-text-with-different-ids-is-two-messages",
    ),
    pytest.param(
        {"": [A], "errors": [E]}, {"errors": [E]}, {"": [A], "errors": [E, F]}, {"errors": [E, F]},
        id="queues-merge-independently",
    ),
    pytest.param({"": [A], "x": [D]}, {"x": [D]}, {"": [A], "x": [D]}, {"x": [D]}, id="emptied-queue-is-dropped"),
    pytest.param({}, {}, {}, {}, id="no-flash-anywhere"),
]


@pytest.mark.parametrize("base, ours, theirs, expected", FLASH_CASES)
def test_merge_flash_merges_queues_as_sets_of_message_ids(base, ours, theirs, expected):
    assert merge_flash(base, ours, theirs) == expected


@pytest.mark.parametrize("base, ours, theirs, expected", FLASH_CASES)
def test_merge_flash_does_not_mutate_its_inputs(base, ours, theirs, expected):
    before = copy.deepcopy((base, ours, theirs))
    merge_flash(base, ours, theirs)
    assert (base, ours, theirs) == before


@st.composite
def concurrent_flash(draw):
    """A queue as loaded, then what each of two requests popped from it and flashed anew."""
    pool = [f"id{i}" for i in range(12)]
    base = draw(st.lists(st.sampled_from(pool[:6]), unique=True, max_size=6))
    ours_popped = draw(st.sets(st.sampled_from(base))) if base else set()
    theirs_popped = draw(st.sets(st.sampled_from(base))) if base else set()
    ours_added = draw(st.lists(st.sampled_from(pool[6:9]), unique=True, max_size=3))
    theirs_added = draw(st.lists(st.sampled_from(pool[9:]), unique=True, max_size=3))
    ours = [i for i in base if i not in ours_popped] + ours_added
    theirs = [i for i in base if i not in theirs_popped] + theirs_added
    return base, ours, theirs, ours_popped | theirs_popped, ours_added + theirs_added


def as_queue(ids):
    return {"": [[i, "msg " + i] for i in ids]} if ids else {}


@settings(max_examples=200, deadline=None)
@given(concurrent_flash())
def test_merge_flash_loses_nothing_and_shows_nothing_twice(case):
    base, ours, theirs, popped, added = case
    merged = merge_flash(as_queue(base), as_queue(ours), as_queue(theirs))
    ids = [m[0] for m in merged.get("", [])]
    assert len(ids) == len(set(ids)), "a message would be shown twice"
    assert not set(ids) & popped, "a popped message came back"
    assert set(added) <= set(ids), "a new message was lost"
    assert {i for i in base if i not in popped} <= set(ids), "an unread message was lost"


# ---------------------------------------------------------------- merging at save time


class InterleavingStore(MemoryStore):
    """A memory store that lets scripted concurrent requests write just before each write of the request
    under test reaches it; locked=False makes it retry like memcached and redis, without locked_update."""

    def __init__(self, locked: bool) -> None:
        super().__init__()
        self.has_locked_update = locked
        self.interleaved: list = []  # one callable per write of the request under test
        self._running = False

    def _interleave(self) -> None:
        if self.interleaved and not self._running:
            self._running = True  # the scripted requests' own writes pass straight through
            try:
                self.interleaved.pop(0)()
            finally:
                self._running = False

    def cas(self, key, blob, expected_version, expires_at):
        self._interleave()
        return super().cas(key, blob, expected_version, expires_at)

    def locked_update(self, key, fn):
        self._interleave()
        return super().locked_update(key, fn)


def _other_request(service: SessionService, session_id: str, action) -> None:
    session = Session(service, session_id=session_id)
    action(session)
    session.persist()


def _setting(key):
    def action(session):
        session[key] = "theirs"
        session.save()

    return action


def _flashing(session):
    session.flash("theirs")


def _popping_flash(session):
    session.pop_flash()


def _deleting(session):
    session.delete()


def _rotating(session):
    session.regenerate_id()


# (what concurrent requests do before each of our writes; the data and flash messages the record holds
#  afterwards, or None when it is gone; whether our cookie is expired)
SAVE_CASES = [
    pytest.param([_setting("x")], {"base": 0, "x": "theirs", "mine": 1}, [], False, id="their-write-merges"),
    pytest.param(
        [_setting("x"), _setting("y")], {"base": 0, "x": "theirs", "y": "theirs", "mine": 1}, [], False,
        id="a-second-conflict-merges-from-our-own-changes-again",
    ),
    pytest.param(
        [_flashing], {"base": 0, "mine": 1}, ["theirs"], False, id="their-flash-message-is-kept",
    ),
    pytest.param(
        [_flashing, _popping_flash], {"base": 0, "mine": 1}, [], False,
        id="a-message-they-flashed-and-then-popped-is-not-shown-again",
    ),
    pytest.param([_deleting], None, None, True, id="gone-before-our-write-is-not-recreated"),
    pytest.param(
        [_setting("x"), _deleting], None, None, True, id="gone-between-conflict-and-merge-is-not-recreated"
    ),
    pytest.param([_rotating], None, None, False, id="rotated-away-is-gone-and-the-new-cookie-is-left-alone"),
]


@pytest.mark.parametrize("locked", [True, False], ids=["under-the-store-lock", "compare-and-set-retries"])
@pytest.mark.parametrize("interleaved, expected, expected_flash, cookie_expired", SAVE_CASES)
def test_save_merges_concurrent_writes_and_never_recreates_a_vanished_record(
    locked, interleaved, expected, expected_flash, cookie_expired
):
    store = InterleavingStore(locked)
    events: list = []
    config = load_config(None, type="memory", secret="merge-test-secret-" + "x" * 20, timeout=600,
                         on_event=lambda name, **fields: events.append(name))
    service = SessionService(config, store)
    creator = Session(service)
    creator["base"] = 0
    creator.save()
    creator.persist()
    session_id = creator.id
    ours = Session(service, session_id=session_id)
    len(ours)  # loaded before any concurrent write
    ours["mine"] = 1
    ours.save()
    store.interleaved = [
        (lambda action=action: _other_request(service, session_id, action)) for action in interleaved
    ]

    ours.persist()  # never raises: a merge keeps both sides, a vanished record wins

    record = store.load(core.store_key(session_id))
    if expected is None:
        assert not isinstance(record, StoredRecord), "a vanished record was brought back"
        assert "save_gone" in events
        assert (ours.__dict__["_sess"].cookie_action == EXPIRE_COOKIE) is cookie_expired
    else:
        *_, flash, data = core.unpack_record(record.blob)
        assert core.decode_data(data) == expected
        messages = core.decode_data(flash).get("", []) if flash is not None else []
        assert [text for _, text in messages] == expected_flash
        assert "conflict_merged" in events
