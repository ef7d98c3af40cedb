"""The compiled sampler against PyTorch's `choose`: the same controls, the same draws, except
where a draw lies within float rounding of the boundary between two characters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charnet.inference.fused_sampling import _uniform, choose as fused_choose
from charnet.inference.sampling import BatchParams, SamplingParams, choose, uniform

V, ROWS = 70, 64


def batch(settings: list[dict], seed: int = 0):
    """Random logits, repetition windows and counts for one row per settings."""
    g = torch.Generator().manual_seed(seed)
    rows = len(settings)
    logits = torch.randn(rows, V, generator=g) * 3
    recent = (torch.rand(rows, V, generator=g) < 0.2).float() * torch.randint(1, 4, (rows, V), generator=g)
    counts = (torch.rand(rows, V, generator=g) < 0.3).float() * torch.randint(1, 6, (rows, V), generator=g)
    params = BatchParams.of([SamplingParams(**s) for s in settings], V)
    return logits, recent, counts, params


SETTINGS = [
    {}, {"temperature": 0.7}, {"temperature": 0}, {"temperature": 1.3, "top_k": 5}, {"top_p": 0.8},
    {"min_p": 0.1, "temperature": 0.9}, {"typical_p": 0.7}, {"repetition_penalty": 1.3},
    {"frequency_penalty": 0.8, "presence_penalty": -0.5}, {"logit_bias": {3: 5.0, 7: -100.0, 9: -2.5}},
    {"logit_bias": {4: 100.0, 11: 100.0}}, {"top_k": 20, "top_p": 0.9, "min_p": 0.02, "typical_p": 0.95},
    {"temperature": 0, "repetition_penalty": 2.0, "logit_bias": {5: 3.0}},
]


def test_splitmix_uniforms_are_the_numpy_ones():
    rng = np.random.default_rng(0)
    seeds = rng.integers(0, 2 ** 63, 1000, dtype=np.uint64)
    steps = rng.integers(0, 2 ** 40, 1000, dtype=np.uint64)
    assert [_uniform(s, t) for s, t in zip(seeds, steps)] == uniform(seeds, steps).tolist()


@pytest.mark.parametrize("constrained", [False, True])
def test_draws_equal_pytorchs_but_on_a_boundary(constrained):
    settings = [SETTINGS[i % len(SETTINGS)] for i in range(ROWS)]
    compared = differing = 0
    for trial in range(20):
        logits, recent, counts, params = batch(settings, seed=trial)
        allowed = None
        if constrained:
            allowed = torch.rand(ROWS, V, generator=torch.Generator().manual_seed(trial)) < 0.3
            allowed[:, 0] = True  # never empty
        seeds = np.arange(ROWS, dtype=np.uint64) + np.uint64(1000 * trial)
        steps = np.full(ROWS, trial, dtype=np.uint64)
        u = uniform(seeds, steps)
        ours = fused_choose(logits, np.arange(ROWS), params, seeds, steps, None, recent, counts, allowed)
        theirs = [choose(logits, params, v, recent, counts, allowed).numpy() for v in (u - 1e-6, u, u + 1e-6)]
        steady = (theirs[0] == theirs[1]) & (theirs[1] == theirs[2])  # not on a boundary
        compared += steady.sum()
        differing += (ours != theirs[1])[steady].sum()
    assert compared > 0.95 * 20 * ROWS and differing == 0


def test_a_rows_draw_does_not_depend_on_its_batch():
    settings = [SETTINGS[i % len(SETTINGS)] for i in range(ROWS)]
    logits, recent, counts, params = batch(settings)
    seeds, steps = np.arange(ROWS, dtype=np.uint64), np.full(ROWS, 3, dtype=np.uint64)
    together = fused_choose(logits, np.arange(ROWS), params, seeds, steps, None, recent, counts)
    for row in (0, 9, 63):
        alone = BatchParams.of([SamplingParams(**settings[row])], V)
        picked = fused_choose(logits, np.array([row]), alone, seeds[row:row + 1], steps[row:row + 1], None, recent,
                              counts)
        assert picked[0] == together[row]


def test_the_unknown_id_is_never_chosen_and_a_bias_that_bans_everything_gives_way():
    logits = torch.zeros(2, V)
    logits[:, 0] = 50.0  # the unknown id, overwhelmingly likely
    params = BatchParams.of([SamplingParams(), SamplingParams(logit_bias={i: -100.0 for i in range(V)})], V)
    seeds, steps = np.arange(2, dtype=np.uint64), np.zeros(2, dtype=np.uint64)
    for step in range(50):
        tokens = fused_choose(logits, np.arange(2), params, seeds, steps + np.uint64(step), 0)
        assert (tokens != 0).all()
