"""The ledger's journal files: records, torn tails, segments, and who may adopt a journal."""

from __future__ import annotations

import marshal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from llmrelay.accounting.journal import SEGMENT_BYTES, Journal, orphans


def _row(i: int) -> tuple[object, ...]:
    return (f"req-{i}", "model", 200, 1, None, 10 * i, True, "2026-11-26 10:00:00.000001")


def test_rows_come_back_in_order_and_past_the_mark(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    for i in range(5):
        journal.append(i, _row(i))
    journal.close(remove=False)  # as a crash leaves it: files and the lock file
    [orphan] = orphans(tmp_path)
    assert list(orphan.rows(after=-1)) == [(i, _row(i)) for i in range(5)]
    assert list(orphan.rows(after=2)) == [(3, _row(3)), (4, _row(4))]
    orphan.remove()
    assert list(tmp_path.iterdir()) == []


def test_values_json_cannot_hold_and_journals_of_earlier_versions_come_back(
    tmp_path: Path,
) -> None:
    huge = (*_row(1)[:5], 2**70, *_row(1)[6:])  # beyond 64 bits: this record is marshalled
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, _row(0))
    journal.append(1, huge)
    journal.close(remove=False)
    [segment] = tmp_path.glob("*.seg")
    data = segment.read_bytes()
    assert data[8:9] == b"["  # the first record is JSON
    # A record as earlier versions wrote every one (marshal, version 4) after them.
    end = 8 + int.from_bytes(data[:4], "little")
    end += 8 + int.from_bytes(data[end : end + 4], "little")
    old = marshal.dumps((2, _row(2)))
    record = struct.pack("<II", len(old), zlib.crc32(old)) + old
    segment.write_bytes(data[:end] + record + data[end + len(record) :])
    [orphan] = orphans(tmp_path)
    assert list(orphan.rows(after=-1)) == [(0, _row(0)), (1, huge), (2, _row(2))]
    orphan.remove()


def test_a_torn_last_record_is_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    for i in range(3):
        journal.append(i, _row(i))
    journal.close(remove=False)
    [segment] = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    end = 0
    while length := int.from_bytes(data[end : end + 4], "little"):
        end += 8 + length  # past the header and the payload
    assert end < len(data) == SEGMENT_BYTES  # the segment's space is allocated up front
    data[end - 5 : end] = bytes(5)  # a power loss while the last record was on its way out
    segment.write_bytes(data)
    [orphan] = orphans(tmp_path)
    assert [seq for seq, _ in orphan.rows(after=-1)] == [0, 1]
    orphan.release()


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=200)
    journal.open()
    big = ("x" * 1000, *_row(1)[1:])
    for i, row in enumerate((_row(0), big, _row(2))):
        journal.append(i, row)
    assert len(list(tmp_path.glob("*.seg"))) == 3
    journal.close(remove=False)
    [orphan] = orphans(tmp_path)
    assert list(orphan.rows(after=-1)) == [(0, _row(0)), (1, big), (2, _row(2))]
    orphan.remove()


def test_segments_rotate_and_committed_ones_are_deleted(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=500)
    journal.open()
    for i in range(40):
        journal.append(i, _row(i))
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) > 3
    journal.committed(19)
    left = sorted(tmp_path.glob("*.seg"))
    assert 0 < len(left) < len(segments)
    journal.close(remove=False)
    [orphan] = orphans(tmp_path)
    kept = [seq for seq, _ in orphan.rows(after=19)]
    assert kept == list(range(20, 40))  # every uncommitted row is still there
    orphan.release()


def test_a_journal_whose_process_lives_is_not_adopted(tmp_path: Path) -> None:
    mine = Journal(tmp_path)
    mine.open()
    mine.append(0, _row(0))
    assert list(orphans(tmp_path, own=mine.instance)) == []
    # Another process cannot take it either while this one holds the lock.
    probe = (
        "import sys; from pathlib import Path; from llmrelay.accounting.journal import orphans; "
        "print(len(list(orphans(Path(sys.argv[1])))))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "0"
    mine.close(remove=True)
    assert list(tmp_path.iterdir()) == []
