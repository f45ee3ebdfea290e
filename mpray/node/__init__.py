"""The node: one per host (or MPI rank), forked from the driver at ``init()``.

``loop`` is its I/O loop (rings, doorbells, SIGCHLD, forking workers); the decisions
are the ``scheduler``'s, a pure state machine composed of the object directory
(``objects``), the actor table (``actor_table``, ``actor_names``), the worker table
(``worker_table``) and the cluster view (``cluster``), with its task record in
``task`` and the checks the pure tests run after every event in ``invariants``.
"""
