"""The pure sampling functions: each control does what it says on a known distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from charnet.errors import ConfigError
from charnet.inference.sampling import (BatchParams, SamplingParams, apply_count_penalties, apply_repetition_penalty,
                                        choose, derive_seed, draw, keep_mask, uniform)

V = 6
LOGITS = torch.log(torch.tensor([[0.4, 0.3, 0.15, 0.1, 0.04, 0.01]]))


def batch(**kw) -> BatchParams:
    return BatchParams.of([SamplingParams(**kw)], V)


def kept(temperature: float = 1.0, **kw) -> set[int]:
    probs = torch.softmax(LOGITS / temperature, -1)
    return {int(i) for i in keep_mask(probs, batch(**kw))[0].nonzero()}


def test_top_k_keeps_the_k_most_likely():
    assert kept(top_k=1) == {0}
    assert kept(top_k=3) == {0, 1, 2}
    assert kept(top_k=0) == set(range(V))  # 0 turns it off


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert kept(top_p=0.4) == {0}  # 0.4 alone reaches 0.4
    assert kept(top_p=0.5) == {0, 1}
    assert kept(top_p=0.86) == {0, 1, 2, 3}  # 0.85 falls short, 0.95 reaches it
    assert kept(top_p=1e-9) == {0}  # the most likely always stays
    assert kept(top_p=1.0) == set(range(V))


def test_min_p_keeps_what_is_at_least_that_fraction_of_the_top():
    # probabilities 0.4, 0.3, 0.15, 0.1, 0.04, 0.01: a floor of min_p x 0.4
    assert kept(min_p=0.5) == {0, 1}  # floor 0.2
    assert kept(min_p=0.25) == {0, 1, 2, 3}  # floor 0.1: 0.1 itself stays
    assert kept(min_p=1.0) == {0}
    assert kept(min_p=0.0) == set(range(V))
    assert kept(min_p=0.3) == {0, 1, 2}
    assert kept(min_p=0.3, temperature=2.0) == {0, 1, 2, 3, 4}  # judged after temperature


def test_min_p_draws_follow_the_renormalised_floor():
    torch.testing.assert_close(frequencies(min_p=0.3), torch.tensor([0.4, 0.3, 0.15, 0, 0, 0]).double() / 0.85,
                               atol=0.012, rtol=0)


def test_typical_p_keeps_what_is_closest_to_the_entropy():
    # Entropy 1.4175 nats; surprisals 0.92, 1.20, 1.90, 2.30, 3.22, 4.61: closest first are
    # token 1 (0.3), 2 (0.15), 0 (0.4), 3 (0.1), 4, 5.
    assert kept(typical_p=0.25) == {0, 1}  # 1 reaches it; the most likely always stays
    assert kept(typical_p=0.5) == {0, 1, 2}
    assert kept(typical_p=0.9) == {0, 1, 2, 3}
    assert kept(typical_p=0.96) == {0, 1, 2, 3, 4}
    assert kept(typical_p=1.0) == set(range(V))


def test_typical_p_draws_follow_the_renormalised_set():
    torch.testing.assert_close(frequencies(typical_p=0.5), torch.tensor([0.4, 0.3, 0.15, 0, 0, 0]).double() / 0.85,
                               atol=0.012, rtol=0)


def test_frequency_and_presence_penalties_follow_openais_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0, 0.5]])
    counts = torch.tensor([[0.0, 2.0, 1.0, 4.0]])
    p = BatchParams.of([SamplingParams(frequency_penalty=0.5, presence_penalty=1.0)], 4)
    torch.testing.assert_close(apply_count_penalties(logits, counts, p), torch.tensor([[1.0, 0.0, 1.5, -2.5]]))
    # Greedy decoding sees the penalised logits: 3 - 1.5 < 1, so token 0 wins.
    greedy = BatchParams.of([SamplingParams(temperature=0, frequency_penalty=1.5, presence_penalty=0.5)], 4)
    assert int(choose(logits, greedy, np.zeros(1), counts=counts)[0]) == 0
    negative = BatchParams.of([SamplingParams(temperature=0, presence_penalty=-2.0)], 4)
    assert int(choose(torch.tensor([[2.0, 0.5]]), negative, np.zeros(1), counts=torch.tensor([[0.0, 1.0]]))[0]) == 1


def test_logit_bias_adds_bans_and_forces():
    added = frequencies(logit_bias={5: math.log(20.0)})  # 0.01 x 20 = 0.2, renormalised by 1.19
    torch.testing.assert_close(added, torch.tensor([0.4, 0.3, 0.15, 0.1, 0.04, 0.2]).double() / 1.19,
                               atol=0.012, rtol=0)
    assert frequencies(logit_bias={0: -100, 1: -100})[:2].sum() == 0
    assert frequencies(logit_bias={5: 100})[5] == 1.0
    torch.testing.assert_close(frequencies(logit_bias={4: 100, 5: 100})[4:], torch.tensor([0.8, 0.2]).double(),
                               atol=0.012, rtol=0)  # several forced: drawn among them as the model weighs them


def test_a_bias_that_bans_everything_gives_way():
    assert frequencies(logit_bias={i: -100 for i in range(V)}, temperature=0)[0] == 1.0


def frequencies(n: int = 20_000, **kw) -> torch.Tensor:
    """How often each token is chosen in n draws under `kw`."""
    u = uniform(np.full(n, 7, dtype=np.uint64), np.arange(n, dtype=np.uint64))
    picks = choose(LOGITS.repeat(n, 1), BatchParams.of([SamplingParams(**kw)] * n, V), u)
    return torch.bincount(picks, minlength=V).double() / n


def test_draw_follows_the_distribution():
    torch.testing.assert_close(frequencies(), torch.exp(LOGITS[0]).double(), atol=0.012, rtol=0)
    probs = torch.tensor([[0.0, 2.0, 0.0, 1.0]])  # unnormalised, zeros never drawn
    picks = {int(draw(probs, torch.tensor([u]))[0]) for u in np.linspace(0, 0.999, 50)}
    assert picks == {1, 3}


def test_temperature_sharpens_and_flattens():
    cold, hot = frequencies(temperature=0.5), frequencies(temperature=2.0)
    assert cold[0] > 0.4 + 0.1 and hot[0] < 0.4 - 0.1
    torch.testing.assert_close(cold, torch.softmax(LOGITS[0] / 0.5, -1).double(), atol=0.012, rtol=0)


def test_filters_renormalise_over_what_they_keep():
    torch.testing.assert_close(frequencies(top_k=2), torch.tensor([4 / 7, 3 / 7, 0, 0, 0, 0]).double(),
                               atol=0.012, rtol=0)


def test_a_row_draws_the_same_whether_or_not_its_neighbours_filter():
    u = uniform(np.arange(200, dtype=np.uint64), np.zeros(200, dtype=np.uint64))
    plain = choose(LOGITS.repeat(200, 1), BatchParams.of([SamplingParams()] * 200, V), u)
    mixed = choose(LOGITS.repeat(200, 1), BatchParams.of([SamplingParams(), SamplingParams(top_p=0.5)] * 100, V), u)
    assert torch.equal(plain[::2], mixed[::2]) and set(mixed[1::2].tolist()) <= {0, 1}


def test_greedy_rows_take_the_argmax_beside_sampled_rows():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    params = BatchParams.of([SamplingParams(temperature=0), SamplingParams(temperature=5.0)], 3)
    picks = {int(choose(logits, params, uniform(np.array([s, s], np.uint64), np.array([0, 0], np.uint64)))[1])
             for s in range(200)}
    for s in range(50):
        assert int(choose(logits, params, uniform(np.array([s, s], np.uint64), np.zeros(2, np.uint64)))[0]) == 1
    assert picks == {0, 1, 2}  # the hot row really samples


def test_repetition_penalty_follows_ctrl():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    recent = torch.tensor([[1.0, 1.0, 0.0]])
    out = apply_repetition_penalty(logits, recent, torch.tensor([[2.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 1.0]]))


def test_uniform_is_a_pure_function_of_seed_and_step():
    seeds = np.array([1, 1, 2, 2**62], dtype=np.uint64)
    steps = np.array([0, 1, 0, 5], dtype=np.uint64)
    a, b = uniform(seeds, steps), uniform(seeds, steps)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 4
    assert ((a >= 0) & (a < 1)).all()
    many = uniform(np.zeros(100_000, np.uint64), np.arange(100_000, dtype=np.uint64))
    assert abs(many.mean() - 0.5) < 0.005 and abs(many.var() - 1 / 12) < 0.002


def test_derived_seeds():
    assert [derive_seed(41, i) for i in range(3)] == [41, 42, 43]
    assert derive_seed(2**63 - 1, 1) == 0


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", math.nan), ("top_k", -1), ("top_k", 1.5), ("top_p", 0.0), ("top_p", 1.01),
    ("min_p", -0.1), ("min_p", 1.5), ("typical_p", 0.0), ("typical_p", 1.5), ("frequency_penalty", 2.5),
    ("presence_penalty", -3.0), ("presence_penalty", math.inf), ("logit_bias", {0: 101}), ("logit_bias", {"ab": 1}),
    ("logit_bias", {-1: 1}), ("logit_bias", {True: 1}),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("seed", -1), ("seed", 2**63), ("seed", True),
])
def test_invalid_params_name_their_field(field, value):
    with pytest.raises(ConfigError) as e:
        SamplingParams(**{field: value})
    assert e.value.field == field


def test_with_seed_fills_in_a_random_seed_once():
    p = SamplingParams(temperature=0.7).with_seed()
    assert p.seed is not None and p.temperature == 0.7 and p.with_seed() is p
