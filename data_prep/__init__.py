"""Domain pipelines: files -> token stores -> datasets of integer tensors (installed as ``mamba_bio_audio.data_prep``)."""
