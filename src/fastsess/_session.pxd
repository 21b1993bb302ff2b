# Declarations for fastsess._session, the compiled build of _session_py.py: the
# loaded state and the per-middleware service are extension types, so the session
# code reads and writes their attributes as C struct fields.

cdef class SessionService:
    cdef dict __dict__
    cdef object __weakref__  # stores.base.fork_safe_locks keeps it weakly
    cdef public object config, store, keys, events, clock, decode, decode_shared, prime_decoded, _decoded, touch_interval, cookie_name
    cdef public bint cookie_only, _cookie_too_large_warned, persistent_cookie, use_cookies, beaker_compat
    cdef public bint records_encrypted
    cdef public dict _verified, _opened_sealed
    cdef public double _timeout, _absolute_timeout
    cdef public Py_ssize_t _writes

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
