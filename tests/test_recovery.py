"""One test per reader branch: what recovery and reading do with each kind of damage.

Every test writes a log with known records, tampers with its files the way a crash or a
bad disk would, reopens it and checks (a) every undamaged record is still returned, in
order and intact, (b) no damaged record is ever returned, (c) damaged bytes are kept in
the dead-letter file, never simply dropped.
"""

from __future__ import annotations

import base64
import os
import shutil

import orjson
from logtools import (
    SMALL,
    check_intact,
    flip_bit,
    frames,
    patch,
    read_all,
    reclaimed,
    record,
    segment_files,
    seq_of,
    write_log,
)

from segmentlog import SegmentLog
from segmentlog import _pure as pure
from segmentlog._backend import impl
from segmentlog._format import (
    CHECKPOINT_NAME,
    DEADLETTER_NAME,
    SEGMENT_HEADER_SIZE,
    frame_size,
    parse_segment_name,
    segment_name,
)
from segmentlog.segment import encode_header

N = 150  # records: enough for several segments of SMALL bytes


def middle_segment(directory: str) -> str:
    files = segment_files(directory)
    assert len(files) >= 3
    return files[1]


def deadletters(directory: str) -> list[dict[str, object]]:
    try:
        with open(os.path.join(directory, DEADLETTER_NAME), "rb") as f:
            return [orjson.loads(line) for line in f]
    except FileNotFoundError:
        return []


def reopen_and_read(directory: str) -> tuple[list[bytes], dict[str, object]]:
    with SegmentLog(directory, segment_size=SMALL) as log:
        return read_all(log), log.stats()


def test_torn_tail_is_truncated_and_counted_not_damage(logdir: str) -> None:
    write_log(logdir, 20)
    last = segment_files(logdir)[-1]
    off, seq, length = frames(last)[-1]
    # A crash cut the last record short: its tail bytes never reached the disk.
    patch(last, off + 24 + length // 2, bytes(length - length // 2 + 8))
    out, stats = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(20) if s != seq]
    check_intact(out, list(range(seq)))
    assert stats["torn_tail_bytes"] > 0
    assert stats["damaged_regions"] == 0
    assert deadletters(logdir) == []
    # The next append reuses the torn record's space and its sequence number.
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert log.append(b"after") == seq


def test_torn_header_at_the_end_is_a_torn_tail(logdir: str) -> None:
    write_log(logdir, 20)
    last = segment_files(logdir)[-1]
    off, seq, _ = frames(last)[-1]
    patch(last, off + 8, bytes(16))  # only marker and length made it to disk
    out, stats = reopen_and_read(logdir)
    check_intact(out, list(range(seq)))
    assert stats["torn_tail_bytes"] > 0 and stats["damaged_regions"] == 0


def test_bad_crc_mid_segment_skips_the_record_and_keeps_its_bytes(logdir: str) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    off, bad_seq, length = frames(seg)[2]
    with open(seg, "rb") as f:
        raw_before = f.read()[off : off + 24 + length]
    flip_bit(seg, off + 24 + length - 1, 3)  # one payload bit
    out, stats = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(N) if s != bad_seq]
    check_intact(out, [s for s in range(N) if s != bad_seq])
    assert stats["damaged_regions"] == 1
    (entry,) = deadletters(logdir)
    assert entry["segment"] == os.path.basename(seg) and entry["offset"] == off
    assert entry["kind"] == "bad_crc" and entry["first_missing_seq"] == bad_seq
    raw = base64.b64decode(entry["raw_base64"])  # type: ignore[arg-type]
    assert raw[:20] == raw_before[:20] and len(raw) == len(raw_before) + (-len(raw_before) % 8)


def test_bad_crc_in_the_last_segment_with_records_after_it_is_damage(logdir: str) -> None:
    write_log(logdir, 20)
    last = segment_files(logdir)[-1]
    off, bad_seq, _ = frames(last)[0]
    flip_bit(last, off + 9)  # a sequence-number bit, covered by the checksum
    out, stats = reopen_and_read(logdir)
    assert bad_seq not in [seq_of(p) for p in out]
    assert len(out) == 19
    assert stats["damaged_regions"] == 1 and stats["torn_tail_bytes"] == 0


