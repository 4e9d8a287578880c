"""One whole training step (loss, backward, optimizer step) captured as a CUDA graph for fixed input shapes and
replayed per call: one graph launch instead of a launch from Python for every kernel of the step.

PyTorch's "whole network capture" recipe (the CUDA Graphs section of its CUDA semantics notes):

1. warm-up steps on a side stream: Triton compiles each kernel, cuBLAS picks its algorithms, AdamW creates its
   state; then the model's tensors, the optimizer's state and the CUDA RNG are put back as they were (copies kept
   on the host), so building a :class:`CapturedStep` trains nothing;
2. grads set to None, then one step captured into a ``torch.cuda.CUDAGraph``: the backward allocates the grads
   from the graph's private memory pool, so every replay writes them (not adds to them) at the same addresses,
   and the optimizer step reads them there;
3. each call copies its batch into the static input and target tensors and replays the graph; it returns the
   static loss tensor, which the next replay overwrites.

What capture needs, and where this module checks it (:func:`check_capturable`, a one-line
:class:`~mamba_bio_audio.errors.UserError` each):

- CUDA tensors (model, optimizer state, inputs) and fixed shapes: a call with another shape or dtype is refused.
- ``torch.optim.Adam`` / ``AdamW`` built with ``capturable=True`` (its step count stays on the device; otherwise
  each step reads it on the host). The learning rate is baked in at capture when it is a float; to change it
  between replays give the optimizer a CUDA tensor ``lr`` and update that tensor in place.
- No host synchronisation inside the step (``.item()``, ``.cpu()``, ``torch.nonzero``, boolean indexing,
  Python branches on tensor values, data-dependent shapes). Our MambaLM's training forward and backward have none
  (packed sequences given as ``cu_seqlens`` do: not used here). A failure during capture becomes a
  :class:`CaptureError` naming the operation that failed.
- No activation recomputation (``checkpoint_level`` 0): level 1 (and level 2 on short sequences) runs
  ``torch.utils.checkpoint``, which saves and restores the CUDA RNG state on the host around each recomputed
  block; that has not been checked under capture, so it is refused.
- Under autocast, the loss function should pass ``cache_enabled=False`` (PyTorch's rule for autocast in captured
  regions); the casts are the same, so the results are too.
- What the host decides while a step runs is fixed at capture: the ops backend, the kernels' launch
  configurations, the MBA_* environment variables that ``mamba_bio_audio.ops`` reads per call, and
  ``torch.use_deterministic_algorithms`` (the scan's backward chooses atomics or partial sums by it).

:class:`EagerStep` runs the same step without a graph, with the same interface (``--cuda-graphs`` off, or CPU).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable

import torch

from mamba_bio_audio.errors import UserError

#: (inputs, targets) -> scalar loss, with autograd (the forward runs inside it)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: eager steps on a side stream before capture (PyTorch's examples use 3)
DEFAULT_WARMUP = 3


class CaptureError(RuntimeError):
    """The step could not be captured (an operation in it is not allowed while a CUDA stream captures)."""


def train_step(optimizer: torch.optim.Optimizer, loss_fn: LossFn, inputs: torch.Tensor,
               targets: torch.Tensor) -> torch.Tensor:
    """One eager step: loss = loss_fn(inputs, targets), grads set to None, backward, optimizer step; returns the
    loss, detached (a scalar tensor). The grads are dropped after the forward, as ``mba bench train`` has always
    timed it (the last step's grads are alive during the forward)."""
    loss = loss_fn(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class EagerStep:
    """:func:`train_step` as a callable with :class:`CapturedStep`'s interface: ``step(inputs, targets) -> loss``."""

    cuda_graph = False
    setup_seconds = 0.0

    def __init__(self, optimizer: torch.optim.Optimizer, loss_fn: LossFn):
        self.optimizer = optimizer
        self.loss_fn = loss_fn

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return train_step(self.optimizer, self.loss_fn, inputs, targets)


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def check_capturable(model: torch.nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor,
                     targets: torch.Tensor) -> None:
    """A one-line UserError for the first thing that stops this step from being captured: an optimizer other
    than Adam / AdamW, one built without ``capturable=True``, activation recomputation (``checkpoint_level``),
    inputs or targets that are not tensors, and last a model, inputs or targets not on a CUDA device."""
    if not isinstance(optimizer, torch.optim.Adam):  # AdamW derives from Adam
        raise UserError(f"CUDA graphs: the optimizer must be torch.optim.Adam or AdamW, got "
                        f"{type(optimizer).__name__}")
    if not all(group.get("capturable") for group in optimizer.param_groups):
        raise UserError(f"CUDA graphs: build the optimizer with {type(optimizer).__name__}(..., capturable=True) "
                        "(otherwise its step count is read on the host)")
    level = getattr(model, "checkpoint_level", 0)
    if level:
        raise UserError(f"CUDA graphs: checkpoint_level {level} (activation recomputation) is not captured; use "
                        "checkpoint_level 0")
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not torch.is_tensor(t):
            raise UserError(f"CUDA graphs: {name} must be a tensor, got {type(t).__name__}")
    devices = {p.device for p in model.parameters()} | {inputs.device, targets.device}
    if any(d.type != "cuda" for d in devices):
        raise UserError(f"CUDA graphs need a CUDA device; got {', '.join(sorted(str(d) for d in devices))}")
    if len(devices) > 1:
        raise UserError(f"CUDA graphs: the model, inputs and targets must be on one device, got "
                        f"{', '.join(sorted(str(d) for d in devices))}")


class _Snapshot:
    """Host copies of a model's state dict, an optimizer's state and the CUDA RNG state, put back in place (the
    tensors keep their addresses, as a captured graph needs). Optimizer state that did not exist when the copy
    was taken is zeroed: a fresh Adam/AdamW state (step, exp_avg, exp_avg_sq, max_exp_avg_sq) is all zeros."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.device = device
        self.model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.optimizer = {p: {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v)
                              for k, v in state.items()} for p, state in optimizer.state.items()}
        self.rng = torch.cuda.get_rng_state(device)

    @torch.no_grad()
    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        live = model.state_dict()
        for k, v in self.model.items():
            live[k].copy_(v)
        for p, state in optimizer.state.items():
            saved = self.optimizer.get(p, {})
            for k, v in state.items():
                if k not in saved:
                    if torch.is_tensor(v):
                        v.zero_()
                elif torch.is_tensor(v):
                    v.copy_(saved[k])
                else:
                    state[k] = copy.deepcopy(saved[k])
        torch.cuda.set_rng_state(self.rng, self.device)


class CapturedStep:
    """A training step captured once for the shapes of ``inputs`` and ``targets`` and replayed per call.

    ``step = CapturedStep(model, optimizer, loss_fn, inputs, targets)`` runs ``warmup`` eager steps on a side
    stream, puts the model, optimizer and RNG back as they were, and captures one :func:`train_step`;
    ``loss = step(inputs, targets)`` copies the batch into the static tensors and replays: the model's parameters,
    grads and optimizer state are updated in place exactly as by ``train_step``. ``loss`` is the same static
    scalar tensor at every call (clone it to keep it). ``setup_seconds``: the warm-up and the capture.

    Args:
        model: on one CUDA device; its parameters must not be replaced, moved or cast afterwards (in-place
            updates such as ``load_state_dict`` reach the graph).
        optimizer: Adam / AdamW over the model's parameters, ``capturable=True``. Do not zero or replace the
            grads between calls: the graph owns them (each replay overwrites them).
        loss_fn: (inputs, targets) -> scalar loss with autograd; free of host synchronisation.
        inputs, targets: a sample batch fixing the shapes and dtypes (copied; any values).
        warmup: eager steps before capture (at least 1).
    Raises:
        UserError: what :func:`check_capturable` refuses (e.g. CPU tensors); ValueError: warmup < 1;
        CaptureError: an operation of the step failed while being captured.
    """

    cuda_graph = True

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                 inputs: torch.Tensor, targets: torch.Tensor, warmup: int = DEFAULT_WARMUP):
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1 step before capture, got {warmup}")
        check_capturable(model, optimizer, inputs, targets)
        start = time.perf_counter()
        self.device = device = inputs.device
        self.optimizer, self.loss_fn = optimizer, loss_fn
        with torch.cuda.device(device):  # streams, capture and kernels on the tensors' device
            self.static_inputs = inputs.detach().clone(memory_format=torch.contiguous_format)
            self.static_targets = targets.detach().clone(memory_format=torch.contiguous_format)
            snapshot = _Snapshot(model, optimizer, device)
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side), warnings.catch_warnings():
                # AdamW warns once when a capturable instance steps uncaptured: these steps are meant to
                warnings.filterwarnings("ignore", message=".*capturable=True.*without CUDA graph capture")
                for _ in range(warmup):
                    train_step(optimizer, loss_fn, self.static_inputs, self.static_targets)
            torch.cuda.current_stream(device).wait_stream(side)
            snapshot.restore(model, optimizer)
            optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the grads from the graph's pool
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()  # the warm-up's cached blocks cannot be released while capturing
            self.graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(self.graph):
                    self.loss = train_step(optimizer, loss_fn, self.static_inputs, self.static_targets)
            except Exception as e:  # noqa: BLE001 - any failure inside capture: name it in one line
                text = str(e).strip().splitlines()
                raise CaptureError(f"CUDA graph capture of the training step failed: {type(e).__name__}: "
                                   f"{text[0] if text else ''} (a host sync or data-dependent shape in the step?)"
                                   ) from e
            torch.cuda.synchronize(device)
        self.setup_seconds = time.perf_counter() - start

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Copy the batch in, replay the step; returns the static loss (overwritten by the next call)."""
        for name, new, static in (("inputs", inputs, self.static_inputs), ("targets", targets, self.static_targets)):
            if new.shape != static.shape or new.dtype != static.dtype:
                raise UserError(f"CUDA graph step captured for {name} {_describe(static)}; got {_describe(new)}")
        with torch.cuda.device(self.device):
            for new, static in ((inputs, self.static_inputs), (targets, self.static_targets)):
                if new is not static:
                    static.copy_(new, non_blocking=True)
            self.graph.replay()
        return self.loss


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn, inputs: torch.Tensor,
              targets: torch.Tensor, cuda_graph: bool, warmup: int = DEFAULT_WARMUP) -> CapturedStep | EagerStep:
    """A :class:`CapturedStep` for ``inputs``' and ``targets``' shapes when ``cuda_graph``, else an
    :class:`EagerStep`; both called as ``step(inputs, targets) -> loss``."""
    if cuda_graph:
        return CapturedStep(model, optimizer, loss_fn, inputs, targets, warmup)
    return EagerStep(optimizer, loss_fn)
