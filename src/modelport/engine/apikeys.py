"""API key format, hashing, and the in-memory table that authenticates keys without SQL.

A key reads ``mp-<key_id>_<secret>``: ``key_id`` is 12 lowercase hex characters, public and
unique (``api_keys.key_id``), so a key can be found without knowing its secret; the secret is
``secrets.token_urlsafe(32)``. The database keeps only the SHA-256 of the whole key string;
a stored hash is compared with ``hmac.compare_digest``. An operator-chosen admin key
(``MODELPORT_ADMIN_KEY``) may have any shape: its ``key_id`` is then derived from its hash
(``h`` + 11 hex characters, which no generated id can equal).

``KeyTable`` is what the auth middleware consults on every request: key id → ``CachedKey``
(the principal, expiry, revocation), plus the exact raw keys already verified, so a known
key costs two dict lookups and one float comparison — no hashing and no SQL. Revocation
flips ``revoked`` on the shared ``CachedKey`` object, so it holds from the very next call;
expiry is compared with the clock on every call. ``last_used_at`` is kept in memory and
queued for the database at most once per ``touch_interval_s`` per key; the account service
writes the queue in the background.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from modelport.engine.principal import Principal
from modelport.errors import Unauthenticated

KEY_PREFIX = "mp-"
_KEY_PATTERN = re.compile(r"mp-([0-9a-f]{12})_[A-Za-z0-9_-]{16,}")
# Unknown key ids are remembered this long, so a stream of bad keys does not query the
# database on every request; keys created through this server are never in that list.
_UNKNOWN_TTL_S = 10.0
_UNKNOWN_MAX = 10_000
# What a 401 tells the client about how to authenticate (RFC 6750).
CHALLENGE_HEADERS = {"WWW-Authenticate": "Bearer"}


def generate_key() -> tuple[str, str]:
    """A new key: ``(key_id, whole key string)``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(raw: str) -> str:
    """The public id of a presented key (derived from the hash for free-form keys)."""
    match = _KEY_PATTERN.fullmatch(raw)
    if match is not None:
        return match.group(1)
    return "h" + hash_key(raw)[:11]


def hash_key(raw: str) -> str:
    """The SHA-256 hex digest stored for a key (of the whole key string)."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def prefix_of(key_id: str) -> str:
    """How a key starts (``mp-<key_id>``), shown in listings to recognise it."""
    return f"{KEY_PREFIX}{key_id}"


def epoch(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def from_epoch(when: float | None) -> datetime | None:
    return None if when is None else datetime.fromtimestamp(when, UTC)


@dataclass(eq=False)
class CachedKey:
    """What authentication needs to know about one stored key."""

    pk: int
    key_id: str
    digest: str
    principal: Principal
    expires_at: float | None = None  # epoch seconds
    revoked: bool = False
    last_used: float | None = None  # epoch seconds, as seen by this process
    queued_at: float = 0.0  # when ``last_used`` was last queued for the database


class KeyTable:
    """Key id → ``CachedKey``, and verified raw keys → the same objects (see module doc)."""

    def __init__(self, touch_interval_s: float = 30.0) -> None:
        self.touch_interval_s = touch_interval_s
        self._by_id: dict[str, CachedKey] = {}
        self._by_pk: dict[int, CachedKey] = {}
        self._verified: dict[str, CachedKey] = {}
        self._unknown: dict[str, float] = {}
        self._dirty: dict[int, float] = {}

    def put(self, entry: CachedKey) -> None:
        """Add or replace a key (after a load, create or change)."""
        old = self._by_id.get(entry.key_id)
        if old is not None:
            entry.last_used = entry.last_used or old.last_used
            entry.queued_at = old.queued_at
            self._forget_verified(old)
        self._by_id[entry.key_id] = entry
        self._by_pk[entry.pk] = entry
        self._unknown.pop(entry.key_id, None)

    def _forget_verified(self, entry: CachedKey) -> None:
        # list() copies in one step, so a request thread adding a key cannot break the loop.
        for raw, known in list(self._verified.items()):
            if known is entry:
                self._verified.pop(raw, None)

    def by_pk(self, pk: int) -> CachedKey | None:
        return self._by_pk.get(pk)

    def knows(self, raw: str) -> bool:
        """Whether ``authenticate`` can answer for ``raw`` without the database."""
        if raw in self._verified:
            return True
        key_id = key_id_of(raw)
        if key_id in self._by_id:
            return True
        seen = self._unknown.get(key_id)
        return seen is not None and time.monotonic() - seen < _UNKNOWN_TTL_S

    def find(self, raw: str) -> CachedKey | bool | None:
        """The verified entry for ``raw``; ``False`` if known to be invalid; ``None`` if the
        table cannot tell (the caller looks in the database and calls ``put``/``missing``)."""
        entry = self._verified.get(raw)
        if entry is not None:
            return entry
        key_id = key_id_of(raw)
        entry = self._by_id.get(key_id)
        if entry is None:
            seen = self._unknown.get(key_id)
            return False if seen is not None and time.monotonic() - seen < _UNKNOWN_TTL_S else None
        if not hmac.compare_digest(entry.digest, hash_key(raw)):
            return False
        self._verified[raw] = entry
        return entry

    def missing(self, raw: str) -> None:
        """Remember that the database has no key with ``raw``'s id (for a short while)."""
        if len(self._unknown) >= _UNKNOWN_MAX:
            self._unknown.clear()
        self._unknown[key_id_of(raw)] = time.monotonic()

    def admit(self, entry: CachedKey) -> Principal:
        """The principal of a verified key, if it is neither revoked nor expired."""
        if entry.revoked:
            raise Unauthenticated("API key revoked", headers=dict(CHALLENGE_HEADERS))
        now = time.time()
        if entry.expires_at is not None and now >= entry.expires_at:
            raise Unauthenticated("API key expired", headers=dict(CHALLENGE_HEADERS))
        entry.last_used = now
        if now - entry.queued_at >= self.touch_interval_s:
            entry.queued_at = now
            self._dirty[entry.pk] = now
        return entry.principal

    def revoke(self, key_id: str) -> None:
        entry = self._by_id.get(key_id)
        if entry is not None:
            entry.revoked = True

    def last_used(self, pk: int) -> float | None:
        entry = self._by_pk.get(pk)
        return None if entry is None else entry.last_used

    def drain(self) -> dict[int, float]:
        """Take the queued ``last_used`` times (key pk → epoch seconds) for writing."""
        dirty, self._dirty = self._dirty, {}
        return dirty
