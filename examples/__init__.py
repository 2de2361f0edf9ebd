"""Package data: the configuration example generated from the schema."""
