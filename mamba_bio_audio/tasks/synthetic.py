"""The Mamba paper's synthetic tasks (Section 4.1, Appendix E.1) and its S4/S6 ablation table: the library behind
``mba synthetic``.

- :func:`run_task` trains one model on selective copying or induction heads and tests it (OUT/config.yaml,
  metrics.json, model/); :data:`PRESETS` say how (``paper``: the paper's setup as Appendix E.1 states it, hours of
  GPU; ``gpu-fast``: ours, not the paper's: the same tasks, test lengths and models, trained with larger batches, a
  higher learning rate, a length curriculum for selective copying and a stop at a target validation accuracy,
  minutes on one H100; ``tiny``: CPU-sized).
- :func:`~mamba_bio_audio.tasks.synthetic_table.run_table` trains the ablation table's runs and writes it.
- :func:`evaluate_induction` tests a trained induction-heads model on more sequences or longer lengths.

Data: data_prep/synthetic_tasks.py; models: MambaLM and models/ssm_only.py; loss, curriculum and early stop:
training/synthetic_task.py; evaluation: metrics/synthetic.py.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mamba_bio_audio.errors import UserError
from mamba_bio_audio.files import run_folder
from mamba_bio_audio.recipes.outputs import saved_run_config, write_json, write_yaml

TASKS = ("selective-copy", "induction-heads")
ARCHS = ("mamba", "no-gate")
LAYERS = ("S6", "S4D")
EVAL_OFFSET = 10**12  # test samples: indices the training stream never reaches
VAL_OFFSET = 2 * 10**12  # validation samples (early stopping): neither training nor test samples


@dataclass(frozen=True)
class TaskPreset:
    """How one task is trained and tested. ``data``: the generator's fields (data_prep/synthetic_tasks.py) at the
    test length. lr is constant unless warmup > 0 or min_lr_ratio < 1 (then linear warm-up and cosine decay).

    curriculum: ((train_seqlen, max_steps), ...): train on shorter sequences first, each stage for at most
        max_steps, moving on early once the training accuracy is >= ``advance_at`` (training/synthetic_task.py,
        LengthCurriculum); then data["seqlen"] to the end. The final score is always at data["seqlen"].
    curriculum_time_caps: in a time-limited run, the fractions of its training time by which each short stage
        ends at the latest (so that every run, learning or not, also trains at the full length).
    val_seqlen: length of the validation sequences (default data["seqlen"]): e.g. longer than the training
        length, to stop on extrapolation; ``val_samples`` sequences (their own indices, not the test
        sequences), ``val_batch_size`` at a time (default batch_size). target_accuracy: stop once the
        validation accuracy (every ``val_every`` steps) reaches it. restore_best: test the weights of the best
        validation (highest accuracy, then lowest loss) instead of the last ones. eval_reserve_s: of a
        time-limited run's budget, seconds kept for evaluation.
    """

    data: dict
    batch_size: int
    max_steps: int
    lr: float
    warmup: float = 0.0
    min_lr_ratio: float = 1.0
    eval_samples: int = 256
    val_every: int = 0
    test_log2_lengths: tuple[int, ...] = ()
    model: dict = field(default_factory=lambda: {"d_model": 64, "n_layer": 2, "d_state": 16})
    curriculum: tuple[tuple[int, int], ...] = ()
    advance_at: float | None = None
    curriculum_time_caps: tuple[float, ...] = ()
    val_seqlen: int | None = None
    target_accuracy: float | None = None
    eval_reserve_s: float = 0.0
    val_samples: int = 256
    val_batch_size: int | None = None
    restore_best: bool = False

    def length_curriculum(self, start: float | None = None, end: float | None = None):
        """The :class:`LengthCurriculum` of this preset (a single stage at data["seqlen"] without curriculum);
        with the training time's ``start`` and ``end`` (``time.monotonic()``), its stages' time caps."""
        from mamba_bio_audio.training.synthetic_task import LengthCurriculum

        time_caps = None
        if start is not None and end is not None:
            time_caps = [start + f * (end - start) for f in self.curriculum_time_caps]
        return LengthCurriculum(self.curriculum, self.data["seqlen"], self.advance_at, time_caps=time_caps)


#: Where the paper's numbers come from: Gu & Dao 2023, arXiv 2312.00752, Section 4.1 and Appendix E.1.
PAPER_SOURCE = "https://arxiv.org/abs/2312.00752 (Section 4.1, Appendix E.1; HTML: https://arxiv.org/html/2312.00752v2)"

PRESETS: dict[str, dict[str, TaskPreset]] = {
    # The paper's setups, as Appendix E.1 and Section 4.1 state them (PAPER_SOURCE):
    # Selective copying: "sequences of length 4096, with a vocab size of 16 possible tokens (including the white
    #   'noise' token ...) and requiring models to memorize 16 'data' tokens"; 2 layers, D = 64; "400K steps at a
    #   constant learning rate of 0.0001 with a batch size of 64". Vocabulary 16 = 14 data tokens + noise + marker,
    #   as in the S4 repository's copying generator with A = 16 (data tokens 1 .. A-2; state-spaces/s4,
    #   src/dataloaders/datasets/copying.py). (That generator appends the markers to L noise positions, L + 2M long;
    #   we read "length 4096" as the whole sequence.) The optimizer sentence (Adam, no weight decay) is in the
    #   induction-heads paragraph; we use it for both.
    # Induction heads: "a 2-layer model ... at sequence length 256, with a vocab size of 16", tested at 2^6 .. 2^20;
    #   D = 64 for Mamba; batch 8, an "epoch" of 8192 steps, Mamba reported after the 25th (204,800 steps); Adam,
    #   no weight decay, constant lr 1e-3 for Mamba ("extrapolated better" than at 2e-4). Vocabulary 16 here =
    #   15 ordinary tokens + the special token. The paper's Mamba has 74K parameters; ours (d_state 16, tied head)
    #   has about 67K.
    "paper": {
        "selective-copy": TaskPreset(data={"seqlen": 4096, "n_memorize": 16, "n_data_tokens": 14}, batch_size=64,
                                     max_steps=400_000, lr=1e-4, eval_samples=1024, val_every=10_000),
        "induction-heads": TaskPreset(data={"seqlen": 256, "n_tokens": 15}, batch_size=8, max_steps=204_800,
                                      lr=1e-3, eval_samples=128, val_every=8192,
                                      test_log2_lengths=tuple(range(6, 21))),
    },
    # Ours, not the paper's (see the module docstring and results/synthetic/README.md): the paper's tasks, models
    # and test lengths, trained for minutes instead of hours. A GPU step at these sizes costs nearly the same at
    # batch 8 or 128 (H100: ~14 ms at 2K tokens, ~33 ms at 262K), so batches are 64 (selective copying) and 128
    # (induction heads: one answer per sequence). lr 3e-3: on CPU, induction heads at length 64 (batch 32) left
    # chance at ~200 steps and was perfect at 250 with 3e-3, still at chance after 450 with 1e-3.
    # Selective copying trains at 256, then 1024, each stage left once the training accuracy is >= 0.99 (or at its
    # step cap, or at 60% / 75% of a time-limited run's training time, so that S4D rows train at 4096 too), then
    # at 4096 until validation at 4096 is >= 0.995. On CPU, S6 with 16 tokens (length 128, batch 16) was still at
    # chance after 500 steps; with 8 tokens (length 64, batch 32) it left chance at ~200 steps, 89% at 750, and
    # scored 42% at 4x its training length: hence a curriculum that trains at every length.
    # Induction heads trains at 256 and stops once validation at 2^20 (4096x the training length; 256 sequences
    # of their own, not the test ones) is perfect: on CPU a model stopped at its training length's first 100%
    # scored 89-94% at 64x, also 300 steps later; on the H100 (2026-11-23) a model stopped at its first 100% at
    # 2^14 (600 steps) scored 91.4% at 2^16 and 60.2% at 2^20, and one stopped at its first 100% at 2^16 (500
    # steps) scored 100% up to 2^18, then 95.3% at 2^19 and 75.8% at 2^20. Accuracy at 2^20 is not monotone in
    # training: a model at 98.4% (15,751 steps) continued for 14,000 steps with a decaying lr fell to 93.0%, its
    # validation at 2^20 drifting between 73% and 94% (the loss at 256 is ~1e-8: nothing there pulls towards
    # extrapolation). Hence validation on 256 sequences of 2^20, and the best-validated weights are tested. The
    # table's row (seed 0, resumed twice across device calls) reached 100 % on the 256 validation sequences at step
    # 33,500 and tested 100 % at every length to 2^20 (results/synthetic/README.md).
    "gpu-fast": {
        "selective-copy": TaskPreset(data={"seqlen": 4096, "n_memorize": 16, "n_data_tokens": 14}, batch_size=64,
                                     max_steps=20_000, lr=3e-3, warmup=100, eval_samples=1024, val_every=200,
                                     curriculum=((256, 6000), (1024, 1500)), advance_at=0.99,
                                     curriculum_time_caps=(0.6, 0.75), target_accuracy=0.995, eval_reserve_s=5.0),
        "induction-heads": TaskPreset(data={"seqlen": 256, "n_tokens": 15}, batch_size=128, max_steps=20_000,
                                      lr=3e-3, eval_samples=128, val_every=500, val_seqlen=2**20, val_samples=256,
                                      val_batch_size=8, target_accuracy=1.0, restore_best=True,
                                      test_log2_lengths=tuple(range(6, 21)), eval_reserve_s=40.0),
    },
    # CPU-sized: short sequences, a few hundred steps, the same model; each run takes a few minutes on 2 cores.
    "tiny": {
        "selective-copy": TaskPreset(data={"seqlen": 64, "n_memorize": 4, "n_data_tokens": 8}, batch_size=32,
                                     max_steps=600, lr=5e-3, warmup=0.1, min_lr_ratio=0.1, eval_samples=512,
                                     val_every=100),
        "induction-heads": TaskPreset(data={"seqlen": 32, "n_tokens": 16}, batch_size=32, max_steps=400,
                                      lr=3e-3, eval_samples=128, val_every=100,
                                      test_log2_lengths=tuple(range(5, 15))),
    },
}

def log_to_stderr(line: str) -> None:
    """The default ``log`` of the runs: one line to stderr."""
    print(line, file=sys.stderr)


def _generator(task: str, data: dict, seed: int):
    from mamba_bio_audio.data_prep.synthetic_tasks import InductionHeads, SelectiveCopying

    return (SelectiveCopying if task == "selective-copy" else InductionHeads)(**data, seed=seed)


def _model(arch: str, config):
    from mamba_bio_audio import MambaLM
    from mamba_bio_audio.models.ssm_only import SSMOnlyLM

    return (MambaLM if arch == "mamba" else SSMOnlyLM)(config)


def _train_sample_fn(task: str, preset: TaskPreset, seed: int, curriculum=None):
    """index -> training sample. Batch j holds indices j*B .. j*B+B-1 (training/data.py), so index i belongs to
    step i // B, whose length ``curriculum.seqlen_at`` gives (on one device; under data parallel the stream counts
    global batches, so stages would come world_size times sooner)."""
    curriculum = curriculum or preset.length_curriculum()
    generators = {n: _generator(task, {**preset.data, "seqlen": n}, seed) for n in curriculum.lengths}

    def sample(i: int) -> dict:
        return generators[curriculum.seqlen_at(i // preset.batch_size)].sample(i)

    return sample


def run_task(task: str, preset: TaskPreset, layer: str, arch: str, out: Path, device: str = "auto",
             seed: int = 0, progress: bool = True, time_budget_s: float | None = None,
             init_from: Path | None = None, resume: bool = False, precision: str | None = None,
             log: Callable[[str], None] | None = None) -> dict:
    """Train one model on one task and evaluate it; writes OUT/config.yaml, metrics.json, model/. Returns the metrics.

    precision: Lightning's training precision (None: bf16-mixed on a GPU, 32-true on the CPU); evaluation is
    always in fp32.

    init_from: a run's ``model/`` folder to continue training from (same task, arch and model; the optimizer
    starts afresh, the data stream continues after the steps that run recorded). metrics["history"] lists every
    run's steps and lr in order (this one last), metrics["prior_steps"] the steps before this run.

    resume: continue this OUT folder's own run from its ``checkpoints/last.ckpt`` (weights, optimizer state,
    step count and data position); ``steps`` then counts from that run's start, ``resumed_at`` says where this
    part began.

    time_budget_s: wall-clock seconds for the whole run (with ``resume``, earlier parts' training time counts:
    the checkpoint keeps it, as ``--max-minutes`` does for every training command); training stops ``preset.eval_reserve_s`` before the end
    (at the latest at half the budget), and test lengths not reached in time are skipped. metrics["stopped"] says
    why training ended early: "target" (validation accuracy reached preset.target_accuracy), "time", or None.
    log: where the per-length test lines go (default: stderr).
    """
    import lightning.pytorch as pl

    from mamba_bio_audio import MambaConfig
    from mamba_bio_audio.metrics.synthetic import evaluate_accuracy, evaluate_lengths
    from mamba_bio_audio.training.data import IndexedDataModule
    from mamba_bio_audio.training.module import OptimConfig
    from mamba_bio_audio.training.synthetic_task import MaskedLMTask, StopTraining
    from mamba_bio_audio.training.trainer import TrainerConfig, fit

    if resume and not (Path(out) / "checkpoints" / "last.ckpt").is_file():
        raise UserError(f"--resume: no checkpoint to resume from in {Path(out) / 'checkpoints'}")
    # a resumed run's clock started when its first part did (less the time between the parts)
    clock = time.monotonic() - (_earlier_training_seconds(Path(out)) if resume else 0.0)
    deadline = None if time_budget_s is None else clock + time_budget_s
    train_deadline = None if deadline is None else clock + max(time_budget_s - preset.eval_reserve_s,
                                                               time_budget_s / 2)
    from mamba_bio_audio.devices import torch_device

    eval_device = torch_device(device)
    out = run_folder(out, f"synthetic {task}", resume=resume, inputs=() if init_from is None else (init_from,))
    pl.seed_everything(seed, verbose=False)
    generator = _generator(task, preset.data, seed)
    config = MambaConfig(vocab_size=generator.vocab_size, ssm_layer=layer, **preset.model)
    model = _model(arch, config)
    run = saved_run_config(out) if resume else {}
    if resume and run.get("init_from"):  # a resumed continuation: the first part's donor and history, recorded
        init_from = Path(run["init_from"])  # (the weights come from the checkpoint: the donor is not read)
        history = run.get("prior_history")
        if history is None:  # a run started before config.yaml kept the history: the donor's own record
            flag = "--resume: the run's --init-from"
            if not init_from.is_dir():
                raise UserError(f"{flag} {init_from} is gone and the run's config.yaml does not record the training "
                                f"behind it; start a new --out with --init-from")
            history = _donor_history(init_from, flag)
    else:
        history = _continue_from(model, Path(init_from)) if init_from is not None else []
    prior_steps = sum(h["steps"] for h in history)
    run_config = {"command": f"synthetic {task}", "arch": arch, "layer": layer, "device": device, "seed": seed,
                  "preset": asdict(preset), "model": config.to_dict(), "time_budget_s": time_budget_s,
                  "precision": precision, "init_from": None if init_from is None else str(init_from),
                  "prior_history": history}
    if resume:  # the run's config.yaml stays as it was unless this is the same model (else: one line, no write)
        saved = run.get("model"), run.get("arch"), run.get("layer")
        if saved[0] is not None and saved != (run_config["model"], arch, layer):
            raise UserError(f"--resume: the run in {out} trained another model ({saved[1]}, {saved[2]}, "
                            f"{saved[0].get('d_model')}-wide; this command: {arch}, {layer}, {config.d_model}-wide, "
                            f"or another task or preset); start a new --out to change it")
    write_yaml(out / "config.yaml", run_config)

    def held_out(i: int) -> dict:
        return generator.sample(EVAL_OFFSET + i)

    def held_out_at(seqlen: int, i: int) -> dict:
        return _generator(task, {**preset.data, "seqlen": seqlen}, seed).sample(EVAL_OFFSET + i)

    optim = OptimConfig(lr=preset.lr, weight_decay=0.0, betas=(0.9, 0.999), warmup=preset.warmup,
                        min_lr_ratio=preset.min_lr_ratio, max_steps=preset.max_steps)
    val_seqlen = preset.val_seqlen or generator.seqlen
    val_generator = _generator(task, {**preset.data, "seqlen": val_seqlen}, seed)
    val = [val_generator.sample(VAL_OFFSET + i) for i in range(preset.val_samples)] if preset.val_every else []
    curriculum = preset.length_curriculum(clock, train_deadline)
    fresh_sample = _train_sample_fn(task, preset, seed, curriculum)
    offset = prior_steps * preset.batch_size  # a continued run goes on after the batches its history saw

    def sample_fn(i: int) -> dict:
        return fresh_sample(i + offset)

    data = IndexedDataModule(sample_fn, preset.batch_size, val_samples=val,
                             val_batch_size=preset.val_batch_size)
    stop = StopTraining(preset.target_accuracy if preset.val_every else None, train_deadline,
                        keep_best=preset.restore_best and bool(preset.val_every))
    started = time.time()
    resumed_at = _checkpoint_step(out) if resume else None
    trainer = fit(MaskedLMTask(model, optim), data, out,
                  TrainerConfig(max_steps=preset.max_steps, device=device, precision=precision,
                                val_every=min(preset.val_every, preset.max_steps),
                                checkpoint_every=max(1, preset.max_steps // 4), log_every=min(50, preset.max_steps),
                                progress=progress, callbacks=[curriculum, stop]), resume=resume)
    steps = int(trainer.global_step)
    metrics = {"task": task, "arch": arch, "layer": layer, "train_seconds": time.time() - started,
               "max_steps": preset.max_steps, "steps": steps, "stopped": stop.reason,
               "target_accuracy": preset.target_accuracy, "target_reached_at": stop.reached_at,
               "best_val_accuracy": stop.best, "val_seqlen": val_seqlen, "train_seqlen": generator.seqlen,
               "final_train_seqlen": curriculum.seqlen_at(max(steps - 1, 0)),
               "curriculum": [list(c) for c in preset.curriculum],
               "curriculum_starts": [[curriculum.lengths[k], start] for k, start in enumerate(curriculum.starts)],
               "time_budget_s": time_budget_s, "parameters": sum(p.numel() for p in model.parameters()),
               "prior_steps": prior_steps, "init_from": None if init_from is None else str(init_from),
               "history": history + [_history_entry(steps, preset)], "resumed_at": resumed_at}
    metrics["val_history"] = stop.history
    if stop.best_state is not None:  # the best-validated weights, not the last ones, are saved and tested
        model.load_state_dict(stop.best_state)
        metrics["selected_step"] = stop.best_step
        metrics["history"][-1]["selected_step"] = stop.best_step
    model.save_pretrained(out / "model")
    model.to(eval_device)
    eval_started = time.time()
    scores = evaluate_accuracy(model, held_out, preset.eval_samples, batch_size=max(preset.batch_size, 64))
    metrics.update(accuracy=scores["accuracy"], eval_loss=scores["loss"], eval_answers=scores["answers"])
    if preset.test_log2_lengths:
        results = evaluate_lengths(model, held_out_at, [2**k for k in preset.test_log2_lengths],
                                   preset.eval_samples, progress=log or log_to_stderr,
                                   deadline=deadline)
        metrics["lengths"] = [r.to_dict() for r in results]
        metrics["accuracy_by_length"] = {str(r.seqlen): r.accuracy for r in results if r.skipped is None}
    metrics["eval_seconds"] = time.time() - eval_started
    metrics["finished"] = stop.reason != "time" and not any(
        r.get("skipped", "").startswith("time") for r in metrics.get("lengths", []) if r.get("skipped"))
    write_json(out / "metrics.json", metrics)
    return metrics


def _checkpoint_step(out: Path) -> int:
    """The step the run in OUT had reached (its metrics.json, written with checkpoints/last.ckpt at the end of
    training; -1 when unreadable); a UserError when there is no checkpoint to resume from."""
    from mamba_bio_audio.training.trainer import last_checkpoint

    path = last_checkpoint(out)
    if path is None:
        raise UserError(f"--resume: no checkpoint to resume from in {out / 'checkpoints'}")
    earlier = out / "metrics.json"
    try:
        return int(json.loads(earlier.read_text())["steps"]) if earlier.is_file() else -1
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _earlier_training_seconds(out: Path) -> float:
    """Seconds of training the run in OUT had done by its last checkpoint (its StopTraining state; 0 when the
    checkpoint predates that record)."""
    from mamba_bio_audio.training.trainer import last_checkpoint, load_training_checkpoint

    path = last_checkpoint(out)
    if path is None:
        return 0.0
    state = load_training_checkpoint(path, mmap=True).get("callbacks", {}).get("StopTraining", {})
    return float(state.get("elapsed", 0.0)) if isinstance(state, dict) else 0.0


def _history_entry(steps: int, preset: TaskPreset) -> dict:
    """One run's line in metrics["history"]: its steps and peak lr, and the schedule when the lr was not constant."""
    entry: dict = {"steps": steps, "lr": preset.lr}
    if preset.warmup > 0 or preset.min_lr_ratio < 1:
        entry.update(warmup=preset.warmup, min_lr_ratio=preset.min_lr_ratio, schedule_steps=preset.max_steps)
    return entry


