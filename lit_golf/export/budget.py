"""The artifact's byte table (per tensor group, header, code) and the 16,000,000-byte budget check."""

from __future__ import annotations

from dataclasses import dataclass


class ArtifactTooLarge(RuntimeError):
    """Model + code exceed the byte budget; the message is a one-line summary followed by the size table."""


@dataclass
class SizeRow:
    """One part of the submission: compressed bytes (what counts), and what they hold."""

    part: str
    compressed: int
    raw: int = 0
    tensors: int = 0
    params: int = 0
    rel_error: float | None = None  # relative output error of the group's matrices on calibration inputs


def total_bytes(rows: list[SizeRow]) -> int:
    return sum(row.compressed for row in rows)


def size_table(rows: list[SizeRow], budget_bytes: int) -> str:
    """Fixed-width text table of `rows`, their total, the budget and the margin left."""
    header = f"{'part':<14}{'tensors':>8}{'params':>13}{'raw bytes':>13}{'bytes':>13}{'bits/param':>11}{'rel err':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        bits = f"{8 * row.compressed / row.params:.3f}" if row.params else ""
        err = f"{row.rel_error:.2e}" if row.rel_error is not None else ""
        tensors = str(row.tensors) if row.tensors else ""
        params = f"{row.params:,}" if row.params else ""
        lines.append(f"{row.part:<14}{tensors:>8}{params:>13}{row.raw:>13,}{row.compressed:>13,}{bits:>11}{err:>10}")
    total = total_bytes(rows)
    params = sum(row.params for row in rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<14}{'':>8}{params:>13,}{sum(r.raw for r in rows):>13,}{total:>13,}"
                 f"{8 * total / params if params else 0:>11.3f}")
    lines.append(f"{'budget':<14}{'':>34}{budget_bytes:>13,}")
    lines.append(f"{'margin':<14}{'':>34}{budget_bytes - total:>+13,}")
    return "\n".join(lines)


def check_budget(rows: list[SizeRow], budget_bytes: int, table: str | None = None) -> None:
    """Raise `ArtifactTooLarge` when the parts add up to more than `budget_bytes`."""
    total = total_bytes(rows)
    if total > budget_bytes:
        raise ArtifactTooLarge(
            f"artifact + code = {total:,} bytes, {total - budget_bytes:,} over the {budget_bytes:,}-byte budget; "
            "raise the clip sigmas or lower matrix_bits/embed_bits in ExportConfig, or shrink the model\n"
            + (table or size_table(rows, budget_bytes))
        )
