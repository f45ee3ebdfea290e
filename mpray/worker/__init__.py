"""Worker processes: the task loop (``loop``) and, once a worker becomes an actor, its
call server (``actor``: sync, threaded or async)."""
