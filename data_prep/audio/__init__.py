"""Audio: WAV/FLAC -> waveforms -> 8-bit mu-law tokens -> token store."""
