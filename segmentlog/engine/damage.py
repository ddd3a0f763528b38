"""Damaged bytes found while reading or recovering: kept in the dead-letter file, once.

A region is known by (segment name, offset); a run of missing records after a segment by
(segment name, -first missing number). What the dead-letter file already holds is not
written again after a reopen or a rewind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from segmentlog import deadletter
from segmentlog._format import segment_name
from segmentlog.engine.state import LogState, log
from segmentlog.walk import Damage


class DamageKeeper:
    """Writes each damaged region of one log to its dead-letter file once."""

    def __init__(self, state: LogState) -> None:
        self.state = state
        self.keys: set[tuple[str, int]] = set()

    def load(self) -> None:
        """Learn what the dead-letter file holds (on open, once the names are restored)."""
        self.keys = deadletter.known_keys(self.state.directory)

    def keep(self, buf: Any, base: int, damages: Sequence[Damage]) -> None:
        """Move the bytes of damaged regions of segment ``base`` to the dead-letter file."""
        state = self.state
        name = segment_name(base)
        entries = []
        for d in damages:
            if (name, d.offset) in self.keys:
                continue
            self.keys.add((name, d.offset))
            state.counters["damaged_regions"] += 1
            entries.append({
                "segment": name, "offset": d.offset, "kind": d.kind,
                "first_missing_seq": d.first_missing_seq, "resume_seq": d.resume_seq,
                "raw": bytes(buf[d.offset : d.offset + d.length]),
            })
            log.error("segmentlog %s: damaged record(s) in %s at offset %d (%s): sequence "
                      "%d..%d skipped, bytes kept in %s", state.directory, name, d.offset,
                      d.kind, d.first_missing_seq, d.resume_seq - 1,
                      deadletter.path_of(state.directory))
        deadletter.append(state.directory, entries)

    def missing(self, base: int, first: int, resume: int) -> None:
        """Records ``first``..``resume - 1`` are in no segment after segment ``base``."""
        key = (segment_name(base), -first)
        if key in self.keys:
            return
        self.keys.add(key)
        self.state.counters["damaged_regions"] += 1
        self.state.note(f"records {first}..{resume - 1} are missing after segment "
                        f"{segment_name(base)} (damaged or deleted)")