def test_damaged_length_does_not_skip_good_records(logdir: str) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    off, bad_seq, _ = frames(seg)[1]
    patch(seg, off + 4, (3000).to_bytes(4, "little"))  # a length spanning later frames
    out, _ = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(N) if s != bad_seq]


def test_length_beyond_the_segment_is_bounded(logdir: str) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    off, bad_seq, _ = frames(seg)[0]
    patch(seg, off + 4, b"\xff\xff\xff\xff")
    out, _ = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(N) if s != bad_seq]


def test_zero_filled_space_reads_as_end_of_log(logdir: str) -> None:
    write_log(logdir, 5)
    out, stats = reopen_and_read(logdir)
    check_intact(out, list(range(5)))
    assert stats["damaged_regions"] == 0 and stats["torn_tail_bytes"] == 0


def test_zeroed_region_in_a_sealed_segment_is_damage_and_later_records_survive(
    logdir: str,
) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    fr = frames(seg)
    start, end = fr[1][0], fr[3][0]
    patch(seg, start, bytes(end - start))  # a zeroed sector: records 1 and 2 of the segment
    lost = {fr[1][1], fr[2][1]}
    out, stats = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(N) if s not in lost]
    assert stats["damaged_regions"] == 1
    (entry,) = deadletters(logdir)
    assert entry["kind"] == "zero" and entry.get("zeros") is True


def test_zeroed_tail_of_a_sealed_segment_is_counted_as_missing(logdir: str) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    fr = frames(seg)
    patch(seg, fr[-1][0], bytes(SMALL - fr[-1][0]))
    out, stats = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(N) if s != fr[-1][1]]
    assert stats["damaged_regions"] == 1


def test_bad_segment_header_is_read_by_its_file_name(logdir: str) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    flip_bit(seg, 17)  # base_seq field: header checksum fails
    out, stats = reopen_and_read(logdir)
    check_intact(out, list(range(N)))
    assert any("header" in p for p in stats["problems"])  # type: ignore[union-attr]


def test_missing_middle_segment_loses_only_its_records(logdir: str) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    missing = {s for _, s, _ in frames(seg)}
    os.unlink(seg)
    out, stats = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(N) if s not in missing]
    assert stats["damaged_regions"] == 1


def test_zero_length_segment_file_is_skipped(logdir: str) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    missing = {s for _, s, _ in frames(seg)}
    os.truncate(seg, 0)
    out, _ = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(N) if s not in missing]


def test_missing_checkpoint_rereads_from_the_oldest_segment(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL) as log:
        for i in range(30):
            log.append(record(i))
        log.commit(log.read_batch(max_records=10))
    os.unlink(os.path.join(logdir, CHECKPOINT_NAME))
    out, stats = reopen_and_read(logdir)
    check_intact(out, list(range(30)))
    assert any("checkpoint" in p for p in stats["problems"])  # type: ignore[union-attr]


def test_damaged_checkpoint_is_not_trusted(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL) as log:
        for i in range(30):
            log.append(record(i))
        log.commit(log.read_batch(max_records=10))
    flip_bit(os.path.join(logdir, CHECKPOINT_NAME), 9)
    out, stats = reopen_and_read(logdir)
    check_intact(out, list(range(30)))  # re-delivered, never skipped
    assert any("damaged" in p for p in stats["problems"])  # type: ignore[union-attr]


def test_stale_checkpoint_below_the_oldest_segment_starts_there(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL) as log:
        for i in range(200):
            log.append(record(i))
        from segmentlog import checkpoint

        old = checkpoint.encode(0)
        while batch := log.read_batch(max_records=20):
            if batch.last_seq >= 120:
                break
            log.commit(batch)
        reclaimed(log)  # the oldest segment left is the one a reopen starts at
        first = os.path.basename(segment_files(logdir)[0])
    patch(os.path.join(logdir, CHECKPOINT_NAME), 0, old)
    out, _ = reopen_and_read(logdir)
    assert seq_of(out[0]) == int(first[:20])
    check_intact(out, list(range(int(first[:20]), 200)))


