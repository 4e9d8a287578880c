"""The domain library the recipes call, one room per task: ``windows`` (DNA window training shared by ``species``
and ``dna_lm``), ``species``, ``dna_lm``, ``classify``, ``audio_data``, ``audio_lm`` and ``audio_generation``
(SC09), ``synthetic`` and ``synthetic_table`` (the paper's synthetic tasks), ``baselines`` (k-mer logistic
regression)."""
