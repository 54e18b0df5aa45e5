"""Dagster assets, checks and partitions of gdo; each module calls gdo_core for the method."""

import warnings

from dagster import BetaWarning

# We rely on these beta APIs on purpose (observed per-chunk data versions for staleness, the
# profile -> profile|arm partition mapping), so their beta notices are noise for every gdo user.
# Only these are silenced: any other Dagster warning still shows.
warnings.filterwarnings(
    "ignore",
    category=BetaWarning,
    message=r"(Function|Class) `(observable_source_asset|DataVersionsByPartition|MultiToSingleDimensionPartitionMapping)` is currently in beta",
)