def test_checkpoint_beyond_the_data_keeps_new_sequence_numbers_above_it(logdir: str) -> None:
    from segmentlog import checkpoint

    write_log(logdir, 10)
    checkpoint.write(logdir, 500, durable=True)
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert read_all(log) == []
        assert log.append(b"new") >= 500
        assert log.read_batch().records == [b"new"]


def test_stale_records_of_a_recycled_segment_read_as_end(logdir: str) -> None:
    with SegmentLog(logdir, segment_size=SMALL, fsync="never") as log:
        for i in range(300):
            log.append(record(i, 100))
        while batch := log.read_batch(max_records=9):
            log.commit(batch)
        reclaimed(log)
        assert log.stats()["recycled"] > 0
        for i in range(300, 330):
            log.append(record(i, 100))
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert read_all(log) == [record(i, 100) for i in range(300, 330)]


def test_damage_is_kept_once_across_reopens(logdir: str) -> None:
    write_log(logdir, N)
    seg = middle_segment(logdir)
    off, _, _length = frames(seg)[2]
    flip_bit(seg, off + 30)
    reopen_and_read(logdir)
    reopen_and_read(logdir)
    assert len(deadletters(logdir)) == 1


def test_header_only_segment_after_crash_in_rotation_is_empty(logdir: str) -> None:
    write_log(logdir, N)
    last = segment_files(logdir)[-1]
    fr = frames(last)
    patch(last, SEGMENT_HEADER_SIZE, bytes(SMALL - SEGMENT_HEADER_SIZE))
    out, stats = reopen_and_read(logdir)
    assert [seq_of(p) for p in out] == [s for s in range(N) if s < fr[0][1]]
    assert stats["damaged_regions"] == 0


def damage_then_reopen(directory: str, committed: int, damaged: list[int]) -> None:
    """A log of 100 records in one segment, the first ``committed`` consumed, then one
    payload byte flipped in each record of ``damaged`` (issue 15, item 1)."""
    with SegmentLog(directory, segment_size=1 << 20) as log:
        for seq in range(100):
            log.append(record(seq))
        log.commit(log.read_batch(max_records=committed))
    seg = segment_files(directory)[0]
    where = {seq: off for off, seq, _ in frames(seg)}
    for seq in damaged:
        flip_bit(seg, where[seq] + 24)


def test_reopen_after_damage_below_the_checkpoint_skips_no_intact_record(logdir: str) -> None:
    # The read position is found by sequence number: three damaged records below the
    # checkpoint once made the reader start three intact records past it.
    damage_then_reopen(logdir, 50, [10, 11, 12])
    with SegmentLog(logdir, segment_size=1 << 20) as log:
        batch = log.read_batch(max_records=1000)
        assert batch.first_seq == 50
        check_intact(batch.records, list(range(50, 100)))


def test_rewind_after_damage_below_the_checkpoint_skips_no_intact_record(logdir: str) -> None:
    damage_then_reopen(logdir, 50, [10, 11, 12])
    with SegmentLog(logdir, segment_size=1 << 20) as log:
        read_all(log)
        log.rewind()
        check_intact(read_all(log), list(range(50, 100)))
        assert [d["first_missing_seq"] for d in deadletters(logdir)] == [10]


def test_checkpoint_on_a_damaged_record_resumes_at_the_next_sound_one(logdir: str) -> None:
    damage_then_reopen(logdir, 50, [49, 50, 51])
    with SegmentLog(logdir, segment_size=1 << 20) as log:
        batch = log.read_batch(max_records=1000)
        # A batch names only numbers of records it holds: 50 and 51 were damaged.
        assert (batch.first_seq, batch.last_seq) == (52, 99)
        check_intact(batch.records, list(range(52, 100)))


def test_batch_numbers_skip_damage_at_its_edges(logdir: str) -> None:
    damage_then_reopen(logdir, 1, [1, 2, 20, 21])
    with SegmentLog(logdir, segment_size=1 << 20) as log:
        batch = log.read_batch(max_records=17)
        assert (batch.first_seq, batch.last_seq) == (3, 19)
        check_intact(batch.records, list(range(3, 20)))
        batch = log.read_batch(max_records=1000)
        assert batch.first_seq == 22


