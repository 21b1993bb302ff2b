# A StoredRecord built as C, for the compiled stores (_memory.pxd, _lmdb_fast.pxd cimport it).
# Declarations only: there is no fastsess.stores._record module.

cdef extern from *:
    """
    /* tuple.__new__(cls, fields) for a tuple subclass, called as C */
    static CYTHON_INLINE PyObject *fastsess_new_record(PyObject *cls, PyObject *fields) {
        PyObject *args = PyTuple_Pack(1, fields), *record;
        if (args == NULL) return NULL;
        record = PyTuple_Type.tp_new((PyTypeObject *)cls, args, NULL);
        Py_DECREF(args);
        return record;
    }
    """
    object _new_record "fastsess_new_record"(object cls, tuple fields)
