"""The six GDO descriptors (ALGORITHM.md §3), one module per statistic, and their extraction."""
