"""Caduceus (Schiff et al. 2024): bidirectional, reverse-complement (RC) equivariant Mamba models for DNA, in the
layout of the published checkpoints (``kuleshov-group/caduceus-ps_*`` and ``caduceus-ph_*``) so they load.

- **BiMamba** (:class:`BiMamba`): a forward mixer and a reverse mixer run on the flipped sequence; the reverse
  mixer's ``in_proj`` and ``out_proj`` are the forward one's (tied), its conv, x_proj, dt_proj, A and D its own.
  The two outputs are combined by ``add`` or ``ew_multiply``. (``MambaConfig.bidirectional`` here is another
  model: one mixer, every weight shared by both directions.)
- **RCPS** (reverse-complement parameter sharing, ``rcps: true``, the "ps" checkpoints): hidden states have
  ``2 * d_model`` channels, the second half the reverse complement of the first (flipped in length and channel).
  The embedding writes both halves (:class:`RCPSEmbedding`), every block runs its norm and mixer on the first
  half and on the RC of the second (:class:`RCPSWrapper`), the LM head adds both halves' logits
  (:class:`RCPSLMHead`): the logits of a sequence's reverse complement are its logits reversed and complemented.
- **Ph** ("post-hoc", the non-RCPS checkpoints): :func:`rc_average` averages a model's logits over a sequence
  and its reverse complement, which makes any model RC equivariant at inference.

As Caduceus' code, the blocks of a ``fused_add_norm: true`` RCPS model (its published checkpoints) normalise the
second half of the stream as the forward half and the flipped first half as the RC half, the halves exchanged
(:meth:`CaduceusBlock.forward`); ``fused_add_norm: false`` keeps them in place. Both orders are RC equivariant; a
checkpoint needs the order it was trained with. Logits cover the padded vocabulary, as Caduceus' do.

Tensor names follow ``CaduceusForMaskedLM`` (``caduceus.backbone.layers.{i}.mixer[.submodule].mamba_fwd.*`` ...),
so :meth:`CaduceusLM.from_pretrained` reads its config.json and safetensors (tied tensors written once), or a
``pytorch_model.bin`` (tied tensors stored under both names, sharing storage), also of the base ``Caduceus`` model
(``backbone.*``, no LM head: the head is the tied embedding).

Vocabularies: the published Caduceus checkpoints read the hyena-12 ids of our DNA tokenizer; PlantCaduceus
(``kuleshov-group/PlantCaduceus_l20`` ... ``_l32``) reads GPN's ``[PAD] [MASK] [UNK] a c g t`` (vocab_size 8, a
lower-casing ``tokenizer.json`` beside the weights). :func:`to_dna_vocabulary` re-indexes such a model's vocabulary
rows to the hyena-12 ids by the token names in its ``tokenizer.json`` (checked against its complement_map), and
refuses a vocabulary it cannot map; token ids are never taken as they are from another vocabulary.

:func:`dna_caduceus_config` makes a fresh Caduceus for the hyena-12 tokenizer (``dna pretrain --objective mlm``);
:mod:`~mamba_bio_audio.models.caduceus_classifier` puts a classification head on the backbone.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mamba_bio_audio.checkpoint import (
    CONFIG_NAME,
    load_state_dict_strict,
    read_config_dict,
    read_state_dict,
    write_checkpoint,
)
from mamba_bio_audio.config import JsonConfig, MambaConfig, read_json_object
from mamba_bio_audio.errors import CheckpointError, UserError
from mamba_bio_audio.modules.block import add_norm, init_weights, make_norm
from mamba_bio_audio.modules.mixer import Mamba

MODEL_TYPE = "caduceus"
STRATEGIES = ("add", "ew_multiply")
# HF PretrainedConfig keys that do not change the computation, and Caduceus' gradient_checkpointing_stride (a
# training-memory setting its newer CaduceusConfig writes)
_IGNORED_KEYS = {"model_type", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version",
                 "_name_or_path", "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "num_labels",
                 "id2label", "label2id", "problem_type", "return_dict", "output_hidden_states", "use_return_dict",
                 "gradient_checkpointing_stride"}
_SSM_KEYS = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
             "conv_bias", "bias"}


@dataclass
class CaduceusConfig(JsonConfig):
    """Caduceus' config.json fields (``CaduceusConfig`` of its code). ``vocab_size`` is padded up to
    ``pad_vocab_size_multiple`` and ``complement_map`` (token id -> id of its complement) extended with
    identities to it, as Caduceus does on load; ``ssm_cfg`` holds the mixer's fields (d_state, d_conv, expand ...).
    ``extra``: what our models record beside the weights (a classifier's head, the DNA window), as
    ``MambaConfig.extra``; written to config.json only when not empty."""

    d_model: int = 256
    n_layer: int = 4
    vocab_size: int = 12
    ssm_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = False
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    norm_epsilon: float = 1e-5
    initializer_cfg: dict | None = None
    bidirectional: bool = True
    bidirectional_strategy: str | None = "add"
    bidirectional_weight_tie: bool = True
    rcps: bool = False
    complement_map: dict | None = None
    tie_word_embeddings: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ssm_cfg) - _SSM_KEYS - {"use_fast_path", "layer"})
        if unknown:
            raise UserError(f"unknown Caduceus ssm_cfg fields: {', '.join(unknown)}")
        if self.ssm_cfg.get("layer", "Mamba1") != "Mamba1":
            raise UserError(f"only Mamba1 mixers are supported, the config asks for {self.ssm_cfg['layer']!r}")
        if self.bidirectional and (self.bidirectional_strategy or "add") not in STRATEGIES:
            raise UserError(f"bidirectional_strategy must be one of {STRATEGIES}, got {self.bidirectional_strategy!r}")
        m = self.pad_vocab_size_multiple
        self.vocab_size = (self.vocab_size + m - 1) // m * m
        if self.complement_map is not None:
            cmap = {int(k): int(v) for k, v in self.complement_map.items()}
            cmap.update({i: i for i in range(len(cmap), self.vocab_size)})
            if sorted(cmap) != list(range(self.vocab_size)) or sorted(cmap.values()) != list(range(self.vocab_size)):
                raise UserError(f"complement_map must map each token id 0..{self.vocab_size - 1} to one id")
            if any(cmap[cmap[i]] != i for i in cmap):
                raise UserError("complement_map must be its own inverse (the complement of a complement)")
            self.complement_map = {str(k): cmap[k] for k in sorted(cmap)}
        elif self.rcps:
            raise UserError("an RCPS Caduceus config needs a complement_map")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaduceusConfig:
        if data.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise UserError(f"not a Caduceus config (model_type {data['model_type']!r})")
        return super().from_dict({k: v for k, v in data.items() if k not in _IGNORED_KEYS})

    def to_dict(self) -> dict[str, Any]:
        data = {**super().to_dict(), "model_type": MODEL_TYPE, "architectures": ["CaduceusForMaskedLM"]}
        if not data["extra"]:
            del data["extra"]
        return data

    def mixer_config(self) -> MambaConfig:
        """The MambaConfig of one direction's mixer (and of the norms)."""
        ssm = {k: v for k, v in self.ssm_cfg.items() if k in _SSM_KEYS}
        return MambaConfig(d_model=self.d_model, n_layer=self.n_layer, vocab_size=self.vocab_size, **ssm,
                           rms_norm=self.rms_norm, norm_epsilon=self.norm_epsilon,
                           residual_in_fp32=self.residual_in_fp32, pad_vocab_size_multiple=1)

    def complement_ids(self) -> torch.Tensor:
        """(vocab_size,) int64: the complement of each token id."""
        return torch.tensor([self.complement_map[str(i)] for i in range(self.vocab_size)], dtype=torch.long)


def rc_hidden(x: torch.Tensor) -> torch.Tensor:
    """The reverse complement of (batch, seqlen, channels) hidden states: flipped in length and channel."""
    return x.flip(dims=(-2, -1))


def rc_ids(input_ids: torch.Tensor, complement: torch.Tensor) -> torch.Tensor:
    """input_ids (batch, seqlen) -> the reverse complement's ids (flipped, each id complemented)."""
    return complement.to(input_ids.device)[input_ids.flip(-1)]


def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[-1] // 2
    return x[..., :c], x[..., c:]


class BiMamba(nn.Module):
    """hidden (batch, seqlen, d_model) -> (batch, seqlen, d_model): forward mixer combined (add / ew_multiply) with
    a reverse mixer run on the flipped sequence, whose in_proj and out_proj are the forward mixer's (tied)."""

    def __init__(self, config: CaduceusConfig, layer_idx: int):
        super().__init__()
        mixer = config.mixer_config()
        self.bidirectional = config.bidirectional
        self.strategy = config.bidirectional_strategy or "add"
        self.mamba_fwd = Mamba(mixer, layer_idx)
        self.mamba_rev = Mamba(mixer, layer_idx) if config.bidirectional else None
        self.weight_tie = config.bidirectional and config.bidirectional_weight_tie
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.weight_tie:
            for name in ("in_proj", "out_proj"):
                rev, fwd = getattr(self.mamba_rev, name), getattr(self.mamba_fwd, name)
                rev.weight = fwd.weight
                rev.bias = fwd.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.mamba_fwd(hidden)
        if self.mamba_rev is None:
            return out
        back = self.mamba_rev(hidden.flip(1)).flip(1)
        return out + back if self.strategy == "add" else out * back


class RCPSWrapper(nn.Module):
    """x (batch, seqlen, 2 * d) -> (batch, seqlen, 2 * d): ``submodule`` on the first half and on the reverse
    complement of the second (its output reverse-complemented back)."""

    def __init__(self, submodule: nn.Module):
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fwd, rc = _halves(x)
        return torch.cat([self.submodule(fwd), rc_hidden(self.submodule(rc_hidden(rc)))], dim=-1)


class NormHolder(nn.Module):
    """Holds a norm as ``submodule`` (Caduceus' RCPSAddNormWrapper of a non-fused RCPS model: the tensor names)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.submodule = norm


def rcps_add_norm(norm: nn.Module, hidden: torch.Tensor, residual: torch.Tensor | None, backend: str,
                  residual_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The add-norm of each half of a (batch, seqlen, 2 * d) stream, the second half in RC orientation:
    (normed, new residual), both (batch, seqlen, 2 * d)."""
    h_fwd, h_rc = _halves(hidden)
    r_fwd, r_rc = _halves(residual) if residual is not None else (None, None)
    out_fwd, res_fwd = add_norm(norm, h_fwd, r_fwd, backend, residual_dtype)
    out_rc, res_rc = add_norm(norm, rc_hidden(h_rc), None if r_rc is None else rc_hidden(r_rc), backend,
                              residual_dtype)
    return torch.cat([out_fwd, rc_hidden(out_rc)], -1), torch.cat([res_fwd, rc_hidden(res_rc)], -1)


def swap_halves(x: torch.Tensor | None) -> torch.Tensor | None:
    if x is None:
        return None
    fwd, rc = _halves(x)
    return torch.cat([rc, fwd], dim=-1)


class CaduceusBlock(nn.Module):
    """(hidden, residual) -> (mixer(norm(hidden + residual)), hidden + residual); with RCPS, on 2 * d_model
    channels (see the module docstring for the halves' order of a ``fused_add_norm`` model)."""

    def __init__(self, config: CaduceusConfig, layer_idx: int):
        super().__init__()
        self.rcps = config.rcps
        self.swap = config.rcps and config.fused_add_norm
        self.residual_dtype = torch.float32 if config.residual_in_fp32 else None
        mixer = BiMamba(config, layer_idx)
        norm = make_norm(config.mixer_config())
        self.mixer = RCPSWrapper(mixer) if config.rcps else mixer
        self.norm = NormHolder(norm) if config.rcps and not config.fused_add_norm else norm

    @property
    def norm_module(self) -> nn.Module:
        return self.norm.submodule if isinstance(self.norm, NormHolder) else self.norm

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        backend = "auto"
        if not self.rcps:
            hidden, residual = add_norm(self.norm_module, hidden, residual, backend, self.residual_dtype)
        else:
            if self.swap:
                hidden, residual = swap_halves(hidden), swap_halves(residual)
            hidden, residual = rcps_add_norm(self.norm_module, hidden, residual, backend, self.residual_dtype)
        return self.mixer(hidden), residual


class RCPSEmbedding(nn.Module):
    """input_ids (batch, seqlen) -> (batch, seqlen, 2 * d_model): the embedding of the sequence, and the
    reverse-complemented embedding of its reverse complement."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.register_buffer("complement_map", config.complement_ids())
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.embedding(input_ids),
                          rc_hidden(self.embedding(rc_ids(input_ids, self.complement_map)))], dim=-1)


class RCPSLMHead(nn.Module):
    """(batch, seqlen, 2 * d_model) -> (batch, seqlen, vocab_size): the first half's logits plus the RC half's
    logits of the complemented tokens."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.register_buffer("complement_map", config.complement_ids())
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    @property
    def weight(self) -> nn.Parameter:
        return self.lm_head.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fwd, rc = _halves(x)
        return F.linear(fwd, self.weight) + F.linear(rc.flip(-1), self.weight[self.complement_map])


class Embeddings(nn.Module):
    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.word_embeddings = RCPSEmbedding(config) if config.rcps else nn.Embedding(config.vocab_size,
                                                                                       config.d_model)


class CaduceusBackbone(nn.Module):
    """input_ids (batch, seqlen) -> hidden (batch, seqlen, d_model), or 2 * d_model with RCPS.
    ``gradient_checkpointing``: in training, each block's activations are recomputed in the backward pass."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.gradient_checkpointing = False
        self.rcps = config.rcps
        self.residual_dtype = torch.float32 if config.residual_in_fp32 else None
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(CaduceusBlock(config, i) for i in range(config.n_layer))
        norm = make_norm(config.mixer_config())
        self.norm_f = NormHolder(norm) if config.rcps and not config.fused_add_norm else norm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embeddings.word_embeddings(input_ids), None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False)
            else:
                hidden, residual = layer(hidden, residual)
        norm = self.norm_f.submodule if isinstance(self.norm_f, NormHolder) else self.norm_f
        if self.rcps:
            return rcps_add_norm(norm, hidden, residual, "auto", self.residual_dtype)[0]
        return add_norm(norm, hidden, residual, "auto", self.residual_dtype)[0]


class _Holder(nn.Module):
    """``caduceus.backbone``: Caduceus' ``Caduceus`` module level, kept for the tensor names."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.backbone = CaduceusBackbone(config)


class CaduceusBackboneAccess:
    """``backbone`` and ``gradient_checkpointing`` of a model that holds ``self.caduceus`` (a :class:`_Holder`):
    shared by :class:`CaduceusLM` and the Caduceus classifier."""

    @property
    def backbone(self) -> CaduceusBackbone:
        return self.caduceus.backbone

    @property
    def gradient_checkpointing(self) -> bool:
        return self.backbone.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.backbone.gradient_checkpointing = bool(value)


class CaduceusLM(CaduceusBackboneAccess, nn.Module):
    """Caduceus' ``CaduceusForMaskedLM``: input_ids (batch, seqlen) -> logits (batch, seqlen, vocab_size), the head
    tied to the embedding. RC equivariant with ``config.rcps``; any model is through :func:`rc_average`."""

    def __init__(self, config: CaduceusConfig):
        super().__init__()
        self.config = config
        self.caduceus = _Holder(config)
        self.lm_head = RCPSLMHead(config) if config.rcps else nn.Linear(config.d_model, config.vocab_size, bias=False)
        initializer = (config.initializer_cfg or {}).get("initializer_range", 0.02)
        self.apply(partial(init_weights, n_layer=config.n_layer, initializer_range=initializer))
        self.tie_weights()

    def tie_weights(self) -> None:
        tie_mixers(self.backbone)
        if self.config.tie_word_embeddings:
            embedding = self.backbone.embeddings.word_embeddings
            head = self.lm_head.lm_head if self.config.rcps else self.lm_head
            head.weight = embedding.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.backbone(input_ids)).float()

    # ---- checkpoints --------------------------------------------------------------------------------------
    def _tied_names(self) -> dict[str, str]:
        """name -> the name it is tied to (written once; filled from its partner on load)."""
        names = tied_mixer_names(self.config)
        if self.config.tie_word_embeddings:
            emb = "caduceus.backbone.embeddings.word_embeddings." + ("embedding.weight" if self.config.rcps else
                                                                    "weight")
            names["lm_head.lm_head.weight" if self.config.rcps else "lm_head.weight"] = emb
        present = set(self.state_dict())
        return {name: partner for name, partner in names.items() if name in present}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """config.json (Caduceus' fields) + model.safetensors (each tied tensor once)."""
        tied = self._tied_names()
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in tied}
        return write_checkpoint(directory, self.config.to_json() + "\n", state)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, device=None, dtype=None) -> CaduceusLM:
        """A Caduceus checkpoint (Caduceus' own ``save_pretrained`` or ours) from a folder or a Hub id
        ``org/name[@revision]``; tied tensors written once are filled from their partners."""
        directory, config = read_caduceus_config(source)
        model = cls(config)
        load_tied_state(model, with_model_prefix(read_state_dict(directory)), model._tied_names(), source)
        if device is not None or dtype is not None:
            model = model.to(device=device, dtype=dtype)
        return model


