"""The configuration schemas of train.py, translate.py and scripts/align.py, registered with Hydra: an unknown
key, a value of the wrong type or a choice that does not exist is refused before anything runs.

Each room declares its own settings (DataConfig in mt/data.py, ModelConfig in mt/model.py, SearchSettings in
mt/translator.py, LinkSettings in mt/aligner.py); this module composes them, and every default has its one
source in those dataclasses. configs/*.yaml hold only what differs from them (a corpus, a model size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Optional

from hydra.core.config_store import ConfigStore

from mt.aligner import LinkSettings
from mt.alignment_training import AlignmentTrainingConfig
from mt.data import DataConfig
from mt.hardware import Device, Precision
from mt.model import ModelConfig
from mt.translator import SearchSettings


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.adam
    lr: float = 2e-3  # peak, reached at the end of warm-up, then decays as 1/sqrt(step)
    warmup_steps: int = 1000
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = 6000  # optimizer steps; training stops at whichever of the two limits comes first
    max_epochs: Optional[int] = None
    eval_every: int = 500  # steps between dev evaluations (BLEU, checkpoints, heatmaps)
    log_every: int = 100
    patience: int = 0  # stop after this many evaluations without a better dev BLEU; 0 never stops early
    accum_steps: int = 1  # batches per optimizer step
    clip_norm: float = 1.0  # 0 disables clipping
    label_smoothing: float = 0.1
    seed: int = 1
    device: Device = Device.auto
    precision: Precision = Precision.auto
    resume: bool = False  # continue from checkpoints/last.pt in the run directory
    # Above 0, an exponential moving average of the weights (this decay, warmed up) is evaluated beside them, and
    # best.pt holds whichever scores higher on dev.
    ema_decay: float = 0.999
    keep_checkpoints: int = 5  # evaluation checkpoints kept as checkpoints/step_N.pt (scripts/average_checkpoints.py)
    # dev/test decoding: greedy, with translate.py's limits, so both decode the same batches
    eval_batch_tokens: int = SearchSettings.batch_tokens
    max_len_a: float = SearchSettings.max_len_a
    max_len_b: int = SearchSettings.max_len_b
    heatmap_sentences: int = 3  # dev sentences whose cross-attention is drawn at each evaluation
    progress: bool = True  # a progress bar on stderr


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    align: AlignmentTrainingConfig = field(default_factory=AlignmentTrainingConfig)


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
    tensorboard_sentences: int = 10
    align: LinkSettings = field(default_factory=LinkSettings)  # how the alignments are read


@dataclass
class AlignConfig(LinkSettings):
    checkpoint: str = "???"  # a source -> target model
    source: str = "???"
    target: str = "???"
    output: str = "-"  # Pharaoh lines, one per pair; - for stdout
    batch_tokens: int = SearchSettings.batch_tokens
    device: Device = Device.auto
    precision: Precision = Precision.auto


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="translate_schema", node=TranslateConfig)
    ConfigStore.instance().store(name="align_schema", node=AlignConfig)
