"""Programs and entities for the Postgres tests that run nodes as real processes."""