def with_model_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint of Caduceus' base model (``Caduceus``: ``backbone.*``, no LM head) under
    ``CaduceusForMaskedLM``'s names (``caduceus.backbone.*``); a ``CaduceusForMaskedLM`` checkpoint as it is."""
    if any(name.startswith("caduceus.") for name in state):
        return dict(state)
    return {("caduceus." + name if name.startswith("backbone.") else name): t for name, t in state.items()}


def read_caduceus_config(source: str | os.PathLike) -> tuple[Path, CaduceusConfig]:
    """(the local folder, its CaduceusConfig) of a checkpoint folder or Hub id; a CheckpointError names it."""
    from mamba_bio_audio.hub import resolve

    directory = resolve(source)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint folder")
    try:
        return directory, CaduceusConfig.from_dict(read_config_dict(directory))
    except (UserError, TypeError, ValueError) as e:
        where = directory / CONFIG_NAME if Path(source) == directory else f"{source} ({CONFIG_NAME})"
        raise CheckpointError(f"{where}: {e}") from None


def tie_mixers(backbone: CaduceusBackbone) -> None:
    """Re-tie every BiMamba's reverse in/out projections to the forward ones (after a load)."""
    for layer in backbone.layers:
        mixer = layer.mixer.submodule if isinstance(layer.mixer, RCPSWrapper) else layer.mixer
        mixer.tie_weights()


