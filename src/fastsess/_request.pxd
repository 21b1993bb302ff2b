# Declarations for fastsess._request, the compiled build of _request_py.py:
# Response becomes an extension type whose attributes are C struct fields.

cdef class Response:
    cdef object mw, environ, session, server_start_response, status, headers, exc_info, server_write
    cdef bint sent
