"""Runtime state: the in-memory snapshot every decision reads, and the change feed that keeps
each worker process and node current."""
