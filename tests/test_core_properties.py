"""Property tests of the kernel: the twins agree, parsers never fail badly, and the stdlib agrees.

(a) The C kernel gives byte-identical output to the pure-Python reference on
    generated inputs (SPEC 1), errors included.
(b) Every parsing and decoding function, fed arbitrary bytes, text and wrong
    types, returns a result or raises ValueError or TypeError; nothing else.
(c) HMAC and base64url agree with the standard library.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastsess import _core_py as reference

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="session")
def c_core(core):
    """The C kernel, for tests that compare it with the reference."""
    if core is reference:
        pytest.skip("compares the C kernel with the pure-Python reference")
    return core


def outcome(fn, *args, **kwargs):
    """What a call did: ("ok", result) or ("raised", exception type, message)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the comparison is the point
        return ("raised", type(exc), str(exc))


def same_outcome(c_kernel, function, /, *args, compare_messages=True, **kwargs):
    ours = outcome(getattr(c_kernel, function), *args, **kwargs)
    theirs = outcome(getattr(reference, function), *args, **kwargs)
    if not compare_messages and ours[0] == theirs[0] == "raised":
        ours, theirs = ours[:2], theirs[:2]
    assert ours == theirs, (function, args, kwargs)
    return ours


# ---------------------------------------------------------------- strategies

# Whole seconds: CPython's fromisoformat reads an offset under one second, such as
# +00:00:00.000001, as UTC; no real time zone has a sub-second offset.
offsets = st.integers(-86399, 86399).map(lambda seconds: dt.timedelta(seconds=seconds))
zones = st.none() | offsets.map(dt.timezone)
keys = (
    st.text(max_size=8)
    | st.text(max_size=6).map(lambda s: "~" + s)
    | st.sampled_from(["~~", "~t", "~b", "~"])
)
scalars = (
    st.text(max_size=20)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.none()
)
hashable_leaves = (
    scalars
    | st.binary(max_size=20)
    | st.dates()
    | st.datetimes(timezones=zones)
    | st.times(timezones=zones)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
)
hashables = st.recursive(
    hashable_leaves,
    lambda children: st.lists(children, max_size=4).map(tuple) | st.frozensets(children, max_size=4),
    max_leaves=8,
)
session_values = st.recursive(
    hashable_leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(keys, children, max_size=5)
        | st.lists(children, max_size=4).map(tuple)
        | st.sets(hashables, max_size=5)
        | st.frozensets(hashables, max_size=4)
    ),
    max_leaves=25,
)
refused_values = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        2**64,
        -(2**63) - 1,
        object(),
        1j,
        bytearray(b"x"),
        {1: 2},
        "\ud800",
        {"\udc00": 1},
    ]
)
session_data = st.dictionaries(keys, session_values, max_size=6)
data_with_refusals = st.dictionaries(keys, session_values | refused_values, max_size=6)

ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=30)
cookie_text = st.text(st.sampled_from('ab=; \t"é\u20ac\U0001f600,\r\n'), max_size=60)
b64_text = st.text(
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), max_size=70
)
wrong_types = (
    st.none()
    | st.integers()
    | st.floats()
    | st.lists(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=3)
)
anything = (
    st.binary(max_size=200)
    | st.text(max_size=200)
    | wrong_types
    | st.builds(bytearray, st.binary(max_size=50))
)

KEYS = [(7, b"k" * 32), (9, b"other key"), (7, b"third")]


def json_text(max_leaves=20):
    """JSON documents with keys that look like tags, to reach deep into the decoder."""
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=10)
        | b64_text
    )
    tree = st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
        max_leaves=max_leaves,
    )
    return st.dictionaries(keys, tree, max_size=4).map(lambda v: json.dumps(v).encode())


# ---------------------------------------------------------------- (a) the twins agree


@SETTINGS
@given(data=session_data)
def test_encode_and_decode_agree(c_core, data):
    ours = same_outcome(c_core, "encode_data", data)
    assert ours[0] == "ok"
    blob = ours[1]
    decoded = c_core.decode_data(blob)
    assert decoded == reference.decode_data(blob) == data
    assert reference.encode_data(decoded) == blob


@SETTINGS
@given(data=data_with_refusals)
def test_refusals_agree(c_core, data):
    same_outcome(c_core, "encode_data", data)
    for key, value in data.items():
        same_outcome(c_core, "check_value", key, value)


@SETTINGS
@given(
    raw_id=st.binary(min_size=32, max_size=32),
    key=st.binary(max_size=80),
    kid=st.integers(0, 255),
    name=st.text(max_size=30),
)
def test_sign_id_agrees(c_core, raw_id, key, kid, name):
    sid = reference.b64url_encode(raw_id)
    value = same_outcome(c_core, "sign_id", sid, key, kid, name)[1]
    assert c_core.open_id_cookie(value, [(kid, key)], name) == (sid, 0)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_b64url_and_fingerprint_agree(c_core, data):
    same_outcome(c_core, "b64url_encode", data)
    same_outcome(c_core, "fingerprint", data)


