"""The command behind scripts/average_checkpoints.py: one checkpoint whose weights are the mean of several (of one
run, or of runs with the same model and vocabulary), which translate.py and the other tools load as any other."""

from __future__ import annotations

import argparse
from pathlib import Path

from mt import cli
from mt.averaging import mean_of_weights
from mt.checkpoint import load_checkpoint, save_checkpoint
from mt.files import InputError, same_file
from mt.tokenizer import CHECKPOINT_KEYS

# What a translating checkpoint carries besides its weights; training state (optimizer, RNG, ...) is not averaged.
KEPT = ("model_config", *CHECKPOINT_KEYS, "alignment_head")


def average_checkpoints(inputs: list[str], output: str, force: bool = False) -> dict:
    """Write to `output` the mean of the inputs' weights; returns what was written (without the weights)."""
    for path in inputs:
        if Path(path).exists() and same_file(Path(output), Path(path)):
            raise InputError(f"--output {output} is the checkpoint to average {path}; choose another output")
    if Path(output).exists() and not force:
        raise InputError(f"{output}: already exists; pass --force to replace it")
    contents = [load_checkpoint(path) for path in inputs]
    first = contents[0]
    for path, content in zip(inputs[1:], contents[1:]):
        for key in ("model_config", *CHECKPOINT_KEYS):
            if content.get(key) != first.get(key):
                what = "model settings" if key == "model_config" else "SentencePiece vocabulary"
                raise InputError(f"{path}: its {what} differ from those of {inputs[0]}; only checkpoints of one "
                                 "model can be averaged")
    try:
        weights = mean_of_weights([content["model"] for content in contents])
    except ValueError as e:
        raise InputError(f"{', '.join(inputs)}: {e}") from None
    averaged = {key: first.get(key) for key in KEPT}
    averaged["averaged_from"] = [{"path": str(path), "step": content.get("step")} for path, content in
                                 zip(inputs, contents)]
    save_checkpoint(output, {**averaged, "model": weights})
    return averaged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Average the weights of checkpoints into one, e.g. the last "
                                                 "evaluation checkpoints of a run (RUN/checkpoints/step_*.pt).")
    parser.add_argument("inputs", nargs="+", help="checkpoints of one model (same settings and vocabulary)")
    parser.add_argument("--output", "-o", required=True, help="the averaged checkpoint to write")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        averaged = average_checkpoints(args.inputs, args.output, args.force)
    steps = ", ".join(str(item["step"]) for item in averaged["averaged_from"])
    print(f"{args.output}: the mean of {len(args.inputs)} checkpoints (steps {steps})")
    return 0
