"""Instructions per event of the Auditor's store paths, for callgrind (repeatable on a
busy machine, where wall-clock timings are not).

Usage: valgrind --tool=callgrind python benchmarks/cost_store_paths.py STORE PATH N
  STORE: memory | file (fsync="never": the Python and C work, not the disk)
  PATH:  setup   only builds N events and their bytes (subtract it)
         spill   the delivery thread's spill: parts of 100 with write_many_encoded
         ahead   write-ahead: record()'s dump_event, then write_many_encoded of one
         fill    write_many of the events (decoded; subtract it from drain)
         drain   fill, then read_encoded_up_to(1000) + commit until empty
Run with N and 2N; (instructions(2N) - instructions(N)) / N is the cost per event
without the interpreter's start. Results: benchmarks/README.md, "Backing stores".
"""

from __future__ import annotations

import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from prometheus_client import CollectorRegistry  # noqa: E402

from segmentlog.cadf import dump_event  # noqa: E402
from segmentlog.store import BackingStore, FileStore, MemoryStore  # noqa: E402

_BASE = {
    "typeURI": "http://schemas.dmtf.org/cloud/audit/1.0/event",
    "eventTime": "2025-11-29T22:58:00.123456+00:00", "eventType": "activity",
    "action": "update/set", "outcome": "success",
    "reason": {"reasonType": "HTTP", "reasonCode": "200"},
    "initiator": {"typeURI": "service/security/account/user", "id": "3a1b2c",
                  "name": "alice", "domain": "default", "project_id": "p-123",
                  "host": {"address": "10.0.0.7", "agent": "python-requests/2.32"}},
    "target": {"typeURI": "service/resources/quota", "id": "q-456", "attachments": []},
    "observer": {"typeURI": "service/resources", "id": "limes", "name": "limes"},
    "requestPath": "/v1/domains/d1/projects/p-123",
}
_PART = 100  # events per spilled part


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[1] not in ("memory", "file") or argv[2] not in (
            "setup", "spill", "ahead", "fill", "drain"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, path, n = argv[1], argv[2], int(argv[3])
    datas = [{**_BASE, "id": f"d6a8c9b1-2f1e-4a53-9f0c-{i:012d}"} for i in range(n)]
    bodies = [dump_event(d) for d in datas]
    registry = CollectorRegistry()
    with tempfile.TemporaryDirectory() as tmp:
        store: BackingStore = (
            MemoryStore(max_events=n + 1, registry=registry) if kind == "memory"
            else FileStore(tmp, fsync="never", max_file_size=64 << 20, registry=registry))
        with store:
            if path == "spill":
                for i in range(0, n, _PART):
                    store.write_many_encoded(bodies[i:i + _PART])
            elif path == "ahead":
                for d in datas:
                    store.write_many_encoded((dump_event(d),))
            elif path in ("fill", "drain"):
                store.write_many(datas)
                while path == "drain":
                    _, _, commit = store.read_encoded_up_to(1000)
                    if commit is None:
                        break
                    commit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
