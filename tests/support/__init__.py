"""Shared test helpers: tiny models, generated images, the crash harness, PostgreSQL and HTTP fixtures."""
