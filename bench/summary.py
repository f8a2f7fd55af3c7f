"""What every benchmark table quotes: the median over sittings and the range."""

from __future__ import annotations

import statistics


def med_range(values: list, fmt: str) -> str:
    """'median [min-max]' of the values that were measured ('-' when none was)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"
