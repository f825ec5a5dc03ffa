"""The training configuration: each room's own dataclass, composed here and registered as Hydra's schema,
so an unknown key or a value of the wrong type is refused before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from mt.data import DataConfig
from mt.force_align import AlignConfig
from mt.model import ModelConfig
from mt.translate import TranslateConfig


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | adamw
    lr: float = 1e-3  # peak, reached at the end of warm-up, then decays as 1/sqrt(step)
    warmup_steps: int = 1000
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0


@dataclass
class TrainerConfig:
    max_steps: Optional[int] = None  # optimizer steps; training stops at whichever of the two limits comes first
    max_epochs: Optional[int] = None
    eval_every: int = 1000  # steps between dev evaluations (BLEU, checkpoints, heatmaps)
    log_every: int = 100
    patience: int = 0  # stop after this many evaluations without a better dev BLEU; 0 never stops early
    accum_steps: int = 1  # batches per optimizer step
    clip_norm: float = 1.0  # 0 disables clipping
    label_smoothing: float = 0.1
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 where the hardware has it, else fp32)
    resume: bool = False  # continue from checkpoints/last.pt in the run directory
    eval_batch_tokens: int = 4000  # as translate.py's batch_tokens, so both decode the same batches
    max_len_a: float = 1.5  # dev/test decoding stops after a * source length + b tokens
    max_len_b: int = 10
    heatmap_sentences: int = 3  # dev sentences whose cross-attention is drawn at each evaluation
    progress: bool = True  # a progress bar on stderr


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(vocab_size=0))
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def register() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)
    ConfigStore.instance().store(name="translate_schema", node=TranslateConfig)
    ConfigStore.instance().store(name="align_schema", node=AlignConfig)