@SETTINGS
@given(
    name=ascii_text,
    value=ascii_text,
    path=st.none() | ascii_text,
    domain=st.none() | ascii_text,
    expires=st.none() | st.integers(-(2**40), 2**40) | st.floats(-1e12, 1e12),
    max_age=st.none() | st.integers(-(10**9), 10**12),
    secure=st.booleans(),
    httponly=st.booleans(),
    samesite=st.none() | st.sampled_from(["Lax", "Strict", "None", "", "x;y"]),
    partitioned=st.booleans(),
)
def test_build_set_cookie_agrees(c_core, **kwargs):
    same_outcome(c_core, "build_set_cookie", **kwargs)


@SETTINGS
@given(
    created=st.floats(),
    last_write=st.floats(),
    csrf_gen=st.integers(-(2**40), 2**40),
    domain=st.none() | st.text(max_size=90),
    path=st.none() | st.text(max_size=90),
    flash=st.none() | st.binary(max_size=40),
    data=st.binary(max_size=100),
)
def test_pack_record_agrees(c_core, created, last_write, csrf_gen, domain, path, flash, data):
    ours = same_outcome(c_core, "pack_record", created, last_write, csrf_gen, domain, path, flash, data)
    if ours[0] == "ok":
        ours_unpacked = c_core.unpack_record(ours[1])
        theirs_unpacked = reference.unpack_record(ours[1])
        assert struct.pack(">dd", *ours_unpacked[:2]) == struct.pack(">dd", created, last_write)
        assert ours_unpacked[2:] == theirs_unpacked[2:] == (csrf_gen & 0xFFFFFFFF, domain, path, flash, data)


@SETTINGS
@given(
    header=cookie_text,
    name=st.sampled_from(["a", "ab", "b", "é", "\u20ac", "a b", "", " a", "a\t", "a=", "a;b", ".*", "a\n"]),
    limit=st.integers(-1, 5),
)
def test_parse_cookie_agrees(c_core, header, name, limit):
    same_outcome(c_core, "parse_cookie", header, name, limit)


@SETTINGS
@given(data=st.data())
def test_open_id_cookie_agrees(c_core, data):
    signed = reference.sign_id(reference.b64url_encode(bytes(32)), b"k" * 32, 7, "s")
    position = data.draw(st.integers(0, len(signed) - 1))
    value = data.draw(
        st.just(signed)
        | b64_text
        | st.text(max_size=70)
        | st.sampled_from("A_-z0é").map(lambda ch: signed[:position] + ch + signed[position + 1 :])
    )
    name = data.draw(st.sampled_from(["s", "S", "session"]))
    same_outcome(c_core, "open_id_cookie", value, KEYS, name)


@SETTINGS
@given(blob=json_text() | st.binary(max_size=100) | session_data.map(reference.encode_data))
def test_decode_data_agrees(c_core, blob):
    ours = outcome(c_core.decode_data, blob)
    theirs = outcome(reference.decode_data, blob)
    assert ours[0] == theirs[0], (blob, ours, theirs)
    if ours[0] == "ok":
        assert ours[1] == theirs[1]
        assert reference.encode_data(ours[1]) == reference.encode_data(theirs[1])
    else:
        assert ours[1] is theirs[1], (blob, ours, theirs)


def mutable_containers(value, found=None) -> dict:
    """id -> object for every dict, list and set reachable from value."""
    found = {} if found is None else found
    if type(value) in (dict, list, set):
        found[id(value)] = value
    if type(value) is dict:
        for v in value.values():
            mutable_containers(v, found)
    elif type(value) in (list, tuple):
        for v in value:
            mutable_containers(v, found)
    return found


@SETTINGS
@given(data=session_data)
def test_copy_data_is_equal_and_shares_no_mutable_container(core, data):
    decoded = core.decode_data(core.encode_data(data))
    copied = core.copy_data(decoded)
    assert copied == decoded
    assert not mutable_containers(decoded).keys() & mutable_containers(copied).keys()


