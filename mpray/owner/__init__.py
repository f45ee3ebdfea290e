"""The owner: what every submitting process decides about the work it owns.

``machine`` is the pure owner (leases, direct tasks, owned objects) with its actor calls
in ``actors``; ``shell`` is the I/O around it, shared by the driver's client
(``driver_client``) and a worker's (``worker_client``), both built on ``client`` (rings,
refs, the value cache, get/put/wait) and ``waiting`` (how a process waits and pumps).
"""
