"""Unit tests of the indexer package: scan and diff, sidecars, downloads, catalogs."""
