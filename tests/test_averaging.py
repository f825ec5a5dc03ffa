"""Weight averaging: the moving average against a float64 reference, and scripts/average_checkpoints.py."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from mt.averaging import ExponentialMovingAverage
from mt.checkpoint import load_checkpoint, model_payload, save_checkpoint
from mt.model import ModelConfig, Transformer
from mt.translator import load_model

CONFIG = ModelConfig(vocab_size=40, d_model=16, n_heads=2, encoder_layers=1, decoder_layers=1, ffn_dim=24)


def test_the_moving_average_follows_the_weights_as_a_float64_reference_does():
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    ema = ExponentialMovingAverage(model, decay=0.99)
    reference = {name: p.detach().double().clone() for name, p in model.named_parameters()}
    for step in range(1, 301):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        ema.update(model, step)
        decay = min(0.99, (1 + step) / (10 + step))  # warm-up: early steps follow the weights closely
        for name, p in model.named_parameters():
            reference[name] = decay * reference[name] + (1 - decay) * p.detach().double()
    assert ema.decay_at(1) == pytest.approx(2 / 11) and ema.decay_at(10_000) == 0.99
    for name, weights in zip(ema.names, ema.weights):
        torch.testing.assert_close(weights.double(), reference[name], rtol=0, atol=1e-5)


def test_the_average_is_swapped_in_and_the_own_weights_come_back_exactly():
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    ema = ExponentialMovingAverage(model, decay=0.9)
    own = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    moved = {name: p.detach().clone() for name, p in model.named_parameters()}
    ema.update(model, 1000)  # decay 0.9: 0.9 * own + 0.1 * (2 * own)
    with ema.swapped_in(model):
        for name, p in model.named_parameters():
            torch.testing.assert_close(p, 1.1 * own[name])
    for name, p in model.named_parameters():
        assert torch.equal(p, moved[name])


def average_cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "average_checkpoints.py"), *map(str, args)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


def test_averaging_two_checkpoints_gives_the_mean_of_their_weights_and_translates(trained, tmp_path):
    loaded = load_model(str(trained / "checkpoints" / "best.pt"), torch.device("cpu"))
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = Transformer(loaded.model.cfg)
        paths.append(tmp_path / f"seed{seed}.pt")
        save_checkpoint(paths[-1], {**model_payload(model, loaded.tokenizer), "step": seed})
    done = average_cli(*paths, "--output", tmp_path / "mean.pt")
    assert done.returncode == 0, done.stderr[-2000:]
    a, b, mean = (load_checkpoint(p)["model"] for p in (*paths, tmp_path / "mean.pt"))
    for name in a:
        torch.testing.assert_close(mean[name], ((a[name].double() + b[name].double()) / 2).float(), rtol=0, atol=0)
    assert load_model(str(tmp_path / "mean.pt"), torch.device("cpu")).model.cfg == loaded.model.cfg

    again = average_cli(*paths, "--output", tmp_path / "mean.pt")
    assert again.returncode == 2 and again.stderr.strip().endswith("pass --force to replace it")


def test_checkpoints_of_different_models_are_not_averaged(trained, tmp_path):
    loaded = load_model(str(trained / "checkpoints" / "best.pt"), torch.device("cpu"))
    save_checkpoint(tmp_path / "other.pt", model_payload(Transformer(CONFIG), loaded.tokenizer))
    done = average_cli(trained / "checkpoints" / "best.pt", tmp_path / "other.pt", "--output", tmp_path / "mean.pt")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "its model settings differ" in done.stderr and not (tmp_path / "mean.pt").exists()
