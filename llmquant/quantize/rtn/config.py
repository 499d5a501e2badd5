"""RTN's variant config (the recipe's `method: rtn`)."""

from __future__ import annotations

from typing import Literal

from ..config import WeightOnlyVariant


class RTNVariant(WeightOnlyVariant):
    """Round-to-nearest: each group's min/max (or absmax) sets its grid; no calibration."""

    method: Literal["rtn"]
