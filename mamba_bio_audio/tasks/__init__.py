"""The domain library the recipes call: one module per task (species, DNA LM, audio, synthetic, baselines)."""
