"""Unit tests of searchengine.index: vector indexes, the factory policy, the nprobe calibrator."""
