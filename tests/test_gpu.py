"""CUDA: bf16-autocast training on the fused kernels, and GPU-trained checkpoints that
load, score and resume on the CPU.

Marked `gpu`: tests/conftest.py skips them, saying why, where PyTorch sees no CUDA device.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from charnet.checkpoint import load_checkpoint
from charnet.config import CELLS, ModelConfig, TrainConfig
from charnet.training.data import load_corpus
from charnet.training.evaluation import autocast_for, evaluate
from charnet.training.trainer import Trainer
from tests.conftest import TINY, run_cli, run_torchrun

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("cell", CELLS)
def test_bf16_training_on_cuda_and_the_checkpoint_on_cpu(small_corpus, tmp_path, cell):
    corpus = load_corpus([small_corpus])
    model_cfg = ModelConfig(vocab_size=corpus.vocab.size, cell=cell, hidden=64, embedding=32, layers=2, dropout=0.0)
    cfg = TrainConfig(batch_size=16, seq_len=32, warmup_steps=5, lr=1e-2, max_steps=80, eval_every=40, device="cuda")
    out = tmp_path / cell
    trainer = Trainer(corpus, model_cfg, cfg, out)
    assert trainer.device.type == "cuda"

    # Under autocast the forward computes in bf16 while the weights stay float32.
    x, _ = trainer.plan.batch(0)
    with torch.no_grad(), autocast_for(trainer.device):
        logits, _ = trainer.model(x.to(trainer.device))
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.is_cuda for p in trainer.model.parameters())

    result = trainer.fit()
    unigram_nats = corpus.stats.unigram_bits("char") * math.log(2)
    assert result.step == 80 and result.final_val < unigram_nats - 0.3, (result.final_val, unigram_nats)

    # The checkpoint holds CPU float32 tensors: it loads on a machine without a GPU and
    # scores the validation split as the GPU did, up to bf16 rounding.
    ckpt = load_checkpoint(out / "last", device="cpu")
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in ckpt.model.parameters())
    total, count = evaluate(ckpt.model, trainer.val, torch.device("cpu"))
    assert total / count == pytest.approx(result.final_val, rel=2e-2)

    scored = run_cli("eval", out, small_corpus, "--json", env={"CUDA_VISIBLE_DEVICES": ""})
    assert scored.returncode == 0, scored.stderr
    assert math.isfinite(json.loads(scored.stdout)["total"]["nats_per_char"])

    # And training continues on the CPU (the CUDA RNG state in last/ is simply unused).
    resumed = run_cli("train", "--resume", "--out", out, "--max-steps", 90, "--device", "cpu",
                      env={"CUDA_VISIBLE_DEVICES": ""})
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "last" / "config.json").read_text())["metrics"]["step"] == 90


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_with_nccl(small_corpus, tmp_path):
    out = tmp_path / "run"
    result = run_torchrun("train", small_corpus, *TINY, "--max-steps", 40, "--eval-every", 20, "--device", "cuda",
                          "--out", out)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "last" / "config.json").read_text())
    assert config["training"]["world_size"] == 2 and config["metrics"]["step"] == 40
    train = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "train_loss" in line]
    assert len(train) == 4 and train[-1] < train[0]
