"""The six GDO descriptors, one module per statistic, and their extraction
(docs/method.md, Descriptors)."""
