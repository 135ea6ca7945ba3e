"""Programs and support for the Postgres fault tests (tests/test_faults_postgres.py)."""
