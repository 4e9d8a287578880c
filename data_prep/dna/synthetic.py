"""SYNTHETIC genomes for offline demos and tests: not biology, a seeded stand-in with the shape of the real task.

:func:`write_synthetic_genomes` writes ``<species>.fa`` files (one record per strain, headers
``species|strain=NAME|...``) so that demos run the real ``prepare_genomes`` path. How they are made:

1. each species' chromosome is drawn from its own order-2 Markov chain: a GC content drawn from
   :data:`GC_RANGE` and, for each of the 16 two-base contexts, next-base log-probabilities perturbed by
   :data:`SIGNATURE_STRENGTH` x N(0, 1). This is the "genomic signature" of real genomes (Karlin & Burge 1995:
   the dinucleotide relative abundances of a genome are species-specific and nearly constant along it); real
   bacterial species differ in GC content (25-75 %) and in such short-word biases, which is what k-mer profiles
   and a pooled model both read;
2. repeat families: motifs of 60-300 bp, inserted in either orientation with 10% mutations, soft-masked (lower
   case) as real repeat annotations are. Every species carries every family at a low background density, plus two
   families of its own at a higher one;
3. each strain descends from its species by substitutions (a species-specific transition/transversion and GC bias)
   and small indels at a low rate, and gets one run of N (an assembly gap).

Why longer windows genuinely help: the species differ in the frequencies of short words by a few percent, far
below the sampling noise of a hundred bases, so a short window is hard to place; a window of thousands of bases
averages that noise away and may hold repeat copies of the species' own families. On the default genomes a 4-mer
logistic regression places about half of 100 bp windows of held-out strains (chance: 20%) and all 10 kb ones.

(Until 2026-12 the species descended from one shared random ancestor at 6% divergence: near-identical sequences
whose k-mer profiles differed only by per-site variants, strains of one species rather than species. A 6-mer
regression could memorise those variants; a small model trained for a minute could not, and the demo sat at chance.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

GC_RANGE = (0.35, 0.65)  # each species' GC content is drawn uniformly from this range
SIGNATURE_STRENGTH = 0.15  # standard deviation of a species' context-dependent next-base log-probabilities
MARKOV_ORDER = 2
STRAIN_DIVERGENCE = 0.004  # substitutions per site, species -> strain
STRAIN_INDEL_RATE = 1e-4
MOTIF_LENGTHS = (60, 300)
OWN_FAMILIES = 2  # repeat families enriched in each species
OWN_DENSITY = 1 / 10_000  # copies per base of each of a species' own families
BACKGROUND_DENSITY = 1 / 50_000  # mean copies per base of every other family
REPEAT_MUTATION = 0.1
GAP_LENGTHS = (50, 200)
_LOWER = 8  # code flag of a soft-masked base; codes are A C G T N = 0 1 2 3 4
_LETTERS = np.frombuffer(b"ACGTN???acgt", dtype=np.uint8)


def write_synthetic_genomes(out_dir: str | os.PathLike, *, n_species: int = 5, strains: int = 3,
                            length: int = 200_000, seed: int = 0, line_width: int = 80) -> list[Path]:
    """Write ``n_species`` files ``synth_00.fa ...`` of ``strains`` records of about ``length`` bases each.

    Deterministic in all arguments; returns the file paths. Species names sort in label order.
    """
    if n_species < 1 or strains < 1 or length < 1_000:
        raise ValueError("need n_species >= 1, strains >= 1 and length >= 1000")
    rng = np.random.default_rng(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_families = OWN_FAMILIES * n_species
    motifs = [rng.integers(0, 4, rng.integers(*MOTIF_LENGTHS, endpoint=True)).astype(np.uint8)
              for _ in range(n_families)]
    paths = []
    for s in range(n_species):
        name = f"synth_{s:02d}"
        gc = rng.uniform(*GC_RANGE)
        spectrum = _spectrum(kappa=rng.uniform(1.0, 8.0), gc=gc)
        densities = BACKGROUND_DENSITY * rng.lognormal(0.0, 1.0, n_families)
        densities[s * OWN_FAMILIES: (s + 1) * OWN_FAMILIES] = OWN_DENSITY
        genome = _markov_chain(rng, _signature(rng, gc, SIGNATURE_STRENGTH), length)
        genome = _insert_repeats(rng, genome, motifs, densities)
        records = []
        for j in range(strains):
            strain = _evolve(rng, genome, STRAIN_DIVERGENCE, STRAIN_INDEL_RATE, spectrum)
            gap = int(rng.integers(*GAP_LENGTHS))
            at = int(rng.integers(0, strain.size - gap))
            strain[at: at + gap] = 4
            header = f">{name}|strain=S{j + 1}|{name}_S{j + 1} synthetic chromosome 1"
            records.append(header.encode() + b"\n" + _wrap(_LETTERS[strain].tobytes(), line_width))
        path = out / f"{name}.fa"
        path.write_bytes(b"".join(records))
        paths.append(path)
    return paths


def _signature(rng: np.random.Generator, gc: float, strength: float) -> np.ndarray:
    """``(4 ** MARKOV_ORDER, 4)`` cumulative next-base probabilities of each context (its bases, oldest first, as a
    base-4 number): the GC content's base frequencies times exp(``strength`` x N(0, 1)) per context and base."""
    frequencies = np.array([1 - gc, gc, gc, 1 - gc]) / 2
    logits = np.log(frequencies) + strength * rng.standard_normal((4 ** MARKOV_ORDER, 4))
    probabilities = np.exp(logits)
    return np.cumsum(probabilities / probabilities.sum(axis=1, keepdims=True), axis=1)


