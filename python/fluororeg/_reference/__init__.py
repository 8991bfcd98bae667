"""Slow, obviously correct NumPy/SciPy references of the C++ kernels.

They are used by the tests (to check the kernels) and by the benchmarks (for the speed-up
figures). They are not meant for production use.
"""
