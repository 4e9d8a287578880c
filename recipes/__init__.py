"""Recipes: thin click commands registered under ``mba`` (installed as ``mamba_bio_audio.recipes``)."""
