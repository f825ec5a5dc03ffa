"""What training measures on held-out data: greedy translations of a split scored with sacreBLEU (exactly as
translate.py beam_size=1 gives them), the weights beside their moving average, and the dev set's attention drawn
for TensorBoard."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
from torch.utils.tensorboard import SummaryWriter

from mt import data as corpus_data
from mt.averaging import ExponentialMovingAverage
from mt.config import TrainerConfig
from mt.evaluate import Scores, score
from mt.heatmap import attention_figure
from mt.model import Transformer
from mt.search import greedy_search, score_outputs
from mt.tokenizer import Tokenizer
from mt.translator import SearchSettings, Translator

log = logging.getLogger(__name__)


class Validation:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, cfg: TrainerConfig, device: torch.device,
                 precision: str):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        settings = SearchSettings(beam_size=1, max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b,
                                  batch_tokens=cfg.eval_batch_tokens)
        self.translator = Translator(model, tokenizer, settings, device, precision)
        self.device = device

    def decoding(self) -> dict:
        """How the splits are decoded, for results.json."""
        s = self.translator.settings
        return {"beam_size": 1, "max_len_a": s.max_len_a, "max_len_b": s.max_len_b, "batch_tokens": s.batch_tokens}

    def scores(self, split) -> Scores:
        was_training = self.model.training
        self.model.eval()
        hypotheses = self.translator.best(list(split["src"]))
        self.model.train(was_training)
        return score(hypotheses, list(split["tgt"]))

    def candidates(self, split, average: Optional[ExponentialMovingAverage], writer: SummaryWriter,
                   step: int) -> list[tuple[str, Scores]]:
        """The dev scores of the weights ("raw") and, where there is one, of their moving average ("ema"), logged."""
        found = [("raw", self.scores(split))]
        if average is not None:
            with average.swapped_in(self.model):
                found.append(("ema", self.scores(split)))
        for weights, scores in found:
            log.info("step %d dev%s %s", step, ", weight average:" if weights == "ema" else "", scores)
            suffix = "_ema" if weights == "ema" else ""
            writer.add_scalar(f"dev/bleu{suffix}", scores.bleu, step)
            writer.add_scalar(f"dev/chrf{suffix}", scores.chrf, step)
        return found

    def test_scores(self, tests: dict, writer: SummaryWriter, step: int) -> dict[str, dict]:
        """Each test split's scores (of the weights the model holds, those of `step`), logged."""
        results = {}
        for name, split in tests.items():
            scores = self.scores(split)
            log.info("test %s (best checkpoint, step %d): %s", name, step, scores)
            writer.add_scalar(f"test/{name}/bleu", scores.bleu, step)
            results[name] = dataclasses.asdict(scores)
        return results

    @torch.no_grad()
    def draw_heatmaps(self, writer: SummaryWriter, split, max_len: int, step: int) -> None:
        """The cross-attention of the split's first sentences (heads averaged), one figure of all layers each."""
        count = min(self.cfg.heatmap_sentences, len(split))
        if count == 0:
            return
        was_training = self.model.training
        self.model.eval()
        batch = corpus_data.collate(split, list(range(count)), max_len, self.tokenizer.special).to(self.device)
        outputs = greedy_search(self.model, batch.src, self.cfg.max_len_a, self.cfg.max_len_b).tokens
        attention = score_outputs(self.model, batch.src, outputs, need_attention=True).attention
        for i in range(count):
            src_ids = [t for t in batch.src[i].tolist() if t != self.tokenizer.special.pad]
            layers = [layer.mean(dim=0) for layer in attention[i]]
            fig = attention_figure(layers, self.tokenizer.pieces(src_ids), self.tokenizer.pieces(outputs[i]) + ["</s>"],
                                   title=f"dev sentence {i}, step {step}")
            writer.add_figure(f"attention/dev_{i}", fig, step)
        self.model.train(was_training)