@SETTINGS
@given(
    steps=st.lists(
        st.sampled_from(["decode", "decode_shared"]).flatmap(
            lambda op: st.tuples(st.just(op), st.sampled_from([b"{", b"[]"]) | session_data.map(reference.encode_data))
        )
        | st.tuples(st.just("prime"), session_data, session_data),
        max_size=20,
    ),
    budget=st.integers(0, 400),
    entry_limit=st.integers(0, 200),
)
def test_decode_memo_agrees(c_core, steps, budget, entry_limit):
    ours, theirs = c_core.DecodeMemo(budget, entry_limit), reference.DecodeMemo(budget, entry_limit)
    loaded = []  # bytes decoded so far: what prime() is told a session was loaded from
    for op, first, second in ((step[0], step[1], step[2] if len(step) > 2 else None) for step in steps):
        if op == "prime":
            old = loaded[len(loaded) // 2] if loaded else reference.encode_data(first)
            new = reference.encode_data(second)
            assert ours.prime(old, new, second) == theirs.prime(old, new, second)
        else:
            loaded.append(first)
            assert outcome(getattr(ours, op), first) == outcome(getattr(theirs, op), first)
        assert ours.size == theirs.size <= max(budget, 0)
        assert sorted(ours.entries(), key=repr) == sorted(theirs.entries(), key=repr)


def type_tree(value):
    """value's types all the way down, so equal-but-different answers (1 and 1.0, True and 1) differ."""
    if type(value) is dict:
        return {k: type_tree(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return [type(value), *map(type_tree, value)]
    return type(value), value


@SETTINGS
@given(before=session_data, after=session_data)
def test_decode_memo_keeps_exactly_what_the_written_bytes_decode_to(core, before, after):
    memo = core.DecodeMemo(1 << 20, 1 << 16)
    loaded = core.encode_data(before)
    memo.decode(loaded)
    written = core.encode_data(after)
    if memo.prime(loaded, written, after):
        assert type_tree(memo.decode(written)) == type_tree(core.decode_data(written))
        shared, kept = memo.decode_shared(written)
        assert kept is not None and type_tree(shared) == type_tree(core.decode_data(written))
        assert not mutable_containers(after).keys() & mutable_containers(kept).keys()  # a copy, not after's
    else:
        assert loaded == written or memo.decode_shared(written)[1] is None


@SETTINGS
@given(blob=st.binary(max_size=120))
def test_unpack_record_agrees(c_core, blob):
    same_outcome(
        c_core, "unpack_record", struct.pack(">BBIdd", 1, blob[0] & 7 if blob else 0, 0, 0, 0) + blob
    )
    same_outcome(c_core, "unpack_record", blob)


# ---------------------------------------------------------------- (b) parsers: ValueError or TypeError only


def fails_cleanly(fn, *args):
    try:
        fn(*args)
    except (ValueError, TypeError):
        pass


@FUZZ_SETTINGS
@given(value=anything)
def test_b64url_decode_fuzz(core, value):
    fails_cleanly(core.b64url_decode, value)


@FUZZ_SETTINGS
@given(value=anything | b64_text, name=st.text(max_size=10) | wrong_types, keys=st.just(KEYS) | wrong_types)
def test_open_id_cookie_fuzz(core, value, name, keys):
    fails_cleanly(core.open_id_cookie, value, keys, name)
    assert core.open_id_cookie(value, KEYS, "s") is None


@FUZZ_SETTINGS
@given(
    header=anything | cookie_text, name=st.text(max_size=5) | wrong_types, limit=st.integers() | wrong_types
)
def test_parse_cookie_fuzz(core, header, name, limit):
    fails_cleanly(core.parse_cookie, header, name, limit)


@FUZZ_SETTINGS
@given(blob=anything | json_text(max_leaves=40))
def test_decode_data_fuzz(core, blob):
    fails_cleanly(core.decode_data, blob)


@FUZZ_SETTINGS
@given(blob=anything, flags=st.integers(0, 255), tail=st.binary(max_size=300))
def test_unpack_record_fuzz(core, blob, flags, tail):
    fails_cleanly(core.unpack_record, blob)
    fails_cleanly(core.unpack_record, struct.pack(">BBIdd", 1, flags, 0, 0, 0) + tail)


def test_deep_json_fails_cleanly(core):
    for blob in (b"[" * 100_000, b'{"a":' * 5000, b'{"~t":[' * 2000 + b"1" + b"]}" * 2000):
        fails_cleanly(core.decode_data, blob)


# ---------------------------------------------------------------- (c) the standard library agrees


@SETTINGS
@given(key=st.binary(max_size=200), msg=st.binary(max_size=300))
def test_hmac_sha256_is_the_stdlib_hmac(core, key, msg):
    assert core.hmac_sha256(key, msg) == hmac.new(key, msg, "sha256").digest()


@SETTINGS
@given(data=st.binary(max_size=300))
def test_b64url_matches_the_stdlib(core, data):
    text = core.b64url_encode(data)
    assert text == base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    assert core.b64url_decode(text) == data


@SETTINGS
@given(text=b64_text)
def test_b64url_decode_accepts_exactly_canonical_text(core, text):
    try:
        data = core.b64url_decode(text)
    except ValueError:
        canonical = False
    else:
        canonical = True
        assert core.b64url_encode(data) == text
    padded = text + "=" * (-len(text) % 4)
    try:
        stdlib = base64.urlsafe_b64decode(padded)
    except ValueError:
        assert not canonical
    else:
        assert canonical == (base64.urlsafe_b64encode(stdlib).rstrip(b"=").decode() == text)
