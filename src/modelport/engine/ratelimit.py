"""Rate limits: requests and tokens per minute, per key, per tenant and per tenant and model.

Each limit is a token bucket that holds at most one minute's allowance and refills
continuously at ``limit / 60`` per second, so a key with ``rpm=600`` may burst 600 requests
and then goes on at 10 per second. For every inference call the API asks ``admit`` first:

- the request buckets (``rpm`` of the key, of its tenant, and of the model for that tenant
  when ``Settings.model_rpm`` names it) must each hold a whole request, which it takes;
- the token buckets (``tpm`` likewise) must not be empty (at least one token left).

How many tokens a call uses is only known after it ran, so tokens are taken afterwards
(``charge``, fed from usage events). A bucket may go into debt: a call that used more than
was left blocks the next ones until the refill has paid the debt back, which is what makes
``tpm`` hold over time even though no call can be sized in advance.

The refusal carries ``Retry-After`` (whole seconds until every exhausted bucket admits one
more call, rounded up) and OpenAI's ``x-ratelimit-*`` headers; an admitted call gets the same
headers. Where several buckets apply, the headers describe the tightest one (the least
remaining). Reset times are how long until that bucket is full again, written the way
OpenAI writes them (Go durations: ``"20ms"``, ``"1s"``, ``"6m0s"``).

The buckets live in memory in the API process: every inference call goes through that one
process (workers only compute), so the limits hold for every worker behind it. Each call
is O(1) (a few dict lookups); one lock makes calls from threads safe and costs next to
nothing on the single event loop.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from modelport.engine.principal import Principal, current_principal
from modelport.engine.usage import UsageEvent
from modelport.errors import RateLimited
from modelport.settings import Settings

Clock = Callable[[], float]
# Whose bucket: ("key", key id), ("tenant", tenant id) or ("model", tenant id, model).
BucketKey = tuple[object, ...]


class Limits(Protocol):
    """Requests and tokens per minute (None: no limit), e.g. ``accounts.TenantLimits``."""

    @property
    def rpm(self) -> int | None: ...

    @property
    def tpm(self) -> int | None: ...


# tenant id -> its limits (None: unknown tenant, no limit). Called once per admitted call, so
# it must answer from memory: ``AccountService.tenant_limits`` reads its in-memory cache.
TenantLimitsLookup = Callable[[int], Limits | None]

_MINUTE = 60.0


def no_tenant_limits(_tenant_id: int) -> Limits | None:
    """The tenant limits in force when no account service supplies any."""
    return None


def format_reset(seconds: float) -> str:
    """A duration the way OpenAI's ``x-ratelimit-reset-*`` headers write it (Go's format).

    Under a second: whole milliseconds (``"20ms"``); else hours, minutes and seconds with
    up to millisecond precision (``"1s"``, ``"1.5s"``, ``"6m0s"``, ``"1h0m0s"``). Rounded up,
    so waiting that long is always enough.
    """
    millis = math.ceil(round(seconds * 1000, 6)) if seconds > 0 else 0
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac = divmod(rest, 1000)
    text = f"{secs}.{frac:03d}".rstrip("0") if frac else str(secs)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"


def retry_after(seconds: float) -> int:
    """``Retry-After`` in whole seconds: rounded up, at least 1."""
    return max(1, math.ceil(round(seconds, 6)))


class _Bucket:
    """One token bucket: ``capacity`` per minute, refilled continuously."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, capacity: int, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / _MINUTE
        self.level = float(capacity)
        self.stamp = now

    def refresh(self, capacity: int, now: float) -> None:
        """Refill up to ``now`` and follow a changed limit.

        What was used in the last minute stays used: raising a limit from 10 to 20 after 5
        calls leaves 15, lowering it to 4 leaves none (but never adds to a debt).
        """
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now
        if capacity != self.capacity:
            used = self.capacity - self.level
            self.level = max(min(self.level, 0.0), capacity - used)
            self.capacity = float(capacity)
            self.rate = capacity / _MINUTE

    def wait_s(self) -> float:
        """Seconds until the bucket holds one whole unit again (0 when it does now)."""
        return max(0.0, (1.0 - self.level) / self.rate)

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.capacity - self.level) / self.rate)

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.level))


