"""Training progress written to a file (not a terminal): plain lines (LineProgress), not tqdm's redrawn bar."""

from __future__ import annotations

import io
import re

import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from mamba_bio_audio import MambaConfig, MambaLM
from mamba_bio_audio.training.data import IndexedDataModule
from mamba_bio_audio.training.module import LMTask, OptimConfig
from mamba_bio_audio.training.progress import LineProgress, progress_callback
from mamba_bio_audio.training.trainer import TrainerConfig, make_trainer


def test_a_terminal_gets_the_bar_a_file_gets_lines():
    assert isinstance(progress_callback(5, interactive=True), TQDMProgressBar)
    assert isinstance(progress_callback(5, interactive=False), LineProgress)


def test_lines_for_a_run_logged_to_a_file(tmp_path, capsys):
    """stderr captured (not a terminal): the run's progress is a start line, a line at each tenth of the run and one
    per validation; no carriage returns, no escape codes."""
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, vocab_size=6, d_state=4))
    gen = torch.Generator()

    def sample(i):
        gen.manual_seed(i)
        return {"input_ids": torch.randint(0, 6, (9,), generator=gen)}

    val = [sample(10_000 + i) for i in range(4)]
    cfg = TrainerConfig(max_steps=20, device="cpu", checkpoint_every=0, val_every=10, log_every=1)
    trainer = make_trainer(tmp_path, cfg)
    assert not trainer.progress_bar_callback  # no tqdm bar when stderr is not a terminal
    trainer.fit(LMTask(model, OptimConfig(lr=1e-2, max_steps=20, warmup=2)),
                datamodule=IndexedDataModule(sample, 2, val_samples=val))
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = [line for line in err.splitlines() if line.startswith(("training:", "step "))]
    assert lines[0] == "training: steps 0 -> 20"
    steps = [int(m.group(1)) for line in lines if (m := re.match(r"step (\d+)/20 \(\d+%\): train/loss [\d.]+; ", line))]
    assert steps == list(range(2, 21, 2))  # every tenth of the run, the last step included
    validations = [line for line in lines if " validation: " in line]
    assert [v.split()[1] for v in validations] == ["10", "20"]
    assert all(re.search(r"val/loss \d+\.\d{4}", v) for v in validations)


def test_line_progress_stream_and_no_step_limit():
    """A run without a step limit shows no fraction or time left; the stream is the one given."""
    stream = io.StringIO()
    progress = LineProgress(every_seconds=0.0, stream=stream)

    class Trainer:
        global_step, max_steps, is_global_zero, sanity_checking = 0, -1, True, False
        callback_metrics = {"train/loss": torch.tensor(1.5)}

    t = Trainer()
    progress.on_train_start(t, None)
    t.global_step = 3
    progress.on_train_batch_end(t, None, None, None, 0)
    assert stream.getvalue().splitlines()[0] == "training: from step 0, no step limit"
    assert re.fullmatch(r"step 3: train/loss 1\.5000; [\d.e+]+ steps/s", stream.getvalue().splitlines()[1])
