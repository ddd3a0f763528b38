"""The parts of :class:`segmentlog.log.SegmentLog`, each owning its state.

``state`` (what all parts share: the directory, its segment list, the writer lock, closed
and failed), ``maps`` (mapped segment files), ``durability`` (one policy class per fsync
mode), ``preparer`` (the next segment file, off the append path), ``damage`` (damaged
bytes to the dead-letter file), ``reader``, ``retention`` (checkpoint, reclaiming,
space), ``sync`` (group commit rounds), ``writer`` (segments, map windows, append
paths) and ``recovery`` (finding where the records end on open). Lower parts never
import higher ones; none imports segmentlog.log.
"""
