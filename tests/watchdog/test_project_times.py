"""A project's last edit and save times, packed in one bytes object, read back as written."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bup_watchdog.model import NOTHING, Project

PID = "8b1f6d7e-3c2a-4b5d-9e8f-0a1b2c3d4e5f"
S1 = "11111111-2222-4333-8444-555555555555"
S2 = "66666666-7777-4888-9999-aaaaaaaaaaaa"
S3 = "0f0f0f0f-7777-4888-9999-aaaaaaaaaaaa"
IST = timezone(timedelta(hours=5, minutes=30))
ODD = timezone(timedelta(hours=-3, seconds=7, microseconds=11))  # Python allows it: kept too


def _written(when: datetime | None) -> tuple[str, object] | None:
    """A time as written: its text and its offset (== alone would take other zones as equal)."""
    return None if when is None else (when.isoformat(), when.utcoffset())


CASES = [
    (None, {}),
    (datetime(2026, 11, 28, 1, 0, tzinfo=UTC), {}),
    (None, {S1: datetime(2026, 11, 28, 2, 0, 0, 123456, tzinfo=UTC)}),
    (
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=IST),
        {S2: datetime(2025, 1, 1, tzinfo=UTC), S1: datetime(2026, 1, 1, tzinfo=ODD)},
    ),
    # the ends of what datetime holds, in zones that put their UTC instant out of its range
    (datetime(1, 1, 1, tzinfo=IST), {S3: datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=ODD)}),
    (
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        {S1: datetime(1970, 1, 1, tzinfo=UTC)},
    ),
]


@pytest.mark.parametrize(("edited", "saves"), CASES)
def test_times_read_back_as_written_and_none_stays_none(
    edited: datetime | None, saves: dict[str, datetime]
) -> None:
    project = Project.of(PID, S1, (S2,), 100, edited, saves)
    assert _written(project.last_edited) == _written(edited)
    got = project.bup_last_save
    assert {k: _written(v) for k, v in got.items()} == {k: _written(v) for k, v in saves.items()}
    assert got == saves and dict(got) == saves
    assert (got is NOTHING) == (not saves)
    assert len(project.times) == 1 + 8 * (len(saves) + (edited is not None))
    assert (project.zones == b"") == all(
        t.utcoffset() == timedelta(0) for t in [*saves.values(), *([edited] if edited else [])]
    )


def test_random_times_in_random_zones_read_back_as_written() -> None:
    rnd = random.Random(3)
    for _ in range(500):
        zone = timezone(timedelta(minutes=rnd.randrange(-23 * 60, 23 * 60, 15)))
        stamp = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=rnd.getrandbits(50))
        edited = stamp.astimezone(zone)
        saves = {S1: stamp, S2: (stamp - timedelta(days=rnd.randrange(90))).astimezone(zone)}
        project = Project.of(PID, S1, (S2,), None, edited, saves)
        assert _written(project.last_edited) == _written(edited)
        assert [_written(t) for t in project.bup_last_save.values()] == [
            _written(saves[s]) for s in sorted(saves)
        ]


def test_equal_instants_and_equal_mappings_make_equal_projects_as_datetimes_did() -> None:
    when = datetime(2026, 1, 1, 21, 34, 5, 6, tzinfo=UTC)
    one = Project.of(PID, S1, (S2,), 5, when, {S1: when, S2: when})
    two = Project.of(PID, S1, (S2,), 5, when.astimezone(IST), {S2: when, S1: when.astimezone(ODD)})
    assert one == two and hash(one) == hash(two)
    assert one != Project.of(PID, S1, (S2,), 5, when + timedelta(microseconds=1), {S1: when})
    assert one != Project.of(PID, S1, (S2,), 5, when, {S1: when})


def test_servers_tuples_are_shared_through_the_table_given() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    table: dict[tuple[object, ...], tuple[object, ...]] = {}
    one = Project.of(PID, S1, (), None, None, {S2: when, S1: when}, shared=table)
    two = Project.of(PID, S1, (), None, None, {S1: when, S2: when}, shared=table)
    assert one.saved_on == (S1, S2) and one.saved_on is two.saved_on


def test_a_time_without_a_zone_is_refused() -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        Project.of(PID, S1, last_edited=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="has no time zone"):
        Project.of(PID, S1, bup_last_save={S1: datetime(2026, 1, 1)})


def test_repr_shows_the_times_not_their_bytes() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    text = repr(Project.of(PID, S1, (S2,), 5, when, {S1: when}))
    assert "last_edited=datetime.datetime(2026, 1, 1, 0, 0" in text
    assert f"bup_last_save={{'{S1}': datetime.datetime(2026, 1, 1, 0, 0" in text
    assert "times=" not in text and "\\x" not in text
