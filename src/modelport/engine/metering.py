"""Exact metering: one usage record per answered request, none lost, none counted twice.

The mechanism, end to end:

1. The engine emits one ``UsageEvent`` per answered request (``engine.usage``). The meter,
   subscribed to the ``UsageHub``, *parks* it in the request's context; the metering
   middleware (``api.metering``) journals it right before the last bytes of a 2xx response
   go to the transport. A failed request (non-2xx) is never journaled, so never billed.
   A stream is 200 from its first byte: a snapshot of its usage is journaled before the
   response starts and before every chunk, and its final record when it ends.
2. Journaling (``engine.usage_journal``) copies one JSON line into a memory-mapped segment
   (shared with the page cache, so it outlives a killed process), with the
   record's price and cost already fixed: the sheet in force at the request's time.
3. A writer thread group-commits the journal's final records to ``usage_records`` every
   ``metering_flush_ms`` (one transaction, ``ON CONFLICT (request_id) DO NOTHING``;
   ``engine.usage_store``) and then retires the journal segments it committed (renamed out
   of the replay's sight and kept for reuse). The default is a commit a second: on a server
   pinned to one core, ten commits a second cost 3 to 7 % more CPU per request than one
   (two runs). The journal keeps the records safe meanwhile, and usage reports and invoices
   commit first.
4. At start, before serving, every segment left by a crash is replayed (last line per
   request id wins) and the records the database lacks are inserted. Replaying twice
   inserts nothing twice: ``request_id`` is unique.

So a request whose response left the process has its line in the page cache (which
outlives a SIGKILL) and gets exactly one row; a request that failed, or never reached its
last byte, has none. The one gap is the instant between the journal write and the
transport write: a kill exactly there bills a response the client never got. Power loss is
out of scope unless ``metering_fsync`` (see ``engine.usage_journal``).

The meter also keeps month-to-date spend per tenant and key in memory
(``engine.budgets``) and refuses calls over budget (``check_budget``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from modelport.engine.budgets import BudgetLookup, SpendTracker, TenantBudgets
from modelport.engine.pricing import ZERO, PriceBook, utcnow
from modelport.engine.principal import CURRENT, Principal, RequestContext
from modelport.engine.usage import STREAM_SNAPSHOT, UsageEvent
from modelport.engine.usage_journal import Entry, Row, UsageJournal, read
from modelport.engine.usage_store import UsageStore
from modelport.errors import QuotaExceeded
from modelport.settings import Settings
from modelport.storage.db import Database

log = logging.getLogger("modelport.metering")

Clock = Callable[[], datetime]

# Keys of ``RequestContext.extra``: the middleware meters this request / its parked event /
# whether its final record was journaled.
METERED = "metering.on"
PARKED = "metering.event"
SETTLED = "metering.settled"


class Meter:
    """Usage records: make, journal, commit, replay; spend and budgets (module docstring)."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        prices: PriceBook,
        *,
        tenant_budgets: BudgetLookup | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._database = database
        self.prices = prices
        self._clock = clock
        self.journal = UsageJournal(
            settings.data_dir / "usage-journal", fsync=settings.metering_fsync
        )
        self.spend = SpendTracker(clock)
        # Without a lookup from memory (the account service's), keep a refreshed copy.
        self._own_budgets: TenantBudgets | None = None
        if tenant_budgets is None:
            self._own_budgets = TenantBudgets()
            tenant_budgets = self._own_budgets.get
        self._tenant_budget = tenant_budgets
        self._flush_s = settings.metering_flush_ms / 1000.0
        self._refresh_s = settings.metering_tenant_refresh_s
        self._unsaved: list[Entry] = []
        self._flush_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._store = UsageStore(database, self.journal.directory / "rejected.jsonl")

    # -- lifecycle (blocking: call from a thread, before serving / after) ---------------------

    def start(self) -> int:
        """Replay the journal, load prices, spend and budgets, start the writer.

        Returns how many records the replay found (already committed ones included).
        """
        replayed = self.replay()
        self.prices.load()
        self.spend.load(self._database)
        self._refresh_budgets()
        self.journal.open()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
        self._thread.start()
        return replayed

    def stop(self) -> None:
        """Stop the writer and commit everything journaled."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._flush_lock:
            batch = self._unsaved + self.journal.close()
            try:
                self._write(batch)
            except Exception:  # the segments stay; the next start replays them
                log.exception("usage records not committed at shutdown; kept in the journal")
                return
            self._unsaved = []
            self.journal.release()

    def replay(self) -> int:
        """Insert the journal's records the database lacks, then delete its segments."""
        records, paths = read(self.journal.directory)
        if records:
            self._write(list(records.values()))
            log.info("replayed %d usage records from the journal", len(records))
        for path in paths:
            path.unlink(missing_ok=True)
        return len(records)

    def flush(self) -> int:
        """Commit what was journaled so far (the writer does this every flush interval).

        Returns how many records were written; on a database error they are kept (in
        memory and in the journal) and retried next time.
        """
        with self._flush_lock:
            batch = self._unsaved + self.journal.rotate()
            if batch:
                try:
                    self._write(batch)
                except Exception:
                    self._unsaved = batch
                    log.exception("committing %d usage records failed; will retry", len(batch))
                    return 0
                self._unsaved = []
            self.journal.release()
            return len(batch)

    def _write(self, records: list[Entry]) -> None:
        self._store.insert(records)

    def _run(self) -> None:
        next_refresh = time.monotonic() + self._refresh_s
        while not self._stopping.wait(self._flush_s):
            self.flush()
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + self._refresh_s
                self._refresh_budgets()

    def _refresh_budgets(self) -> None:
        if self._own_budgets is None:
            return
        try:
            self._own_budgets.refresh(self._database)
        except Exception:
            log.exception("reading tenant budgets failed; keeping the last ones")

    # -- records (event loop) -----------------------------------------------------------------

    def on_event(self, event: UsageEvent) -> None:
        """``UsageHub`` subscriber: park the event for the middleware, or journal it now."""
        context = CURRENT.get()
        if context is not None and METERED in context.extra:
            context.extra[PARKED] = event
        elif self.journal.is_open:  # not behind the middleware: an in-process caller
            self.record(event, None if context is None else context.principal)

    def record(self, event: UsageEvent, principal: Principal | None, *, final: bool = True) -> Row:
        """Price ``event`` and journal it (a final record, or a stream's snapshot).

        The record is a ``Row`` (``usage_journal.FIELDS`` order): the journal line is that
        tuple as JSON and the writer inserts it as it is, so no dict is built per request.
        """
        tenant_id = event.tenant_id
        key_id = event.key_id
        if tenant_id is None and principal is not None:
            tenant_id = principal.tenant_id
            if key_id is None:
                key_id = principal.key_id
        compute_us = round(event.compute_ms * 1000.0)
        created = event.created
        sheet = self.prices.price_at(event.model, created)
        if sheet is None:
            cost = ZERO
            price_id = None
        else:
            cost = sheet.cost(
                event.requests, event.prompt_tokens, event.completion_tokens, compute_us
            )
            price_id = sheet.id
        row = (
            event.request_id, tenant_id, key_id, event.model, event.version, event.kind,
            event.requests, event.rows, event.prompt_tokens, event.completion_tokens,
            compute_us, event.streamed, event.finished, price_id, str(cost), created,
        )  # fmt: skip
        self.journal.append_row(row, final=final)
        if final and cost:
            self.spend.add(tenant_id, key_id, cost, created)
        return row

    # -- the middleware's hooks ---------------------------------------------------------------

    @staticmethod
    def begin(context: RequestContext) -> None:
        """From now on, usage events of this request wait for ``settle``."""
        context.extra[METERED] = True

    def snapshot(self, context: RequestContext) -> None:
        """Journal the usage so far of a streamed response (no-op for other responses)."""
        provider = context.extra.get(STREAM_SNAPSHOT)
        if provider is not None and SETTLED not in context.extra and callable(provider):
            self.record(provider(), context.principal, final=False)

    def settle(self, context: RequestContext) -> None:
        """Journal the request's final record (once): its parked event, else the stream's
        last snapshot (a stream that ended without an event is billed for what it sent)."""
        extra = context.extra
        if SETTLED in extra:
            return
        event = extra.pop(PARKED, None)
        provider = extra.get(STREAM_SNAPSHOT)
        if isinstance(event, UsageEvent):
            self.record(event, context.principal)
        elif provider is not None and callable(provider):
            self.record(provider(), context.principal)
        else:
            return
        extra[SETTLED] = True

    # -- budgets ------------------------------------------------------------------------------

    def now(self) -> datetime:
        """The meter's clock (injectable for tests)."""
        return self._clock()

    def check_budget(self, principal: Principal) -> None:
        """Raise ``QuotaExceeded`` if the caller's tenant or key spent its monthly budget."""
        spend = self.spend
        if self._clock is utcnow:  # the wall clock: a float comparison, no datetime per call
            if time.time() >= spend.month_end_ts:
                spend.roll(self._clock())
        else:
            now = self._clock()
            if now >= spend.month_end:
                spend.roll(now)
        tenant = self._tenant_budget(principal.tenant_id)
        if tenant is not None and tenant.monthly_budget is not None:
            spent = spend.tenant(principal.tenant_id)
            if spent >= tenant.monthly_budget:
                raise self._refusal(f"tenant {principal.tenant!r}", spent, tenant.monthly_budget)
        if principal.monthly_budget is not None:
            spent = spend.key(principal.key_id)
            if spent >= principal.monthly_budget:
                name = f"API key {principal.key_name!r}"
                raise self._refusal(name, spent, principal.monthly_budget)

    def _refusal(self, who: str, spent: Decimal, budget: Decimal) -> QuotaExceeded:
        resets = self.spend.month_end.strftime("%Y-%m-%dT%H:%M:%SZ")
        return QuotaExceeded(
            f"You exceeded your current quota: {who} has spent {spent.normalize():f} of its "
            f"monthly budget of {budget.normalize():f}; calls are refused until the budget "
            f"is raised or the month ends ({resets})."
        )
