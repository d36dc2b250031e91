"""Where results leave the pipeline: ClickHouse tables, producers, metrics."""
