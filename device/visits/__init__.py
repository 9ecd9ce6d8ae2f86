"""Visits: everything the unit has recorded, kept so that a power cut loses nothing.

The visit log (SQLite in WAL mode, synchronous=FULL, numbered migrations), the content-addressed
image store (whole-file writes come from `models.runtime.durable`), and the one place that stores a screened photo with its
result. Finished visits become outbox items here; `device.outbox` sends them.
"""