def _headers(kind: str, bucket: _Bucket) -> dict[str, str]:
    return {
        f"x-ratelimit-limit-{kind}": str(int(bucket.capacity)),
        f"x-ratelimit-remaining-{kind}": str(bucket.remaining),
        f"x-ratelimit-reset-{kind}": format_reset(bucket.reset_s()),
    }


def _report(
    requests: list[tuple[BucketKey, _Bucket]], tokens: list[tuple[BucketKey, _Bucket]]
) -> dict[str, str]:
    """The headers of the tightest request bucket and the tightest token bucket."""
    headers: dict[str, str] = {}
    for kind, group in (("requests", requests), ("tokens", tokens)):
        if group:
            tightest = min(group, key=lambda item: (item[1].level, item[1].capacity))[1]
            headers.update(_headers(kind, tightest))
    return headers


def _label(principal: Principal, key: BucketKey) -> str:
    if key[0] == "key":
        return f"key '{principal.key_name}'"
    if key[0] == "tenant":
        return f"tenant '{principal.tenant}'"
    return f"model '{key[2]}' for tenant '{principal.tenant}'"


def _refusal(
    principal: Principal, blocked: list[tuple[BucketKey, str, _Bucket]], headers: dict[str, str]
) -> RateLimited:
    """The 429 for a call some buckets refuse: the message names the one to wait longest."""
    key, unit, bucket = max(blocked, key=lambda item: item[2].wait_s())
    wait = bucket.wait_s()
    short = "RPM" if unit == "requests" else "TPM"
    message = (
        f"Rate limit reached for {unit} per min ({short}) of {_label(principal, key)}: "
        f"limit {int(bucket.capacity)}, remaining {bucket.remaining}. "
        f"Please try again in {format_reset(wait)}."
    )
    return RateLimited(message, headers={**headers, "retry-after": str(retry_after(wait))})


