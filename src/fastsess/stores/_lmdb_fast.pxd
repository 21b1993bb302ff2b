# Declarations for fastsess.stores._lmdb_fast, the compiled build of _lmdb_fast_py.py:
# LmdbFastPath becomes an extension type whose fields are C struct fields.
# LmdbStore (lmdb.py) subclasses it in Python, adding everything else.

from fastsess.stores._record cimport _new_record, _record_field

cdef class SharedFields:
    cdef public object gate, thread, env, meta, data, reports
    cdef public long pid
    cdef public Py_ssize_t ops, active
    cdef public bint draining
    cdef public object drained

cdef class LmdbFastPath:
    cdef public object clock
    cdef public SharedFields _shared_env

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

cdef inline uint64_t _le(const uint8_t *p, int n):
    """An unsigned little-endian integer of n bytes."""
    cdef uint64_t value = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        value = (value << 8) | p[i]
    return value

cdef inline double _le_double(const uint8_t *p):
    cdef uint64_t bits = _le(p, 8)
    cdef double value
    memcpy(&value, &bits, 8)
    return value

cdef object StoredRecord  # base.StoredRecord, imported by _lmdb_fast_py.py

# Whether an entry is in the older split format (the header alone, the blob in the
# data sub-database): its first byte is 1 (_FORMAT_SPLIT).
cdef inline bint _is_split_entry(object raw):
    return type(raw) is bytes and PyBytes_GET_SIZE(raw) > 0 and PyBytes_AS_STRING(raw)[0] == 1

# _plain_record of _lmdb_fast_py.py, reading the header (_META: "<BBxxIQdd", 32 bytes) as C.
cdef inline object _plain_record(object raw):
    if type(raw) is not bytes or PyBytes_GET_SIZE(raw) <= 32:
        return None
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(raw)
    cdef uint64_t size = _le(p + 4, 4)
    if p[0] != 2 or p[1] != 0 or <uint64_t>PyBytes_GET_SIZE(raw) != 32 + size:  # format 2, kind record
        return None
    return _new_record(StoredRecord, (
        PyBytes_FromStringAndSize(<const char *>p + 32, <Py_ssize_t>size), _le(p + 8, 8),
        _le_double(p + 16), _le_double(p + 24),
    ))

# This process's id without a system call on every store operation (glibc no longer
# caches getpid). It is kept in a private page marked MADV_WIPEONFORK: the kernel
# hands a forked child that page zeroed, whichever way the fork was made (os.fork,
# a C-level fork that runs no Python hooks), so a zero means "ask getpid() again".
# Where the kernel lacks that advice (before Linux 4.14, other systems) nothing is
# cached. Only called with the GIL held, which guards the two statics.
cdef extern from *:
    """
    #include <unistd.h>
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    static volatile long *fastsess_pid_page = NULL;
    static int fastsess_pid_page_tried = 0;

    static long fastsess_getpid_slow(void) {
        long pid = (long)getpid();
    #if defined(__linux__) && defined(MADV_WIPEONFORK)
        if (!fastsess_pid_page_tried) {
            long size = sysconf(_SC_PAGESIZE);
            void *page;
            fastsess_pid_page_tried = 1;
            page = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (page != MAP_FAILED) {
                if (madvise(page, (size_t)size, MADV_WIPEONFORK) == 0)
                    fastsess_pid_page = (volatile long *)page;
                else
                    munmap(page, (size_t)size);
            }
        }
    #endif
        if (fastsess_pid_page != NULL)
            *fastsess_pid_page = pid;
        return pid;
    }

    static CYTHON_INLINE long fastsess_getpid(void) {
        long pid = fastsess_pid_page != NULL ? *fastsess_pid_page : 0;
        return pid != 0 ? pid : fastsess_getpid_slow();
    }

    static int fastsess_pid_is_cached(void) {
        return fastsess_pid_page != NULL;
    }
    """
    long fastsess_getpid()
    bint fastsess_pid_is_cached()

cdef inline long _current_pid():
    return fastsess_getpid()

cdef inline bint _pid_cached():
    return fastsess_pid_is_cached()
