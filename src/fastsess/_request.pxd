# Declarations for fastsess._request, the compiled build of _request_py.py:
# Middleware and Response become extension types whose attributes are C struct fields,
# and what the request cycle calls internally is called as C, not looked up by name.

from fastsess._session cimport SessionService, _SessionCore, _State, _sess_of, request_session

cdef class CookieSpec:
    cdef public SessionService service
    cdef public object name, domain, path, secure, samesite, max_age, expires, insecure_request
    cdef public bint use_cookies, httponly, partitioned, insecure_warned

cpdef object cookie_header(CookieSpec spec, _SessionCore session, object environ)

cdef class Middleware:
    cdef public object app, service, environ_key, _bound_get_session, _webtest_varname
    cdef public CookieSpec cookie_spec

cdef class Response:
    cdef Middleware mw
    cdef _SessionCore session
    cdef object environ, server_start_response, status, headers, exc_info, server_write
    cdef bint sent
    cpdef send_headers(self)
    cpdef finish(self, result)

cpdef bint no_app_code_left(object result, dict environ) except -1
cpdef cache_headers(list headers, bint setting_cookie, object mw)
