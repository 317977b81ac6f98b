"""The driver: rounds, pool, final set (`driver` reads top to bottom as the pipeline)."""
