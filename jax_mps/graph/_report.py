"""What `mps.graph.explain` returns: one row per network op, counts, and a readable table."""
from __future__ import annotations

from collections import Counter

_CHANGED = ("converted", "fused", "concat eliminated")


class Report:
    """Rows of (where, op, outcome, detail); `counts` per outcome; `other` counts the untouched
    equations that are not network ops (element-wise, reshapes, reductions...) per primitive."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []
        self.other_ops: Counter = Counter()

    def add(self, where, op, outcome, detail=""):
        self.rows.append((where, op, outcome, detail))

    def other(self, name):
        self.other_ops[name] += 1

    def changes(self) -> int:
        return sum(1 for r in self.rows if r[2] in _CHANGED)

    @property
    def counts(self) -> dict:
        c = Counter(r[2] for r in self.rows)
        if self.other_ops:
            c["other ops left to XLA"] = sum(self.other_ops.values())
        return dict(c)

    def __len__(self):
        return len(self.rows)

    def __str__(self):
        head = ("where", "op", "outcome", "detail")
        rows = [head] + [tuple(r) for r in self.rows]
        widths = [min(max(len(r[i]) for r in rows), 40) for i in range(3)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
        lines.insert(1, "-" * (sum(widths) + 12))
        lines.append("")
        lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        if self.other_ops:
            lines.append("other ops left to XLA: " + ", ".join(f"{k} {v}" for k, v in self.other_ops.most_common()))
        return "\n".join(lines)

    __repr__ = __str__
