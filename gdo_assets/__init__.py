"""Dagster assets, checks and partitions of gdo; each module calls gdo_core for the method."""

import warnings

from dagster import BetaWarning

# Observable source assets and DataVersionsByPartition are beta in Dagster 1.13; we rely on them
# on purpose for per-chunk staleness, so their warning is noise for every gdo user.
warnings.filterwarnings("ignore", category=BetaWarning)
