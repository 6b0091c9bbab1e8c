"""The usage journal and its replay: exactly one record per request id, whatever the crash.

A "crash" here is a meter that is never stopped: its journal segments stay as the killed
process left them (the page cache keeps what ``os.write`` returned), and a new meter on the
same data dir replays them into a real SQLite database.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from modelport.engine import usage_journal, usage_store
from modelport.engine.metering import Meter
from modelport.engine.pricing import PriceBook
from modelport.engine.usage import UsageEvent
from modelport.engine.usage_journal import UsageJournal, read, segments
from modelport.settings import Settings
from modelport.storage.db import Database
from modelport.storage.tables import UsageRow

NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def _record(request_id: str, tokens: int = 0) -> dict[str, object]:
    return {"request_id": request_id, "model": "m", "output_tokens": tokens}


def _event(request_id: str, completion: int = 0, **extra: object) -> UsageEvent:
    return UsageEvent(
        request_id, "iris", 1, "inference", 3, completion, 3 + completion, created=NOW,
        **extra,  # type: ignore[arg-type]
    )  # fmt: skip


# -- the journal alone -------------------------------------------------------------------------


def test_rotate_hands_over_finals_and_release_deletes_segments(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path)
    journal.open()
    journal.append(_record("a"), final=True)
    journal.append(_record("b"), final=True)
    assert journal.rotate() == [_record("a"), _record("b")]
    assert len(segments(tmp_path)) == 2  # the closed one waits for release
    assert journal.rotate() == []  # nothing new: no new segment either
    assert journal.release() == 1
    assert [n for n, _ in segments(tmp_path)] == [2]
    records, _ = read(tmp_path)
    assert records == {}


def test_replay_skips_a_torn_last_line_and_keeps_the_last_duplicate(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path)
    journal.open()
    journal.append(_record("a", 1), final=True)
    journal.append(_record("b", 1), final=True)
    journal.append(_record("a", 2), final=True)  # a duplicate line: the last one wins
    path = segments(tmp_path)[-1][1]
    with path.open("ab") as fh:  # the process died inside write()
        fh.write(b'{"request_id": "c", "model": "m", "out')
    records, paths = read(tmp_path)
    assert paths == [path]
    assert records == {"a": _record("a", 2), "b": _record("b", 1)}


def test_replay_skips_garbage_lines(tmp_path: Path) -> None:
    path = tmp_path / "segment-000000000001.jsonl"
    path.write_bytes(b'not json\n[1, 2]\n{"no": "id"}\n{"request_id": "x"}\n\n')
    records, _ = read(tmp_path)
    assert records == {"x": {"request_id": "x"}}


def test_open_streams_move_to_the_new_segment_at_rotation(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path)
    journal.open()
    journal.append(_record("s", 1), final=False)
    journal.append(_record("s", 2), final=False)
    journal.append(_record("done"), final=True)
    assert journal.rotate() == [_record("done")]
    journal.release()
    # Only the newest snapshot of the open stream survives, in the new segment.
    records, paths = read(tmp_path)
    assert len(paths) == 1
    assert records == {"s": _record("s", 2)}
    assert journal.open_streams == 1
    journal.append(_record("s", 3), final=True)  # the stream ends
    assert journal.open_streams == 0
    assert journal.rotate() == [_record("s", 3)]
    journal.release()
    assert read(tmp_path)[0] == {}


def test_a_full_segment_continues_in_a_new_one_with_the_open_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_journal, "SEGMENT_BYTES", 160)  # two or three lines each
    journal = UsageJournal(tmp_path)
    journal.open()
    journal.append(_record("s", 1), final=False)
    finals = [_record(f"r{i}") for i in range(6)]
    for record in finals:
        journal.append(record, final=True)
    assert len(segments(tmp_path)) > 2  # it filled up more than once
    records, _ = read(tmp_path)  # a crash now: everything is there
    assert records == {"s": _record("s", 1), **{str(r["request_id"]): r for r in finals}}
    assert journal.rotate() == finals
    journal.release()
    # What is left is the newest segment, holding the open stream's snapshot only.
    assert len(segments(tmp_path)) == 1
    assert read(tmp_path)[0] == {"s": _record("s", 1)}


def test_close_keeps_a_segment_with_open_streams(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path)
    journal.open()
    journal.append(_record("s", 1), final=False)
    journal.append(_record("f"), final=True)
    assert journal.close() == [_record("f")]
    journal.release()
    assert read(tmp_path)[0] == {"s": _record("s", 1), "f": _record("f")}
    with pytest.raises(RuntimeError):
        journal.append(_record("late"), final=True)


def test_committed_segments_are_recycled_and_spares_are_never_replayed(tmp_path: Path) -> None:
    journal = UsageJournal(tmp_path)
    journal.open()
    journal.append(_record("a"), final=True)
    assert journal.rotate() == [_record("a")]
    first = segments(tmp_path)[0][1]
    inode = first.stat().st_ino
    assert journal.release() == 1
    (spare,) = tmp_path.glob("spare-*.jsonl")  # segment 1, renamed and zeroed
    assert spare.stat().st_ino == inode and spare.read_bytes().strip(b"\0") == b""
    # A crash between the rename and the zeroing leaves committed lines in a spare: unread.
    (tmp_path / "spare-99.jsonl").write_bytes(usage_journal.encode(_record("old")))
    assert read(tmp_path)[0] == {}
    journal.append(_record("b"), final=True)
    assert journal.rotate() == [_record("b")]
    # The spare came back as the next segment (same file), empty but for what follows.
    assert [n for n, _ in segments(tmp_path)] == [2, 3]
    assert segments(tmp_path)[1][1].stat().st_ino == inode
    journal.append(_record("c"), final=True)
    assert read(tmp_path)[0] == {"b": _record("b"), "c": _record("c")}
    # The next start deletes what spares are left.
    UsageJournal(tmp_path).open()
    assert list(tmp_path.glob("spare-*.jsonl")) == []


# -- replay through the meter into SQLite ------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _meter(data_dir: Path) -> Meter:
    # A writer that never wakes up on its own: the tests decide when records are committed.
    settings = Settings(data_dir=data_dir, metering_flush_ms=3_600_000)
    database = Database(settings.db_url)
    database.migrate()
    return Meter(settings, database, PriceBook(database, clock=lambda: NOW), clock=lambda: NOW)


@pytest.fixture
def meters(data_dir: Path) -> Iterator[list[Meter]]:
    made: list[Meter] = []
    yield made
    for meter in made:  # "crashed" meters: stop their writer threads, keep their journals
        meter._stopping.set()
        if meter._thread is not None:
            meter._thread.join()
        meter._database.dispose()


def _start(data_dir: Path, meters: list[Meter]) -> Meter:
    meter = _meter(data_dir)
    meters.append(meter)
    meter.start()
    return meter


def _rows(meter: Meter) -> dict[str, UsageRow]:
    with meter._database.session() as session:
        return {row.request_id: row for row in session.scalars(select(UsageRow))}


def test_replay_after_a_crash_inserts_each_record_once(data_dir: Path, meters: list[Meter]) -> None:
    first = _start(data_dir, meters)
    for i in range(5):
        first.record(_event(f"r{i}", rows=2, compute_ms=0.25), None)
    assert first.flush() == 5  # committed, segments released
    for i in range(5, 12):
        first.record(_event(f"r{i}"), None)
    # Crash: r5..r11 are only in the journal. A second start replays them.
    second = _start(data_dir, meters)
    rows = _rows(second)
    assert sorted(rows) == sorted(f"r{i}" for i in range(12))
    assert rows["r0"].rows == 2 and rows["r0"].compute_ms == Decimal("0.250")
    assert [n for n, _ in segments(data_dir / "usage-journal")] == [1]  # a fresh one
    # Replaying the same journal again (a crash during replay) adds nothing.
    assert second.replay() == 0
    assert len(_rows(second)) == 12


def test_replay_is_idempotent_when_segments_were_committed_but_not_deleted(
    data_dir: Path, meters: list[Meter]
) -> None:
    first = _start(data_dir, meters)
    for i in range(4):
        first.record(_event(f"r{i}"), None)
    batch = first.journal.rotate()
    first._write(batch)  # committed... and killed before the segment was deleted
    second = _start(data_dir, meters)
    with second._database.session() as session:
        assert session.scalar(select(func.count()).select_from(UsageRow)) == 4


def test_a_stream_cut_by_a_crash_is_billed_with_its_last_snapshot(
    data_dir: Path, meters: list[Meter]
) -> None:
    first = _start(data_dir, meters)
    for sent in range(1, 4):
        first.record(_event("stream", sent, streamed=True, finished=False), None, final=False)
    first.record(_event("done", 5, streamed=True), None)
    first.flush()  # "done" committed; the open stream moves on with the new segment
    first.record(_event("stream", 4, streamed=True, finished=False), None, final=False)
    second = _start(data_dir, meters)
    rows = _rows(second)
    assert set(rows) == {"stream", "done"}
    assert rows["stream"].output_tokens == 4 and rows["stream"].finished is False
    assert rows["done"].output_tokens == 5


def test_a_stream_that_ended_is_billed_with_its_final_record(
    data_dir: Path, meters: list[Meter]
) -> None:
    first = _start(data_dir, meters)
    first.record(_event("s", 1, streamed=True, finished=False), None, final=False)
    first.flush()
    first.record(_event("s", 2, streamed=True, finished=False), None, final=False)
    first.record(_event("s", 2, streamed=True, finished=True), None)
    second = _start(data_dir, meters)
    rows = _rows(second)
    assert rows["s"].output_tokens == 2 and rows["s"].finished is True


def test_a_clean_stop_commits_everything_and_leaves_no_segments(
    data_dir: Path, meters: list[Meter]
) -> None:
    meter = _meter(data_dir)
    meter.start()
    for i in range(3):
        meter.record(_event(f"r{i}"), None)
    meter.stop()
    assert segments(data_dir / "usage-journal") == []
    assert len(_rows(meter)) == 3
    meter._database.dispose()


def test_a_damaged_record_is_set_aside_and_the_others_are_billed(
    data_dir: Path, meters: list[Meter]
) -> None:
    first = _start(data_dir, meters)
    first.record(_event("good-1"), None)
    first.journal.append({"request_id": "damaged", "model": "iris"}, final=True)  # no version
    first.record(_event("good-2"), None)
    second = _start(data_dir, meters)
    assert set(_rows(second)) == {"good-1", "good-2"}
    rejected = (data_dir / "usage-journal" / "rejected.jsonl").read_text()
    assert '"request_id":"damaged"' in rejected and "version" in rejected


def test_the_meter_journals_rows_and_replay_reads_them_as_records(
    data_dir: Path, meters: list[Meter]
) -> None:
    meter = _start(data_dir, meters)
    meter.record(_event("r", 2, compute_ms=1.5), None)
    line = segments(data_dir / "usage-journal")[-1][1].read_bytes().rstrip(b"\0")
    assert line.startswith(b'["r",')  # a row in FIELDS order, not an object
    records, _ = read(data_dir / "usage-journal")
    assert records["r"]["output_tokens"] == 2 and records["r"]["compute_us"] == 1500
    assert records["r"]["created_at"] == NOW.isoformat()


def test_sqlite_times_are_what_the_orm_stores() -> None:
    plus5 = timezone(timedelta(hours=5))
    for when in (
        NOW,
        NOW.replace(microsecond=7),
        datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2027, 1, 1, 4, 0, 0, tzinfo=plus5),  # another zone, the same second as above
        datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ):
        expected = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        assert usage_store._sqlite_time(when) == expected
    with pytest.raises(ValueError, match="timezone"):
        usage_store._sqlite_time(datetime(2026, 1, 1))  # naive
