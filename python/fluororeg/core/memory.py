"""The memory this process may still allocate, and the check of a large allocation against it.

An array a call would allocate (say refine_poses' float32 copy of its frames) that cannot fit is
a ValueError naming its size and what bounds it, said before the allocation, instead of a
MemoryError from its middle or a machine swapping for hours. The bound is the machine's physical
memory and, when the process runs under an address-space limit (``RLIMIT_AS``, as the fuzz suite's
children and some cluster jobs do), what that limit leaves. Only arrays that are checked count:
the bound is a ceiling, not a forecast of what else the call allocates.
"""

from __future__ import annotations

import os

__all__ = ["allocatable_bytes", "check_allocation"]


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def allocatable_bytes() -> tuple[int, str] | None:
    """(bytes, what bounds them) that this process may still allocate: the smaller of the
    machine's physical memory and what its address-space limit leaves beyond what it maps now;
    None where neither is known."""
    bounds = []
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        bounds.append((page * os.sysconf("SC_PHYS_PAGES"), "the machine's physical memory"))
    except (AttributeError, ValueError, OSError):
        page = 4096
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as f:
                mapped = int(f.read().split()[0]) * page
            bounds.append((max(limit - mapped, 0), "this process's address-space limit (RLIMIT_AS)"))
    except (ImportError, OSError, ValueError):
        pass
    return min(bounds) if bounds else None


def check_allocation(nbytes: int, what: str, advice: str = "") -> None:
    """ValueError when ``nbytes`` (the array ``what``) exceed :func:`allocatable_bytes`;
    ``advice`` ends the message (what to do instead)."""
    bound = allocatable_bytes()
    if bound is not None and nbytes > bound[0]:
        raise ValueError(f"{what} need {_gib(nbytes)}, more than the {_gib(bound[0])} of {bound[1]}"
                         + (f": {advice}" if advice else ""))
