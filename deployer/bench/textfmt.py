"""Numbers as the bench's explanations write them (`1,234`, `12.5 ms`, `90%`)."""

from __future__ import annotations


def num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{num(value)} ms"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def setting_value(v: float) -> str:
    """A profile setting as tune shows it: `1,024` for an int, `0.661` for a fraction."""
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"
