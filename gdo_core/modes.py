"""The two modes the selection runs in (docs/method.md, Fixes and the published mode).

`published` reproduces the published build step bit for bit (quirks included); `default` keeps
the fixes (MCQ on raw text upstream, order-free seeded draws from numpy, pools = exact top-k by
(score, tie-break)).
"""

from __future__ import annotations

from typing import Literal

Mode = Literal["default", "published"]