def _markov_chain(rng: np.random.Generator, signature: np.ndarray, length: int) -> np.ndarray:
    """``(length,)`` uint8 base codes drawn from the chain of cumulative probabilities ``signature``."""
    uniform = rng.random(length)
    n_contexts = signature.shape[0]
    # every context's draw at every position (vectorized); the walk then reads its context's draw at each position
    draws = [bytes(np.minimum((uniform[None, :] > signature[c, :, None]).sum(axis=0), 3).astype(np.uint8))
             for c in range(n_contexts)]
    seq = bytearray(length)
    context = int(rng.integers(n_contexts))
    for i in range(length):
        base = draws[context][i]
        seq[i] = base
        context = (context * 4 + base) % n_contexts
    return np.frombuffer(bytes(seq), dtype=np.uint8).copy()


def _spectrum(kappa: float, gc: float) -> np.ndarray:
    """``(4, 4)`` cumulative substitution probabilities: row = old base, column = new base (never the old one).

    A new base weighs ``kappa`` if the change is a transition (A<->G, C<->T), and ``gc`` or ``1 - gc`` as it is G/C
    or A/T.
    """
    weights = np.zeros((4, 4))
    for old in range(4):
        for new in range(4):
            if new != old:
                transition = {old, new} in ({0, 2}, {1, 3})
                weights[old, new] = (kappa if transition else 1.0) * (gc if new in (1, 2) else 1.0 - gc)
    return np.cumsum(weights / weights.sum(axis=1, keepdims=True), axis=1)


def _evolve(rng: np.random.Generator, seq: np.ndarray, rate: float, indel_rate: float,
            spectrum: np.ndarray) -> np.ndarray:
    """A descendant of ``seq`` (codes, a copy): substitutions from ``spectrum`` at ``rate``, then indels."""
    seq = seq.copy()
    sites = np.flatnonzero((rng.random(seq.size) < rate) & ((seq & 7) < 4))
    old = seq[sites] & 3
    new = (rng.random(sites.size)[:, None] > spectrum[old]).sum(axis=1)
    seq[sites] = new | (seq[sites] & _LOWER)
    n_del, n_ins = rng.poisson(indel_rate / 2 * seq.size, 2)
    starts, lengths = rng.integers(0, seq.size, n_del), rng.geometric(0.5, n_del)
    keep = np.ones(seq.size, dtype=bool)
    keep[np.minimum(_spans(starts, lengths), seq.size - 1)] = False
    seq = seq[keep]
    lengths = rng.geometric(0.5, n_ins)
    return np.insert(seq, np.repeat(rng.integers(0, seq.size, n_ins), lengths),
                     rng.integers(0, 4, lengths.sum()).astype(np.uint8))


def _insert_repeats(rng: np.random.Generator, seq: np.ndarray, motifs: list[np.ndarray],
                    densities: np.ndarray) -> np.ndarray:
    """``seq`` with Poisson(density * length) mutated, randomly oriented, soft-masked copies of each motif."""
    copies = []
    for motif, density in zip(motifs, densities):
        block = np.tile(motif, (rng.poisson(density * seq.size), 1))
        mutated = rng.random(block.shape) < REPEAT_MUTATION
        block[mutated] = rng.integers(0, 4, mutated.sum())
        reverse = rng.random(len(block)) < 0.5
        block[reverse] = 3 - block[reverse, ::-1]  # reverse complement, with A C G T = 0 1 2 3
        copies.extend(block)
    if not copies:
        return seq
    lengths = np.array([c.size for c in copies])
    positions = rng.integers(0, seq.size, len(copies))
    return np.insert(seq, np.repeat(positions, lengths), np.concatenate(copies) | _LOWER)


def _spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """All positions ``start + 0 .. start + length - 1`` of each span, concatenated."""
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + offsets


def _wrap(chars: bytes, width: int) -> bytes:
    """FASTA sequence lines of ``width`` characters, each ending in a newline."""
    return b"".join(chars[i: i + width] + b"\n" for i in range(0, len(chars), width))
