"""The configuration schemas of train.py, translate.py and scripts/align.py, registered with Hydra: an unknown
key, a value of the wrong type or a choice that does not exist is refused before anything runs.

Each room declares its own settings (DataConfig in mt/data.py, ModelConfig in mt/model.py, SearchSettings in
mt/translator.py, LinkSettings in mt/alignment/model_links.py, MergeSettings in mt/alignment/merged.py,
AlignmentTrainingConfig in mt/alignment/head.py); this module composes them, and every default has its one source
in those dataclasses. mt/configs/*.yaml hold only what differs from them (a corpus, a model size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from hydra.core.config_store import ConfigStore

from mt.alignment.head import AlignmentTrainingConfig
from mt.alignment.merged import MergeSettings
from mt.alignment.model_links import LinkSettings
from mt.data import DataConfig
from mt.hardware import Device, Precision
from mt.model import ModelConfig
from mt.schema import bounded
from mt.translator import SearchSettings


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"


class Schedule(str, Enum):
    """What the learning rate does after its linear warm-up to optim.lr."""
    inverse_sqrt = "inverse_sqrt"  # lr * sqrt(warmup / step): no end in sight, so a run can go on for as long as wanted
    linear = "linear"  # straight down to 0 at the run's last step (trainer.max_steps, or max_epochs' steps)


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.adam
    lr: float = bounded(2e-3, above=0)  # peak, reached at the end of warm-up, then decays as `schedule` says
    warmup_steps: int = bounded(1000, low=0)
    schedule: Schedule = Schedule.inverse_sqrt
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = bounded(1e-9, above=0)
    weight_decay: float = bounded(0.0, low=0)


@dataclass
class TrainerConfig:
    # optimizer steps; training stops at whichever of the two limits comes first
    max_steps: Optional[int] = bounded(6000, low=1)
    max_epochs: Optional[int] = bounded(None, low=1)
    eval_every: int = bounded(500, low=1)  # steps between dev evaluations (BLEU, checkpoints, heatmaps)
    log_every: int = bounded(100, low=1)
    patience: int = bounded(0, low=0)  # stop after this many evaluations without a better dev BLEU; 0 never stops early
    accum_steps: int = bounded(1, low=1)  # batches per optimizer step
    clip_norm: float = bounded(1.0, low=0)  # 0 disables clipping
    label_smoothing: float = bounded(0.1, low=0, below=1)
    # R-Drop (Liang et al. 2021): above 0, each batch runs twice with different dropout, and this weighs the two
    # passes' symmetric KL divergence in the loss. The passes share data.batch_tokens, so a step costs about the same.
    rdrop_weight: float = bounded(0.0, low=0)
    # Distillation from the moving average (needs ema_decay > 0; not with R-Drop): after distill_start steps each
    # batch also runs through the averaged weights (no dropout, no gradient), and the loss becomes
    # (1 - distill_weight) * the smoothed cross-entropy + distill_weight * KL(average || model). 0 is off.
    distill_weight: float = bounded(0.0, low=0, below=1)
    distill_start: int = bounded(2000, low=0)
    # Curriculum dropout (mt/dropout.py's DropoutRamp): set, the residual and embedding dropout starts at this
    # rate and rises linearly to model.dropout over the first dropout_ramp_steps steps. None keeps model.dropout.
    initial_dropout: Optional[float] = bounded(None, low=0, below=1)
    dropout_ramp_steps: int = bounded(0, low=0)
    seed: int = 1
    device: Device = Device.auto
    precision: Precision = Precision.auto
    resume: bool = False  # continue from checkpoints/last.pt in the run directory
    # Above 0, an exponential moving average of the weights (this decay, warmed up) is evaluated beside them, and
    # best.pt holds whichever scores higher on dev.
    ema_decay: float = bounded(0.999, low=0, below=1)
    # evaluation checkpoints kept as checkpoints/step_N.pt (scripts/average_checkpoints.py)
    keep_checkpoints: int = bounded(5, low=0)
    # dev/test decoding: greedy, with translate.py's limits, so both decode the same batches
    eval_batch_tokens: int = bounded(SearchSettings.batch_tokens, low=1)
    max_len_a: float = bounded(SearchSettings.max_len_a, low=0)
    max_len_b: int = bounded(SearchSettings.max_len_b, low=0)
    heatmap_sentences: int = bounded(3, low=0)  # dev sentences whose cross-attention is drawn at each evaluation
    progress: bool = True  # a progress bar on stderr


def passes_per_batch(trainer: TrainerConfig) -> int:
    """How many times a step runs each batch: twice under R-Drop, which splits data.batch_tokens between them."""
    return 2 if trainer.rdrop_weight > 0 else 1


@dataclass
class InitConfig:
    # A MarianMT model (a Hub name such as Helsinki-NLP/opus-mt-de-en, or a local folder) to start from: its
    # architecture, weights and tokenizer replace model.* (but the dropout rates) and data.tokenizer.*.
    from_hf: Optional[str] = None


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    align: AlignmentTrainingConfig = field(default_factory=AlignmentTrainingConfig)
    init: InitConfig = field(default_factory=InitConfig)


@dataclass
class TranslateConfig(SearchSettings):
    checkpoint: str = "???"
    input: str = "-"  # a file, or - for stdin
    output: str = "-"  # a file, or - for stdout
    device: Device = Device.auto
    precision: Precision = Precision.auto
    reference: Optional[str] = None  # print sacrebleu BLEU and chrF against this file to stderr
    alignments: Optional[str] = None  # Pharaoh `i-j` word links (source-target), one line per input line
    attention_dump: Optional[str] = None  # JSON lines: subword tokens and the raw attention matrix per sentence
    tensorboard: Optional[str] = None  # a log dir with heatmaps of the first tensorboard_sentences sentences
    tensorboard_sentences: int = bounded(10, low=0)
    align: LinkSettings = field(default_factory=LinkSettings)  # how the alignments are read


@dataclass
class AlignConfig(LinkSettings, MergeSettings):
    checkpoint: str = "???"  # a source -> target model
    source: str = "???"
    target: str = "???"
    output: str = "-"  # Pharaoh lines, one per pair; - for stdout
    batch_tokens: int = bounded(SearchSettings.batch_tokens, low=1)
    device: Device = Device.auto
    precision: Precision = Precision.auto


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="translate_schema", node=TranslateConfig)
    ConfigStore.instance().store(name="align_schema", node=AlignConfig)