def tied_mixer_names(config: CaduceusConfig, prefix: str = "caduceus.backbone.") -> dict[str, str]:
    """The reverse mixers' in/out projection names -> the forward ones' they are tied to."""
    names = {}
    if config.bidirectional and config.bidirectional_weight_tie:
        sub = ".submodule" if config.rcps else ""
        for i in range(config.n_layer):
            for p in ("in_proj.weight", "in_proj.bias", "out_proj.weight", "out_proj.bias"):
                layer = f"{prefix}layers.{i}.mixer{sub}."
                names[layer + "mamba_rev." + p] = layer + "mamba_fwd." + p
    return names


def load_tied_state(model: nn.Module, state: dict[str, torch.Tensor], tied: dict[str, str],
                    source: str | os.PathLike) -> None:
    """Load ``state`` into ``model`` (which has ``tie_weights()``): tied tensors written once are filled from their
    partners (``tied``: name -> partner, as present in the model), tied pairs written twice must agree, the
    complement-map buffers are checked against the config's; then the ties are remade."""
    for name, partner in tied.items():
        if name not in state and partner in state:
            state[name] = state[partner]
        elif partner not in state and name in state:
            state[partner] = state[name]
    expected = model.state_dict()
    for name in expected:
        if name.endswith("complement_map"):
            if name not in state:
                state[name] = expected[name]
            elif not torch.equal(state[name].long(), expected[name]):
                raise CheckpointError(f"{source}: {name} differs from the config's complement_map")
            state[name] = state[name].long()
    for name, tensor in state.items():  # tied pairs stored twice must agree
        if name in tied and tied[name] in state and not torch.equal(tensor, state[tied[name]]):
            raise CheckpointError(f"{source}: {name} should be tied to {tied[name]}")
    load_state_dict_strict(model, state, source, tie_embeddings=False)
    model.tie_weights()


