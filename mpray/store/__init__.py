"""The object store: values as bytes inline or in the shared arena (``serialization``),
and the arena's allocator (``allocator``), kept by the node."""
