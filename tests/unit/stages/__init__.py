"""Unit tests of searchengine.stages: rerank, caption/VQA and zero-shot functions."""
