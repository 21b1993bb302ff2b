"""What fastsess's compiled modules read as type declarations, for pure Python without Cython installed."""


class cython:  # noqa: N801 - stands in for the module of that name
    compiled = False
    double = float  # types named in locals(); compiled, C types
    Py_ssize_t = int

    @staticmethod
    def locals(**types):
        """Compiled, the types of a function's local variables; here, nothing."""
        return lambda function: function
