"""Rings and doorbells between processes (``rings``), and the shared layout of the
mailbox slots and lease channels they live in (``mailbox``)."""
