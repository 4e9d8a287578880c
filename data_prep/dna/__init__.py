"""DNA: FASTA/2bit -> tokens -> memory-mapped token store -> windows."""
