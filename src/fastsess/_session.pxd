# Declarations for fastsess._session, the compiled build of _session_py.py: the
# session's core, the loaded state and the per-middleware service are extension
# types, so the session code reads and writes their attributes as C struct fields,
# and calls its own internal steps (cdef) and the service's (cpdef) as C.
# Session itself is a Python subclass of _SessionCore, so that its module is
# fastsess.session, where users import it from.

from fastsess.stores._record cimport _is_record_tuple, _record_field

# The key a cookie value is remembered under in SessionService._opened_sealed: its
# last 8 characters (of its tag) as an integer, for an ASCII str of 8 or more; else
# the value itself. The entry holds the whole value, which a lookup compares.
cdef extern from *:
    """
    static CYTHON_INLINE PyObject *fastsess_memo_key(PyObject *value) {
        if (PyUnicode_CheckExact(value) && PyUnicode_IS_COMPACT_ASCII(value) && PyUnicode_GET_LENGTH(value) >= 8) {
            unsigned long long tail;
            memcpy(&tail, (const char *)PyUnicode_DATA(value) + PyUnicode_GET_LENGTH(value) - 8, 8);
            return PyLong_FromUnsignedLongLong(tail);
        }
        Py_INCREF(value);
        return value;
    }
    """
    object _memo_key "fastsess_memo_key"(object value)

cdef class SessionService:
    cdef dict __dict__
    cdef object __weakref__  # stores.base.fork_safe_locks keeps it weakly
    cdef public object config, store, keys, events, clock, decode, decode_shared, prime_decoded, _decoded, touch_interval, cookie_name
    cdef public bint cookie_only, _cookie_too_large_warned, persistent_cookie, use_cookies, beaker_compat
    cdef public bint records_encrypted
    cdef public dict _verified, _opened_sealed
    cdef public double _timeout, _absolute_timeout
    cdef public Py_ssize_t _writes
    cpdef expires_at(self, created, now)
    cpdef seal_record(self, key, blob)
    cpdef open_record(self, key, stored)
    cpdef str seal_cookie(self, issued_at, last_access, expires_at, payload)
    cpdef _remember_sealed(self, str value, tuple opened)
    cpdef open_sealed_record(self, value)
    cpdef str sign(self, session_id)
    cpdef wrote(self)

cdef class _State:
    cdef public object id, version, loaded_data, last_accessed, domain, path, loaded_domain, loaded_path
    cdef public object csrf_gen, loaded_csrf_gen, rotate_from, sealed, merge_from, flash, loaded_flash, keyed
    cdef public object created, last_access, doomed, cookie_action
    cdef public dict data
    cdef public object shared
    cdef public bint had_cookie, dropped, is_new, read_only, anonymous, save_requested, modified
    cdef public bint flash_modified, mutable_out, dead, deleted, invalidated, retag, tombstoned
    cpdef loaded(self, session_id, data_bytes, created, last_access, domain, path, csrf_gen)
    cpdef bint forgets_cookie(self)
    cpdef bytes store_key(self)
    cpdef owned(self, key, value)
    cpdef own_all(self)

cdef class _SessionCore:
    # _sess, the loaded state, is no field: it lives in __dict__, where TurboGears resets it
    cdef dict __dict__
    cdef object __weakref__
    cdef public SessionService _service
    cdef public object _cookie_header, _requested_id
    cdef public bint _detached, _read_only, _dirty, _suppressed, _was_loaded
    cdef _State _state(self)
    cdef _State _fresh(self, now, data=*, flash=*)
    cdef _State _load(self)
    cdef _State _open_state(self)
    cdef _State _load_sealed(self, SessionService service, now)
    cdef _State _load_record(self, SessionService service, session_id, key, now)
    cdef _State _corrupt_record(self, SessionService service, session_id, now)
    cdef _State _store_failed(self, SessionService service, exc, now, session_id)
    cdef _State _writable(self)
    cdef _forget(self, _State s)
    cdef _persist(self)
    cdef _persist_sealed(self, _State s, SessionService service)
    cdef _to_write(self, _State s, SessionService service)
    cdef bytes _pack(self, _State s, data_bytes, flash, now)
    cdef _write(self, _State s, SessionService service, now, data_bytes)
    cdef _maybe_touch(self, _State s, SessionService service)
    cdef _was_rotated(self, SessionService service, _State s)

# _sess lives in the instance __dict__ (see _SessionCore). Read and written here as C,
# through the dict slot at the type's tp_dictoffset: a generic attribute access costs
# several times as much, as it first searches the class hierarchy for a descriptor.
cdef extern from *:
    """
    static CYTHON_INLINE PyObject *fastsess_instance_dict(PyObject *o) {
        Py_ssize_t offset = Py_TYPE(o)->tp_dictoffset;
        PyObject *d = offset > 0 ? *(PyObject **)((char *)o + offset) : NULL;
        return d != NULL && PyDict_CheckExact(d) ? d : NULL;
    }
    /* o.__dict__[name], borrowed; NULL when absent (name is an exact str: its lookup cannot fail) */
    static CYTHON_INLINE PyObject *fastsess_instance_item(PyObject *o, PyObject *name) {
        PyObject *d = fastsess_instance_dict(o);
        return d != NULL ? PyDict_GetItemWithError(d, name) : NULL;
    }
    /* cls(), without calling __init__: the object as cls's tp_new makes it */
    static CYTHON_INLINE PyObject *fastsess_new_instance(PyTypeObject *cls) {
        PyObject *none = PyTuple_New(0), *o;
        if (none == NULL) return NULL;
        o = cls->tp_new(cls, none, NULL);
        Py_DECREF(none);
        return o;
    }
    /* o.__dict__[name] = value; setattr when o has no dict (one torn down by the collector) */
    static CYTHON_INLINE int fastsess_instance_set(PyObject *o, PyObject *name, PyObject *value) {
        PyObject *d = fastsess_instance_dict(o);
        return d != NULL ? PyDict_SetItem(d, name, value) : PyObject_SetAttr(o, name, value);
    }
    """
    void *fastsess_instance_item(object o, object name)
    int fastsess_instance_set(object o, object name, object value) except -1
    object fastsess_new_instance(type cls)

cdef inline _sess_of(_SessionCore session):
    cdef void *state = fastsess_instance_item(session, "_sess")
    return None if state == NULL else <object>state

cdef inline int _set_sess(_SessionCore session, state) except -1:
    return fastsess_instance_set(session, "_sess", state)

cdef inline _new_instance(type cls):
    return fastsess_new_instance(cls)

cdef _SessionCore request_session(SessionService service, cookie_header)
