"""Unit tests of searchengine.models: the spec registry, CLIP loading and precision, backbones, BLIP."""
