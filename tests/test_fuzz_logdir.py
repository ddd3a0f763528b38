"""The directory fuzzer's short budget (tests/fuzz_logdir.py): every mutation kind, under
this backend, with a fixed seed.

Each mutation kind runs CASES cases once (in one worker process; a hang is caught by the
worker's alarm); four tests per kind then check one group of goals each:

* ``safety``: no crash, no hang, no wrong record, sequence numbers in order, no forged
  frame accepted that its segment could not hold, the log opens, appends and repairs;
* ``loss``: every intact pending record returned (loss amplification 0), appends read
  back, never numbered below what the reader passed;
* ``verify``: ``verify`` reports damage when a pending record was touched; the command
  line's verify and stats answer without refusing (exit 2);
* ``batch_bounds``: a batch's first_seq and last_seq are its first and last records' numbers.

The kind ``none`` mutates nothing: the control, which must pass every goal. The last
tests check the harness's own model of which records a mutation touched.

Every (kind, goal) passes: a (kind, goal) may be marked xfail(strict=True) in ``KNOWN``
only while its fix is on the way (a strict mark fails the run once it passes). A
failure prints the command that replays the case. A special file under a name the log
owns is refused with a clear error by design (FORMAT.md): the harness notes it, it is
not counted as an unopenable log.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest
from fuzz_logdir import (
    ALL_KINDS,
    TEMPLATES,
    Outcome,
    Plan,
    Runner,
    Template,
    build_template,
)

SEED = 15
CASES = 16
ALARM = 60  # seconds; a FIFO wait is caught within about a second (fuzz_logdir._FifoWatch)

GROUPS = {
    "safety": {"crash", "hang", "wrong_record", "order", "forged_accepted", "unopenable",
               "append_refused", "repair_refused", "refused", "harness_error"},
    "loss": {"loss", "append_lost", "stale_append"},
    "verify": {"verify_silent", "verify_refused", "stats_refused", "verify_mismatch"},
    "batch_bounds": {"batch_bounds"},
}

# (kind, goal) pairs that fail under SEED, and why: none since the issue 15 fixes. A new
# failure found by a long run gets its fix (and a regression test), not an entry here.
KNOWN: dict[tuple[str, str], str] = {}


def _params() -> Iterator[object]:
    for kind in ALL_KINDS:
        for group in GROUPS:
            reason = KNOWN.get((kind, group))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            yield pytest.param(kind, group, marks=marks, id=f"{kind}-{group}")


@pytest.fixture(scope="module")
def outcomes() -> Iterator[Callable[[str], list[Outcome]]]:
    cache: dict[str, list[Outcome]] = {}
    with Runner(alarm=ALARM) as runner:

        def get(kind: str) -> list[Outcome]:
            if kind not in cache:
                cache[kind] = [runner.run(kind, case, SEED) for case in range(CASES)]
            return cache[kind]

        yield get


@pytest.mark.parametrize(("kind", "group"), list(_params()))
def test_mutation_kind_meets_goal(outcomes: Callable[[str], list[Outcome]], kind: str,
                                  group: str) -> None:
    bad = []
    for out in outcomes(kind):
        fails = [f for f in out.failures if f.check in GROUPS[group]]
        if fails:
            f = fails[0]
            bad.append(f"case {out.case}: {f.check} in {f.phase} [{f.where}] {f.detail[:200]}"
                       f" (replay: python tests/fuzz_logdir.py --seed {SEED} --kind {kind} "
                       f"--case {out.case} --in-process)")
    assert not bad, f"{len(bad)} of {CASES} cases fail:\n" + "\n".join(bad)


# ------------------------------------------------------------------ the harness's own model


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build_template(TEMPLATES[0], str(tmp_path_factory.mktemp("fuzz-template")))


def _plan(template: Template) -> Plan:
    return Plan(template, random.Random(0))


def test_touched_counts_the_checksummed_bytes_of_a_frame(template: Template) -> None:
    seq = template.checkpoint + 5
    fr = template.frames[seq]
    plan = _plan(template)
    plan.write(fr.segment, fr.end - 1, bytes([template.files[fr.segment][fr.end - 1] ^ 1]))
    assert plan.touched() == {seq}
    plan = _plan(template)
    plan.write(fr.segment, fr.offset, b"\xff")  # the marker's first byte
    assert plan.touched() == {seq}


def test_touched_ignores_padding_and_unchanged_bytes(template: Template) -> None:
    fr = next(f for f in template.frames.values() if f.size > f.end - f.offset)
    plan = _plan(template)
    plan.write(fr.segment, fr.end, b"\x01")  # padding: not covered by the checksum
    plan.write(fr.segment, 0, b"\x00")  # the segment header: no record
    same = template.files[fr.segment][fr.offset : fr.end]
    plan.write(fr.segment, fr.offset, same)  # the same bytes again: nothing changes
    assert plan.touched() == set()


def test_touched_follows_renames_copies_and_truncation(template: Template) -> None:
    first, second = template.segments[:2]
    plan = _plan(template)
    plan.rename(first, "00000000000000999999.seg")  # bytes intact under another name
    assert plan.touched() == set()
    plan.truncate("00000000000000999999.seg", 32)
    assert plan.touched() == set(template.by_segment[first])
    plan = _plan(template)
    plan.copy(second, "00000000000000888888.seg")
    plan.unlink(second)  # the copy still holds every frame intact
    assert plan.touched() == set()