def forge(path: str, offset: int, seqs: list[int], size: int = 120) -> int:
    """Write sound frames (valid checksums) numbered ``seqs`` at ``offset`` of a segment, as
    a misdirected write or an adversary would; returns the offset after them."""
    buf = bytearray(len(seqs) * frame_size(size))
    pos = 0
    for seq in seqs:
        pos = pure.frame_into(buf, pos, b"F" * size, seq)
    patch(path, offset, bytes(buf))
    return offset + pos


def test_stray_copy_of_an_old_segment_named_after_the_last_does_not_reuse_numbers(
        logdir: str) -> None:
    # Issue 15, item 5: recovery took the next number from the stray file's name, so new
    # appends reused numbers the reader had passed and were never returned.
    write_log(logdir, N)
    files = segment_files(logdir)
    last_base = frames(files[-1])[0][1]
    shutil.copy(files[0], os.path.join(logdir, segment_name(last_base + 2)))
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert log.append(record(N)) == N
        check_intact(read_all(log), list(range(N + 1)))
    with SegmentLog(logdir, segment_size=SMALL) as log:
        check_intact(read_all(log), list(range(N + 1)))
        assert log.append(record(N + 1)) == N + 1
    assert any(n.endswith(".seg.damaged") for n in os.listdir(logdir))


def test_empty_segment_named_inside_the_previous_segments_records_does_not_reuse_numbers(
        logdir: str) -> None:
    write_log(logdir, N)
    files = segment_files(logdir)
    last_base = frames(files[-1])[0][1]
    fresh = os.path.join(logdir, segment_name(last_base + 1))
    with open(fresh, "wb") as f:  # a sound, empty segment (as a rotation leaves one)
        f.write(encode_header(last_base + 1) + bytes(SMALL - SEGMENT_HEADER_SIZE))
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert log.append(record(N)) == N
        check_intact(read_all(log), list(range(N + 1)))


def test_segment_name_beyond_the_sequence_limit_is_foreign(logdir: str) -> None:
    write_log(logdir, 20)
    huge = os.path.join(logdir, "9" * 20 + ".seg")
    shutil.copy(segment_files(logdir)[0], huge)
    assert parse_segment_name(os.path.basename(huge)) is None
    with SegmentLog(logdir, segment_size=SMALL) as log:
        assert log.append(record(20)) == 20
        check_intact(read_all(log), list(range(21)))
    assert os.path.exists(huge)  # foreign: never read, never deleted


def test_forged_frame_with_a_huge_sequence_number_is_not_a_resync_target(logdir: str) -> None:
    # Issue 15, item 7: resync took any sound frame with a higher number; one numbered
    # near 2**64 in the last segment lost every record after it and moved the numbering.
    write_log(logdir, N)
    last = segment_files(logdir)[-1]
    off, lost, _ = frames(last)[1]
    forge(last, off, [(1 << 64) - 5], size=0)
    with SegmentLog(logdir, segment_size=SMALL) as log:
        check_intact(read_all(log), [s for s in range(N) if s != lost])
        assert log.append(record(N)) == N


def test_resync_needs_room_for_the_records_it_skips() -> None:
    buf = bytearray(4096)
    pos = pure.frame_into(buf, 64, b"x", 10)  # numbered 10 at offset 64
    assert pos
    for backend in {pure, impl}:
        # From offset 40 expecting 9: one record skipped in 24 bytes, room for one.
        assert backend.resync(bytes(buf), 40, len(buf), 9, 1 << 40) == (64, 10)
        # Expecting 8: two records skipped in 24 bytes cannot be: not this log's record.
        assert backend.resync(bytes(buf), 40, len(buf), 8, 1 << 40) is None


def kept_bytes(directory: str) -> bytes:
    return b"".join(base64.b64decode(str(d.get("raw_base64", "")))
                    for d in deadletters(directory))


def test_sound_frames_numbered_below_the_expected_one_are_kept_not_an_end(
        logdir: str) -> None:
    # A run of forged (or misdirected) frames numbered ahead: the intact records after it
    # are numbered below what the walk then expects. They once read as a clean end and
    # were dropped silently; now their bytes are damage, kept in the dead-letter file.
    write_log(logdir, N)
    seg = middle_segment(logdir)
    fr = frames(seg)
    off, first, _ = fr[1]
    # Numbered inside the segment's range (a resync never looks beyond it), far enough
    # apart for the records they would skip.
    after = forge(seg, off, [first + 10, first + 11], size=300)
    behind = [s for o, s, n in fr if o >= after and s <= first + 11]
    assert behind
    with SegmentLog(logdir, segment_size=SMALL) as log:
        out = read_all(log)
    assert not {seq_of(p) for p in out if p.startswith(b"<")} & set(behind)
    for seq in behind:
        assert record(seq) in kept_bytes(logdir)


