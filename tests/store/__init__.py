"""The store on the SQLite + PostgreSQL matrix: each test runs once per backend (``store_url``/``store``
fixtures in tests/conftest.py), or on PostgreSQL alone (tests.support.pg); PostgreSQL cases skip
without ``TEST_POSTGRES_URL`` locally and fail without it under CI."""
