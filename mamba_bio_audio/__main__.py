"""``python -m mamba_bio_audio`` = ``mba``."""

from mamba_bio_audio.cli import main

main()
