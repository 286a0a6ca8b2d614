"""Training engine: config building, the nucdet trainer and its hooks."""
