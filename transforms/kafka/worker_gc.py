"""The garbage-collector setting of a worker process that reads Kafka.

CPython runs a young-generation collection after every 700 net new container
objects. A reader makes several per record (the client's record objects, the
``KafkaRecord``, a header list), and a poll's worth of them is alive at once,
so each of those frequent passes promotes thousands of live records into the
older generations; the full collections this triggers then walk the whole
heap of a Beam worker (Beam, protobuf and gRPC objects by the hundred
thousand). In a 1M-record read that was about a quarter of the CPU time.

A higher young-generation threshold lets most records die by reference count
before any pass sees them. Nothing is leaked: cyclic garbage is still
collected, only later (at most ``threshold`` objects later). A process whose
threshold was already changed from CPython's default is left as it is: its
owner chose.
"""

from __future__ import annotations

import gc
import logging

from core.settings import WORKER_GC_THRESHOLD

__all__ = ["WORKER_GC_THRESHOLD", "tune_worker_gc"]

_LOG = logging.getLogger(__name__)

CPYTHON_DEFAULT_THRESHOLD = 700


def tune_worker_gc(threshold: int | None) -> bool:
    """Raise this process's young-generation threshold to ``threshold``; True if it changed.

    Leaves the collector alone when ``threshold`` is None, when collection is
    disabled, or when someone already moved the threshold from CPython's
    default. Safe to call from every DoFn ``setup``: the first call decides.
    """
    if threshold is None or not gc.isenabled():
        return False
    young, middle, old = gc.get_threshold()
    if young != CPYTHON_DEFAULT_THRESHOLD or threshold <= young:
        return False
    gc.set_threshold(threshold, middle, old)
    _LOG.info("worker GC: young-generation threshold %d -> %d", young, threshold)
    return True
