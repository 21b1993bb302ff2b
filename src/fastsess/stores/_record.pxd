# A StoredRecord built and read as C, for the compiled stores (_memory.pxd, _lmdb_fast.pxd cimport it).
# Declarations only: there is no fastsess.stores._record module.

cdef extern from *:
    """
    /* tuple.__new__(cls, fields) for a tuple subclass (with no fields of its own,
       as a NamedTuple), called as C: one allocation, the fields' references copied. */
    static CYTHON_INLINE PyObject *fastsess_new_record(PyObject *cls, PyObject *fields) {
        PyTypeObject *type = (PyTypeObject *)cls;
        Py_ssize_t i, n = PyTuple_GET_SIZE(fields);
        PyObject *record;
        if (type->tp_basicsize != PyTuple_Type.tp_basicsize || type->tp_dictoffset != 0) {
            PyObject *args = PyTuple_Pack(1, fields);  /* a subclass with fields of its own */
            if (args == NULL) return NULL;
            record = PyTuple_Type.tp_new(type, args, NULL);
            Py_DECREF(args);
            return record;
        }
        record = type->tp_alloc(type, n);
        if (record == NULL) return NULL;
        for (i = 0; i < n; i++) {
            PyObject *field = PyTuple_GET_ITEM(fields, i);
            Py_INCREF(field);
            PyTuple_SET_ITEM(record, i, field);
        }
        return record;
    }
    """
    object _new_record "fastsess_new_record"(object cls, tuple fields)

from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE

# A field of a StoredRecord (a tuple subclass, as load() returns it), read as C:
# indexing a NamedTuple subclass from Python or Cython goes through its type's
# sq_item slot, which looks __getitem__ up by name, several hundred instructions.
cdef inline object _record_field(object record, Py_ssize_t i):
    return <object>PyTuple_GET_ITEM(record, i)

# Whether _record_field may read record: a tuple of a StoredRecord's four fields.
cdef inline bint _is_record_tuple(object record):
    return PyTuple_Check(record) and PyTuple_GET_SIZE(record) == 4