def test_sound_frames_below_the_expected_one_in_the_last_segment_are_not_overwritten(
        logdir: str) -> None:
    write_log(logdir, N)
    last = segment_files(logdir)[-1]
    fr = frames(last)
    after = forge(last, fr[1][0], [fr[1][1] + 40, fr[1][1] + 41], size=1000)
    behind = [s for o, s, n in fr if o >= after]
    assert behind
    with open(last, "rb") as f:
        before = f.read()
    with SegmentLog(logdir, segment_size=SMALL) as log:
        read_all(log)
        log.append(b"new")
        log.sync()
    with open(last, "rb") as f:
        assert f.read() == before  # new records went to a new segment, nothing zeroed
    for seq in behind:
        assert record(seq) in kept_bytes(logdir)


def test_swapped_segment_files_trade_their_names_back(logdir: str) -> None:
    # Issue 15: a rename leaves every frame intact, so it must lose nothing. The header
    # (checksummed) says which segment a file is; the name does not.
    write_log(logdir, N)
    files = segment_files(logdir)
    a, b = files[1], files[2]
    os.rename(a, a + ".x")
    os.rename(b, a)
    os.rename(a + ".x", b)
    out, stats = reopen_and_read(logdir)
    check_intact(out, list(range(N)))
    assert stats["damaged_regions"] == 0
    assert deadletters(logdir) == []


def test_a_renamed_segment_file_gets_its_name_back(logdir: str) -> None:
    write_log(logdir, N)
    files = segment_files(logdir)
    base = frames(files[1])[0][1]
    os.rename(files[1], os.path.join(logdir, segment_name(base + 3)))
    out, _ = reopen_and_read(logdir)
    check_intact(out, list(range(N)))
    assert os.path.exists(files[1])


def test_an_open_stopped_while_moving_names_finishes_the_move(logdir: str) -> None:
    write_log(logdir, N)
    files = segment_files(logdir)
    os.rename(files[1], files[1] + ".moving")  # as _restore_names leaves it mid-way
    out, _ = reopen_and_read(logdir)
    check_intact(out, list(range(N)))
    assert os.path.exists(files[1])


def test_verify_names_a_segment_left_mid_move(logdir: str) -> None:
    from segmentlog.examine import inspect

    write_log(logdir, N)
    files = segment_files(logdir)
    os.rename(files[1], files[1] + ".moving")
    kinds = {p.kind for p in inspect(logdir).all_problems()}
    assert "moving_segment" in kinds and "foreign_file" not in kinds


def test_setting_aside_never_overwrites_a_file_set_aside_before(logdir: str) -> None:
    write_log(logdir, 20)
    stray = os.path.join(logdir, segment_name(10_000))
    with open(stray + ".damaged", "wb") as f:
        f.write(b"kept from before")
    open(stray, "wb").close()  # an empty file named like a segment: set aside on open
    with SegmentLog(logdir, segment_size=SMALL) as log:
        check_intact(read_all(log), list(range(20)))
    with open(stray + ".damaged", "rb") as f:
        assert f.read() == b"kept from before"
    assert os.path.exists(stray + ".damaged.1")


def test_a_renamed_segment_with_a_damaged_header_is_known_by_its_first_record(
        logdir: str) -> None:
    # Found by the fuzz harness's long run: a rename plus a flipped header byte lost every
    # record of the segment (set aside as holding none under its wrong name).
    write_log(logdir, N)
    files = segment_files(logdir)
    base = frames(files[1])[0][1]
    flip_bit(files[1], 9)  # the header's version field: the header is no longer sound
    os.rename(files[1], os.path.join(logdir, segment_name(base + 500)))
    out, _ = reopen_and_read(logdir)
    check_intact(out, list(range(N)))
    assert os.path.exists(files[1])