def is_caduceus_config(data: dict[str, Any]) -> bool:
    return data.get("model_type") == MODEL_TYPE


def rc_average(model: nn.Module, input_ids: torch.Tensor, complement: torch.Tensor) -> torch.Tensor:
    """Post-hoc ("Ph") RC conjoining: the mean of ``model``'s logits (batch, seqlen, vocab) over the sequence and
    over its reverse complement (whose logits are reversed and complemented back). RC equivariant for any model."""
    logits = model(input_ids)
    back = model(rc_ids(input_ids, complement)).flip(1)[..., complement.to(logits.device)]
    return (logits + back) / 2


def dna_caduceus_config(d_model: int, n_layer: int, rcps: bool = True, d_state: int = 16,
                        expand: int = 2) -> CaduceusConfig:
    """A fresh Caduceus for the hyena-12 tokenizer (the vocabulary and complement map of the published checkpoints):
    BiMamba ``add`` with tied in/out projections, RCPS (the "ps" models) or not ("ph"), ``fused_add_norm`` as the
    published checkpoints."""
    from mamba_bio_audio.data_prep.dna.tokenizer import VOCAB_SIZE, reverse_complement

    ids = list(range(VOCAB_SIZE))
    complement = {str(i): int(reverse_complement([i])[0]) for i in ids}
    ssm = {"d_state": d_state, "d_conv": 4, "expand": expand, "dt_rank": "auto", "dt_min": 0.001, "dt_max": 0.1,
           "dt_init": "random", "dt_scale": 1.0, "dt_init_floor": 1e-4, "conv_bias": True, "bias": False}
    return CaduceusConfig(d_model=d_model, n_layer=n_layer, vocab_size=VOCAB_SIZE, ssm_cfg=ssm, rms_norm=True,
                          fused_add_norm=True, bidirectional=True, bidirectional_strategy="add",
                          bidirectional_weight_tie=True, rcps=rcps, complement_map=complement)


