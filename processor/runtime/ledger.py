"""The offset ledger: the one writer of a stage's commit positions.

Per partition it holds

* the **watermark**: the offset (next to read) after the longest run of records, from
  the last commit on, that are finished: their outputs produced (acknowledged by the
  time the commit strategy has flushed), dead-lettered or dropped;
* a **fence**: the offset of the first record that failed or is unfinished when the
  stage had to stop. No commit passes a fence, whatever finishes after it.

Every record path reports finished records here (`advance`, once per batch on the
synchronous path, as records leave on the concurrent one); the commit strategies take
what is committable from here (`committable`) and report back (`committed`).

A fatal error ends the stage in one of two ways:

* `freeze`: a record failed (the error policy stopped on it, a handler raised a
  `BaseException`, it had to be dead-lettered with no dead-letter topic). Every
  partition is fenced where its watermark stands: the records finished before the
  failure may still be committed (once their outputs are acknowledged), nothing that
  finishes after it (no drain, no revocation) moves a watermark again.
* `fence_all`: an output failed, and which record it belonged to is not known. Every
  partition is fenced at its last commit: nothing more is committable.

Bookkeeping only, on the stage's thread: no broker call is made from here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from processor.backends.abstract import TopicPartition


class OffsetLedger:
    """Watermarks and fences of one stage's partitions (see the module documentation)."""

    __slots__ = ("failure", "fences", "frozen", "marks", "produced", "produced_bytes")

    def __init__(self) -> None:
        self.marks: dict[TopicPartition, int] = {}
        """Partition -> offset (next to read) up to which records are finished and not
        yet committed."""
        self.fences: dict[TopicPartition, int] = {}
        """Partition -> offset no commit may pass."""
        self.failure: str | None = None
        """Why the stage must stop, once a fatal error froze the ledger."""
        self.frozen = False
        """Set by a fatal error: no watermark moves any more."""
        self.produced = 0
        """Records written (outputs and dead letters) since the last commit."""
        self.produced_bytes = 0
        """Their bytes."""

    def __bool__(self) -> bool:
        """Whether anything finished is waiting for a commit."""
        return bool(self.marks)

    # --- records finished ------------------------------------------------------------

    def advance(self, tp: TopicPartition, offset: int) -> None:
        """Records of `tp` before `offset` are finished."""
        if self.frozen:
            return
        fence = self.fences.get(tp)
        if fence is not None and offset > fence:
            offset = fence
        if offset > self.marks.get(tp, -1):
            self.marks[tp] = offset

    def advance_all(self, moved: Mapping[TopicPartition, int]) -> None:
        """`advance` for each partition of `moved` (the batch form of the loop)."""
        marks = self.marks
        if self.fences or self.frozen:
            for tp, offset in moved.items():
                self.advance(tp, offset)
            return
        for tp, offset in moved.items():
            if offset > marks.get(tp, -1):
                marks[tp] = offset

    def wrote(self, records: int, size: int) -> None:
        """`records` outputs or dead letters of `size` bytes were produced."""
        self.produced += records
        self.produced_bytes += size

    # --- fences ----------------------------------------------------------------------

    def fence(self, tp: TopicPartition, offset: int) -> None:
        """No commit of `tp` may pass `offset` (a record that failed or is unfinished)."""
        current = self.fences.get(tp)
        if current is None or offset < current:
            self.fences[tp] = offset
        mark = self.marks.get(tp)
        if mark is not None and mark > offset:
            self.marks[tp] = offset

    def freeze(self, why: str) -> None:
        """A fatal error at a known record: every partition is fenced where its
        watermark stands now; nothing finishing later counts."""
        if self.failure is None:
            self.failure = why
        self.frozen = True

    def fence_all(self, why: str) -> None:
        """A fatal error at an unknown record (a failed output): nothing handled since
        the last commit may be committed, in any partition, ever (the records are read
        again after a restart)."""
        self.freeze(why)
        self.marks.clear()

    # --- commits ---------------------------------------------------------------------

    def committable(self, assigned: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """The offsets a commit may write now: the watermarks of assigned partitions
        (never past a fence)."""
        return {tp: offset for tp, offset in self.marks.items() if tp in assigned}

    def committed(self) -> None:
        """The last `committable` offsets and every output before them are durable."""
        self.marks.clear()
        self.produced = 0
        self.produced_bytes = 0

    def rewound(self) -> None:
        """Exactly-once, after an abort: what was finished since the last commit is
        gone with the transaction and will be handled again."""
        self.marks.clear()
        self.produced = 0
        self.produced_bytes = 0

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions revoked or lost: their positions belong to the next owner."""
        for tp in partitions:
            self.marks.pop(tp, None)
            self.fences.pop(tp, None)

    def describe(self) -> str:
        """What a stop now would leave uncommitted, in words."""
        parts = [f"{tp}@{offset}" for tp, offset in sorted(self.marks.items())]
        text = (f"handled up to (not including) {', '.join(parts)}" if parts
                else "no handled record")
        return text + f"; {self.produced} output(s) since the last commit"
