"""Rings and doorbells between processes (``rings``), their memory ordering (``atomics``
picks x86-64's TSO or ``atomics_numba``'s acquire/release atomics), and the shared layout
of the mailbox slots and lease channels they live in (``mailbox``)."""