class RateLimiter:
    """Admit or refuse inference calls against their rate limits (see the module docstring).

    ``tenant_limits`` gives a tenant's ``rpm``/``tpm``; ``model_rpm``/``model_tpm`` name
    models whose calls are limited per tenant as well (each tenant gets that allowance for
    that model). ``clock`` is injectable for tests (monotonic seconds).
    """

    def __init__(
        self,
        tenant_limits: TenantLimitsLookup = no_tenant_limits,
        *,
        model_rpm: Mapping[str, int] | None = None,
        model_tpm: Mapping[str, int] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.tenant_limits = tenant_limits
        self._model_rpm = dict(model_rpm or {})
        self._model_tpm = dict(model_tpm or {})
        self._clock = clock
        self._requests: dict[BucketKey, _Bucket] = {}
        self._tokens: dict[BucketKey, _Bucket] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: Settings, tenant_limits: TenantLimitsLookup = no_tenant_limits
    ) -> RateLimiter:
        """The limiter configured by ``settings`` (per-model limits)."""
        return cls(tenant_limits, model_rpm=settings.model_rpm, model_tpm=settings.model_tpm)

    @property
    def limits_models(self) -> bool:
        """Whether any per-model limit is set (the API then needs the model of each call)."""
        return bool(self._model_rpm or self._model_tpm)

    def _limits(
        self, principal: Principal, model: str | None, tenant: Limits | None
    ) -> list[tuple[BucketKey, int | None, int | None]]:
        tenant_rpm, tenant_tpm = (None, None) if tenant is None else (tenant.rpm, tenant.tpm)
        found: list[tuple[BucketKey, int | None, int | None]] = [
            (("key", principal.key_id), principal.rpm, principal.tpm),
            (("tenant", principal.tenant_id), tenant_rpm, tenant_tpm),
        ]
        if model is not None and self.limits_models:
            found.append(
                (
                    ("model", principal.tenant_id, model),
                    self._model_rpm.get(model),
                    self._model_tpm.get(model),
                )
            )
        return found

    @staticmethod
    def _bucket(
        buckets: dict[BucketKey, _Bucket], key: BucketKey, limit: int, now: float
    ) -> _Bucket:
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = _Bucket(limit, now)
        else:
            bucket.refresh(limit, now)
        return bucket

    def admit(
        self, principal: Principal, model: str | None = None, now: float | None = None
    ) -> dict[str, str]:
        """Take one request from every bucket of this call, or raise ``RateLimited``.

        Returns the ``x-ratelimit-*`` headers for the response (empty when no limit applies).
        Nothing is taken when the call is refused.
        """
        tenant = self.tenant_limits(principal.tenant_id)
        if (
            principal.rpm is None
            and principal.tpm is None
            and (tenant is None or (tenant.rpm is None and tenant.tpm is None))
            and (model is None or not (self._model_rpm or self._model_tpm))
        ):
            return {}  # no limit applies to this call: no bucket, no headers
        now = self._clock() if now is None else now
        limits = self._limits(principal, model, tenant)
        refusal: RateLimited | None = None
        with self._lock:
            requests: list[tuple[BucketKey, _Bucket]] = []
            tokens: list[tuple[BucketKey, _Bucket]] = []
            for key, rpm, tpm in limits:
                if rpm is not None:
                    requests.append((key, self._bucket(self._requests, key, rpm, now)))
                if tpm is not None:
                    tokens.append((key, self._bucket(self._tokens, key, tpm, now)))
            blocked = [
                (key, unit, bucket)
                for unit, group in (("requests", requests), ("tokens", tokens))
                for key, bucket in group
                if bucket.level < 1.0
            ]
            if not blocked:
                for _, bucket in requests:
                    bucket.level -= 1.0
            headers = _report(requests, tokens)
            if blocked:
                refusal = _refusal(principal, blocked, headers)
        if refusal is not None:
            raise refusal
        return headers

    def charge(
        self,
        principal: Principal,
        tokens: int,
        model: str | None = None,
        now: float | None = None,
    ) -> None:
        """Take ``tokens`` a call used from its token buckets (they may go into debt)."""
        self.charge_ids(principal.tenant_id, principal.key_id, tokens, model, now)

    def charge_ids(
        self,
        tenant_id: int,
        key_id: int | None,
        tokens: int,
        model: str | None = None,
        now: float | None = None,
    ) -> None:
        """``charge`` by ids (usage events carry ids, not principals).

        Only buckets that ``admit`` created are charged: a limit not in force when the call
        was admitted does not bill it afterwards.
        """
        if tokens <= 0 or not self._tokens:
            return
        now = self._clock() if now is None else now
        keys: list[BucketKey] = [("tenant", tenant_id)]
        if key_id is not None:
            keys.append(("key", key_id))
        if model is not None:
            keys.append(("model", tenant_id, model))
        with self._lock:
            for key in keys:
                bucket = self._tokens.get(key)
                if bucket is not None:
                    bucket.refresh(int(bucket.capacity), now)
                    bucket.level -= tokens

    def on_usage(self, event: UsageEvent) -> None:
        """``UsageHub`` subscriber: charge the tokens of an answered call to its caller.

        The caller is the request's principal (events are emitted inside the request's
        context); events that carry ``tenant_id``/``key_id`` themselves are charged by those
        when no principal is in sight.
        """
        if event.total_tokens <= 0:
            return
        principal = current_principal()
        if principal is not None:
            self.charge(principal, event.total_tokens, event.model)
            return
        tenant_id = getattr(event, "tenant_id", None)
        key_id = getattr(event, "key_id", None)
        if isinstance(tenant_id, int):
            key = key_id if isinstance(key_id, int) else None
            self.charge_ids(tenant_id, key, event.total_tokens, event.model)
