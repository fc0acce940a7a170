"""Read back what trend scoring published (`keyflow trends top`).

Apart from :mod:`tasks.trends` on purpose: that module imports Prefect and the scoring code, a second or more
that a quick look-up in the serving table does not need.
"""

from __future__ import annotations

from typing import Any

from config.models import Profile, TrendConfig
from tasks.resources import trend_serving_for


def top_articles(
    profile: Profile, job: TrendConfig, gender: str | None, segment: str | None, limit: int
) -> list[dict[str, Any]] | None:
    """The published top articles of one audience, best first, at most ``limit`` (empty when none or expired).

    None when no ranking was ever published: the serving table does not exist yet.
    """
    ranking = trend_serving_for(profile, job).top(gender, segment)
    return None if ranking is None else ranking[:limit]
