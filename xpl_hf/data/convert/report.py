"""What a conversion wrote, skipped, reported and repaired: per-sample problems and ``conversion_report.json``."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections import defaultdict
from typing import Any

from ..schema import BoxReport

logger = logging.getLogger(__name__)

REPORT_NAME = "conversion_report.json"
MAX_WARNINGS_PER_REASON = 20


class SampleProblem(Exception):
    """A sample that cannot be converted: ``reason`` (a short category, the report's key), ``detail`` (the message)
    and the repairs made to its boxes before it failed."""

    def __init__(self, reason: str, detail: str = "", box_report: BoxReport | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.box_report = reason, detail, box_report or BoxReport()


def shown(text: str) -> str:
    """``text`` as printable UTF-8: bytes of a file name in another encoding become ``\\xNN``."""
    try:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    except UnicodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclasses.dataclass
class ConversionReport:
    """What a conversion wrote, skipped, reported and repaired.

    ``written`` holds rows per split; ``boxed`` the rows per split that carry at least one box (the others are
    unlabelled rows, ``gt_rule="none"``, or evaluation rows left without a valid box).
    """

    kind: str
    written: dict[str, int] = dataclasses.field(default_factory=dict)
    boxed: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))  # reason -> ids
    reported: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))  # kept samples
    problems: list[dict[str, str]] = dataclasses.field(default_factory=list)  # one record per sample and problem
    boxes: BoxReport = dataclasses.field(default_factory=BoxReport)
    repaired_ids: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def skip(self, reason: str, sample_id: str, detail: str = "", split: str = "") -> None:
        """Record a skipped sample."""
        self._add(self.skipped, "skipped", reason, sample_id, detail, split)

    def note(self, reason: str, sample_id: str, detail: str = "", split: str = "") -> None:
        """Record a problem of a sample that is kept."""
        self._add(self.reported, "kept", reason, sample_id, detail, split)

    def add_shard(self, record: dict[str, Any], split: str, log: bool = True) -> None:
        """Add one written shard's record (its ``ids``, ``boxed`` count, ``problems``, ``box_repairs`` and
        ``repaired_ids``); ``log``: warn about its problems again (a shard resumed from an earlier run)."""
        self.written[split] = self.written.get(split, 0) + len(record["ids"])
        self.boxed[split] = self.boxed.get(split, 0) + record["boxed"]
        for p in record["problems"]:
            if log:
                (self.skip if p["action"] == "skipped" else self.note)(p["reason"], p["id"], p["detail"], p["split"])
            else:
                (self.skipped if p["action"] == "skipped" else self.reported)[p["reason"]].append(p["id"])
                self.problems.append(p)
        self.boxes += BoxReport(**record["box_repairs"])
        self.repaired_ids += record["repaired_ids"]

    def _add(self, table, action, reason, sample_id, detail, split) -> None:
        table[reason].append(sample_id)
        self.problems.append({"id": sample_id, "split": split, "reason": reason, "detail": detail, "action": action})
        n = len(table[reason])
        if n <= MAX_WARNINGS_PER_REASON:
            logger.warning("%s sample %r (%s): %s%s", action, sample_id, split, reason, f" ({detail})" * bool(detail))
        elif n == MAX_WARNINGS_PER_REASON + 1:
            logger.warning("more samples %s for %r: every id is in %s", action, reason, REPORT_NAME)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "written": dict(self.written),
            "boxed": dict(self.boxed),
            "num_skipped": self.num_skipped,
            "skipped": {k: list(v) for k, v in self.skipped.items()},
            "reported": {k: list(v) for k, v in self.reported.items()},
            "problems": list(self.problems),
            "box_repairs": self.boxes.as_dict(),
            "repaired_ids": list(self.repaired_ids),
            **self.extra,
        }

    def save(self, path: str) -> None:
        """Write :meth:`as_dict` as JSON, atomically (a temporary file, then ``os.replace``)."""
        with open(path + ".tmp", "w") as f:
            json.dump(self.as_dict(), f, indent=2)
        os.replace(path + ".tmp", path)

    def summary(self) -> str:
        """Rows per split, boxed and unlabelled apart (they add up to the split's rows), then every problem."""
        parts = []
        for split, n in self.written.items():
            boxed = self.boxed.get(split, 0)
            parts.append(f"{split}={n} ({boxed} boxed, {n - boxed} without box)")
        lines = [f"{self.kind}: wrote " + (", ".join(parts) if parts else "no row")]
        for what, table in (("skipped", self.skipped), ("kept but reported", self.reported)):
            for reason, ids in table.items():
                listed = ", ".join(shown(i) for i in ids[:5]) + (" ..." if len(ids) > 5 else "")
                lines.append(f"  {what} {len(ids)} ({reason}): {listed}")
        if self.boxes.repaired:
            lines.append(f"  box repairs: {self.boxes.describe()} in {len(self.repaired_ids)} sample(s)")
        for k, v in self.extra.items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)
