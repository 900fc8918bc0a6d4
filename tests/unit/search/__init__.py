"""Unit tests of searchengine.search: ranking and fusion."""