def choose_preset(preset: str, task: str, max_steps: int | None, lr: float | None = None) -> TaskPreset:
    """``PRESETS[preset][task]``, with ``max_steps`` and ``lr`` overridden when given."""
    chosen = PRESETS[preset][task]
    chosen = chosen if max_steps is None else replace(chosen, max_steps=max_steps)
    return chosen if lr is None else replace(chosen, lr=lr)


def _continue_from(model, model_dir: Path) -> list[dict]:
    """Load a saved run's weights into ``model`` (same class and config, else a UserError); returns the training
    behind them: [{"steps", "lr"}, ...] from that run's metrics.json and config.yaml ([] when absent)."""
    loaded = type(model).from_pretrained(model_dir)
    if loaded.config.to_dict() != model.config.to_dict():
        raise UserError(f"--init-from {model_dir}: a model of another configuration (task, layer or size differ)")
    model.load_state_dict(loaded.state_dict())
    return _donor_history(model_dir, "--init-from")


def _donor_history(model_dir: Path, flag: str) -> list[dict]:
    """The training behind a saved run's ``model/`` folder: [{"steps", "lr"}, ...] from that run's metrics.json and
    config.yaml ([] when it has no metrics.json; a one-line UserError naming ``flag`` when they cannot be read)."""
    run = Path(model_dir).parent
    if not (run / "metrics.json").is_file():
        return []
    import yaml

    try:
        earlier = json.loads((run / "metrics.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UserError(f"{flag} {model_dir}: cannot read the run's metrics.json / config.yaml ({e})") from None
    if earlier.get("history"):  # that run's own history ends with itself
        return list(earlier["history"])
    return [{"steps": int(earlier.get("steps", 0)), "lr": ((config or {}).get("preset") or {}).get("lr")}]


def stop_note(m: dict) -> str:
    """' (reached the target ...; time limit ...)' for a run's metrics, or ''."""
    notes = []
    if m.get("stopped") == "target":
        notes.append(f"reached the target {m['target_accuracy']} at step {m['target_reached_at']}")
    if m.get("stopped") == "time":
        notes.append(f"time limit; {m['max_steps']} planned")
    if m.get("selected_step") is not None:
        notes.append(f"kept the weights of step {m['selected_step']}, the best validation")
    return f" ({'; '.join(notes)})" if notes else ""


def evaluate_induction(model_dir: Path, out: Path, lengths: list[int], samples: int = 1024, first: int = 128,
                       n_tokens: int = 15, seed: int = 0, device: str = "auto",
                       log: Callable[[str], None] | None = None) -> tuple[dict, str]:
    """Test a trained induction-heads model (a ``MambaLM.save_pretrained`` folder) at ``lengths`` on ``samples``
    sequences of the runs' test stream (indices ``EVAL_OFFSET + first + i``: ``first`` 128 skips the sequences
    ``run_task`` already scored; training and validation never draw from that stream).

    Evaluation is fp32 in 2^16-token segments with the recurrent state carried (metrics/synthetic.py). Writes
    ``out/induction_eval.{json,md}`` with device, versions and date; returns ``(report, markdown)``.
    """
    from mamba_bio_audio import MambaLM
    from mamba_bio_audio.benchmarks.report import environment, markdown_table, write_report
    from mamba_bio_audio.data_prep.synthetic_tasks import InductionHeads
    from mamba_bio_audio.devices import torch_device
    from mamba_bio_audio.metrics.synthetic import evaluate_lengths

    if not (Path(model_dir) / "config.json").is_file():
        raise UserError(f"{model_dir}: not a saved model folder (no config.json)")
    model = MambaLM.from_pretrained(model_dir).to(torch_device(device)).eval()

    def sample(seqlen: int, i: int) -> dict:
        return InductionHeads(seqlen=seqlen, n_tokens=n_tokens, seed=seed).sample(EVAL_OFFSET + first + i)

    results = evaluate_lengths(model, sample, lengths, samples, progress=log or log_to_stderr)
    rows = [{"seqlen": r.seqlen, "accuracy": r.accuracy, "correct": None if r.accuracy is None
             else round(r.accuracy * r.n_samples), "samples": r.n_samples, "seconds": round(r.seconds, 1),
             "skipped": r.skipped} for r in results]
    report = {"model": str(model_dir), "test_indices": [first, first + samples], "seed": seed,
              "environment": environment(), "lengths": rows}
    table = markdown_table(["length", "accuracy (%)", "correct", "sequences", "seconds"],
                           [[r["seqlen"], None if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}",
                             r["correct"], r["samples"], r["seconds"]] for r in rows])
    env = report["environment"]
    md = (f"# Induction heads: {model_dir}, test sequences {first} .. {first + samples - 1}\n\n"
          f"{env['device']}, torch {env['torch']}, triton {env['triton']}, {env['date']}\n\n{table}\n")
    write_report(out, "induction_eval", report, md)
    return report, md
