"""Cheap random identifiers.

``uuid.uuid4()`` reads ``os.urandom`` on every call, which costs several microseconds on
small machines; run and state ids are created on the hot path, so they come from a
process-local PRNG seeded from ``os.urandom`` instead. They are ids, not secrets.
"""

from __future__ import annotations

import os
import random
import uuid

__all__ = ["new_id"]

_rng = random.Random(os.urandom(32))
_getrandbits = _rng.getrandbits
_VERSION_MASK = ~((0xF << 76) | (0x3 << 62))
_VERSION_BITS = (4 << 76) | (0x2 << 62)
_new_uuid = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def new_id() -> uuid.UUID:
    """Return a random RFC 4122 version-4 UUID."""
    value = _new_uuid(uuid.UUID)
    _set(value, "int", (_getrandbits(128) & _VERSION_MASK) | _VERSION_BITS)
    _set(value, "is_safe", _UNKNOWN)
    return value


def _reseed_after_fork() -> None:
    _rng.seed(os.urandom(32))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)
