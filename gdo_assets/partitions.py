"""Partitions shared by the gdo assets, defined once."""

from dagster import DynamicPartitionsDefinition

POOL_CHUNKS = "pool_chunks"

# One partition per chunk of a pool file, keyed `<pool>-<chunk index>`.
pool_chunks = DynamicPartitionsDefinition(name=POOL_CHUNKS)