def check_dna_vocabulary(config: CaduceusConfig, source: str | os.PathLike) -> None:
    """A Caduceus for the hyena-12 tokenizer (its 12 ids, padded; A C G T complemented), else a CheckpointError
    naming ``source``."""
    from mamba_bio_audio.data_prep.dna.tokenizer import VOCAB_SIZE

    expected = dna_caduceus_config(config.d_model, 1).complement_map
    cmap = config.complement_map
    if config.vocab_size < VOCAB_SIZE or (cmap is not None and any(cmap[str(i)] != expected[str(i)]
                                                                   for i in range(VOCAB_SIZE))):
        raise CheckpointError(f"{source}: a Caduceus model of vocab {config.vocab_size} whose complement map is not "
                              f"the {VOCAB_SIZE}-token hyena-12 tokenizer's that DNA models here read")


# ---- another tokenizer's vocabulary (PlantCaduceus) ----------------------------------------------------------------
TOKENIZER_FILE = "tokenizer.json"


def read_tokenizer_vocabulary(directory: str | os.PathLike) -> tuple[dict[str, int], bool] | None:
    """``(token -> id, lowercases)`` of the Hugging Face ``tokenizers`` file ``tokenizer.json`` beside a checkpoint:
    its model's vocabulary (a token -> id object, or a Unigram list of [token, score] whose ids are the positions)
    with its added tokens, and whether its normalizer lower-cases the text; None when there is no such file. A
    CheckpointError names a file that holds no such vocabulary."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        return None
    data = read_json_object(path)
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    raw = model.get("vocab")
    vocab: dict = {}
    if isinstance(raw, dict):
        vocab.update(raw)
    elif isinstance(raw, list):
        vocab.update({entry[0]: i for i, entry in enumerate(raw) if isinstance(entry, list) and entry})
    for token in data.get("added_tokens") or []:
        if isinstance(token, dict) and "content" in token and "id" in token:
            vocab[token["content"]] = token["id"]
    if not vocab or not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in vocab.items()):
        raise CheckpointError(f"{path}: no token -> id vocabulary (model.vocab) in this tokenizer file")
    return vocab, _lowercases(data.get("normalizer"))


def _lowercases(normalizer: Any) -> bool:
    """Whether a ``tokenizers`` normalizer (None, one, or a Sequence of them) lower-cases the text."""
    if not isinstance(normalizer, dict):
        return False
    kind = normalizer.get("type")
    if kind == "Sequence":
        return any(_lowercases(n) for n in normalizer.get("normalizers") or [])
    return kind == "Lowercase" or (kind == "BertNormalizer" and bool(normalizer.get("lowercase")))


def dna_token_map(vocab: dict[str, int], lowercases: bool, config: CaduceusConfig,
                  source: str | os.PathLike) -> list[int | None]:
    """For each hyena-12 id (0..11), the id of the same token in a checkpoint's vocabulary (``vocab``, from its
    tokenizer.json; ``lowercases``: its tokenizer lower-cases the text first): A C G T by name (the lower-case
    spelling first when the tokenizer lower-cases, as it then sees our upper-case bases), N and the special tokens
    ([CLS] [SEP] [BOS] [MASK] [PAD] [RESERVED] [UNK]) by name, else the checkpoint's [UNK] (what its tokenizer makes
    of them), else None (a zero embedding row).

    A CheckpointError naming ``source`` when a base has no token, an id is outside the model's ``vocab_size``, or
    the checkpoint's complement_map does not complement the mapped ids as hyena-12's does (A <-> T, C <-> G, the
    rest themselves): token ids are never guessed."""
    from mamba_bio_audio.data_prep.dna.tokenizer import SPECIAL_TOKENS, VOCAB_SIZE

    def spelled(token: str) -> int | None:
        for name in ((token.lower(), token) if lowercases else (token, token.lower())):
            if name in vocab:
                return vocab[name]
        return None

    unk = vocab.get("[UNK]")
    ids: list[int | None] = []
    for token in (*SPECIAL_TOKENS, "A", "C", "G", "T", "N"):
        found = vocab.get(token) if token.startswith("[") else spelled(token)
        if found is None and token in "ACGT":
            raise CheckpointError(f"{source}: its {TOKENIZER_FILE} has no token for the base {token}, so its ids "
                                  f"cannot be mapped to the {VOCAB_SIZE}-token hyena-12 tokenizer's")
        ids.append(found if found is not None else unk)
    for i, j in enumerate(ids):
        if j is not None and j >= config.vocab_size:
            raise CheckpointError(f"{source}: its {TOKENIZER_FILE} gives {(*SPECIAL_TOKENS, *'ACGTN')[i]} the id "
                                  f"{j}, outside the model's vocab_size {config.vocab_size}")
    theirs = config.complement_map
    ours = dna_caduceus_config(config.d_model, 1).complement_map
    if theirs is not None:
        names = (*SPECIAL_TOKENS, *"ACGTN")
        for i, j in enumerate(ids):
            partner = ids[ours[str(i)]]
            if j is not None and partner is not None and theirs[str(j)] != partner:
                raise CheckpointError(f"{source}: its complement_map sends {names[i]} (id {j}) to id "
                                      f"{theirs[str(j)]}, not to {names[ours[str(i)]]} (id {partner}) as its "
                                      f"{TOKENIZER_FILE} names them; refusing to guess which ids are which")
    return ids


def _vocabulary_rows(config: CaduceusConfig) -> list[str]:
    """The tensors of a CaduceusLM with one row per token id: the embedding, and an untied LM head."""
    names = ["caduceus.backbone.embeddings.word_embeddings." + ("embedding.weight" if config.rcps else "weight")]
    if not config.tie_word_embeddings:
        names.append("lm_head.lm_head.weight" if config.rcps else "lm_head.weight")
    return names


def to_dna_vocabulary(model: CaduceusLM, directory: str | os.PathLike,
                      source: str | os.PathLike) -> CaduceusLM:
    """``model`` (read from the checkpoint folder ``directory``, named ``source`` in errors) for the hyena-12
    tokenizer that DNA models here read.

    With a ``tokenizer.json`` beside the weights, its token names decide (:func:`dna_token_map`): ids already
    hyena-12's give ``model`` itself; other ids (PlantCaduceus: ``[PAD] [MASK] [UNK] a c g t``) give a new
    CaduceusLM of vocab 12 (padded to 16, hyena-12's complement map) whose embedding row for each hyena-12 id is
    the checkpoint's row of the same token (rows past 12 zero), every other tensor as loaded. Without one, the
    config's complement map must be hyena-12's (:func:`check_dna_vocabulary`; Caduceus' own checkpoints), else a
    CheckpointError naming the missing tokenizer.json."""
    from mamba_bio_audio.data_prep.dna.tokenizer import VOCAB_SIZE

    found = read_tokenizer_vocabulary(directory)
    if found is None:
        try:
            check_dna_vocabulary(model.config, source)
        except CheckpointError as e:
            raise CheckpointError(f"{e} (and no {TOKENIZER_FILE} beside it names its tokens, to map them)") from None
        return model
    ids = dna_token_map(*found, model.config, source)
    if ids == list(range(VOCAB_SIZE)):
        check_dna_vocabulary(model.config, source)
        return model
    config = dataclasses.replace(model.config, vocab_size=VOCAB_SIZE,
                                 complement_map=dna_caduceus_config(model.config.d_model, 1).complement_map)
    remapped = CaduceusLM(config)
    tied = model._tied_names()
    state = {k: v for k, v in model.state_dict().items() if k not in tied and not k.endswith("complement_map")}
    for name in _vocabulary_rows(config):
        old = state[name]
        rows = old.new_zeros(config.vocab_size, old.shape[1])
        for i, j in enumerate(ids):
            if j is not None:
                rows[i] = old[j]
        state[name] = rows
    load_tied_state(remapped, state, remapped._tied_names(), source)
    return remapped.train(model.training)
