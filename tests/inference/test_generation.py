"""Continuous batching: sequences join and leave without changing what any of them writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charnet.checkpoint import Checkpoint, load_checkpoint
from charnet.config import ModelConfig
from charnet.inference.engine import Engine
from charnet.errors import ConfigError
from charnet.inference.batch import Batch
from charnet.inference.generation import FINISH_ERROR
from charnet.inference.kernel import StepKernel
from charnet.model import CharRNN
from charnet.inference.prompt_cache import BLOCK, PromptCache
from charnet.inference.request import MAX_CHARS, GenerationRequest
from charnet.inference.stops import StopMatcher
from charnet.inference.sampling import SamplingParams
from charnet.tokenizer import Vocab
from tests.conftest import BAD_TOP_P


@pytest.fixture(scope="module")
def trained(tiny_model):
    ckpt = load_checkpoint(tiny_model)
    return StepKernel(ckpt.model), ckpt.vocab


def req(prompt="ROMEO:\n", n=60, seed=1, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_chars=n, params=SamplingParams(seed=seed, **{"temperature": 1.0, **kw}))


def run(batch: Batch) -> None:
    while len(batch):
        batch.step()


def solo(kernel, vocab, request) -> str:
    batch = Batch(kernel, vocab)
    (seq,) = batch.add(request)
    run(batch)
    return seq.text


def test_sequences_joining_and_leaving_write_what_they_write_alone(trained):
    kernel, vocab = trained
    requests = [req(prompt=p, n=n, seed=s) for s, (p, n) in
                enumerate([("ROMEO:\n", 80), ("", 20), ("First Citizen:", 50), ("KING", 5), ("O", 120)] * 3)]
    batch = Batch(kernel, vocab)
    seqs = []
    for i, r in enumerate(requests):  # one joins every other step, while others finish
        seqs += batch.add(r)
        batch.step()
        if i % 2:
            batch.step()
    run(batch)
    for seq, r in zip(seqs, requests):
        assert seq.text == solo(kernel, vocab, r), r
        assert seq.finish_reason == "length" and seq.generated == r.max_chars


def test_cancel_frees_the_row_and_spares_the_others(trained):
    kernel, vocab = trained
    batch = Batch(kernel, vocab)
    a, b, c = (batch.add(req(seed=s))[0] for s in (1, 2, 3))
    for _ in range(10):
        batch.step()
    batch.cancel(b)
    assert len(batch) == 2 and b.finish_reason == "cancelled" and b.row == -1
    run(batch)
    assert a.text == solo(kernel, vocab, req(seed=1)) and c.text == solo(kernel, vocab, req(seed=3))


def test_stop_matcher_never_lets_part_of_a_stop_out():
    m = StopMatcher(("\n\n", "END"))
    out = []
    for piece in ["ab", "c\n", "x", "E", "N", "d", "E", "N"]:
        text, stopped = m.feed(piece)
        out.append(text)
        assert not stopped
    assert "".join(out) == "abc\nxENd" and m.tail == "EN"
    text, stopped = m.feed("D and more")
    assert stopped and text == ""
    m2 = StopMatcher(("abc",))
    assert m2.feed("xxab") == ("xx", False) and m2.feed("d") == ("abd", False)


def test_stop_strings_cut_exactly_and_hold_their_logprobs_back(trained):
    kernel, vocab = trained
    full = solo(kernel, vocab, req(n=300, seed=5))
    stop = full[100:103]
    first = full.index(stop)
    batch = Batch(kernel, vocab)
    (seq,) = batch.add(GenerationRequest(prompt="ROMEO:\n", max_chars=300, params=SamplingParams(seed=5), stop=(stop, "never appears"), logprobs=2))
    streamed = []
    while len(batch):
        streamed += [p.text for p in batch.step()]
    assert seq.text == full[:first] == "".join(streamed)
    assert seq.finish_reason == "stop"
    assert "".join(lp.text for lp in seq.logprobs) == seq.text
    assert all(len(lp.top) == 2 and lp.top[0][1] >= lp.top[1][1] >= lp.logprob - 1e-6 or lp.text == lp.top[0][0]
               for lp in seq.logprobs)


def test_logprobs_are_the_models_distribution(trained):
    kernel, vocab = trained
    batch = Batch(kernel, vocab)
    (seq,) = batch.add(GenerationRequest(prompt="ROMEO:\n", max_chars=30, params=SamplingParams(seed=2, temperature=0.5), logprobs=3))
    run(batch)
    assert len(seq.logprobs) == 30 and "".join(lp.text for lp in seq.logprobs) == seq.text
    for lp in seq.logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert lp.logprob <= lp.top[0][1] + 1e-6
        assert sum(np.exp(v) for _, v in lp.top) <= 1 + 1e-5


def test_prompt_cache_hits_change_nothing_but_work(trained):
    kernel, vocab = trained
    prompt = "ROMEO:\n" + "But soft, what light through yonder window breaks? " * 4
    cold = solo(kernel, vocab, req(prompt=prompt, n=50, seed=9))
    cache = PromptCache()
    batch = Batch(kernel, vocab, cache)
    (first,) = batch.add(req(prompt=prompt, n=50, seed=9))
    run(batch)
    assert first.text == cold and cache.misses == 1 and cache.primed_tokens == len(prompt)
    # the same prompt again, a longer one, and the prompt plus its own continuation (the
    # cached state stops before the last generated character, which was never fed)
    for p, new in [(prompt, 0), (prompt + " more", 5), (prompt + first.text + "!", 2)]:
        before = cache.primed_tokens
        (seq,) = batch.add(req(prompt=p, n=50, seed=9))
        run(batch)
        assert seq.text == solo(kernel, vocab, req(prompt=p, n=50, seed=9))
        assert cache.primed_tokens - before == new, p
    assert cache.hits == 3 and cache.misses == 1
    # a prompt sharing a preamble of two blocks with a cached one primes only the rest
    other = prompt[: 2 * BLOCK] + "X" * 10
    before = cache.primed_tokens
    batch.add(req(prompt=other, n=1))
    run(batch)
    assert cache.primed_tokens - before == 10


def test_prompts_primed_as_rows_equal_prompts_primed_alone(trained):
    """Prompts prime as rows of a batch, one token a step beside a row that samples, each
    from its longest cached prefix, and reach bit for bit the states each reaches alone
    (cached at every block of the way)."""
    kernel, vocab = trained
    prompts = ["ROMEO:\n", "\n\n", "First Citizen:\nBefore we proceed any further, hear me speak." * 2,
               "O" * (3 * BLOCK + 40), "KING", "First Citizen:\nBefore we proceed any further, hear me speak."]
    cache = PromptCache()
    batch = Batch(kernel, vocab, cache)
    batch.add(req(prompt=prompts[-1], n=1))  # one of them is cached, another extends it
    run(batch)
    before = cache.primed_tokens
    (neighbour,) = batch.add(req(prompt="X", n=400))
    batch.step()
    batch.step()  # sampling, while the others prime
    for p in prompts:
        batch.add(req(prompt=p, n=1))
    run(batch)
    assert neighbour.text == solo(kernel, vocab, req(prompt="X", n=400))
    for prompt in prompts:
        ids = vocab.encode(prompt)
        alone = kernel.zero_state(1)
        alone_logits = kernel.prime(torch.as_tensor(ids.astype(np.int64)), alone)
        length, entry = cache.lookup(ids)
        assert length == len(prompt)
        assert torch.equal(entry.logits, alone_logits), prompt
        assert all(torch.equal(a, b) for a, b in zip(entry.state, alone)), prompt
    assert cache.lookup(vocab.encode("O" * (2 * BLOCK + 5)))[0] == 2 * BLOCK  # a mark on the way
    # the cached prompt cost nothing again, the one extending it only its tail, the rest in full
    assert cache.primed_tokens - before == 1 + sum(map(len, prompts[:-1])) - len(prompts[-1])


def test_a_prompt_primes_between_other_rows_steps(trained):
    """A long prompt costs the batch one row a step: a stream beside it gets a character
    every step while it primes, and a priming request that is cancelled leaves at once."""
    kernel, vocab = trained
    batch = Batch(kernel, vocab)
    (stream,) = batch.add(req(prompt="X", n=50))
    batch.step()
    batch.step()
    (long,) = batch.add(req(prompt="y" * 5000, n=10))
    for _ in range(30):
        pieces = batch.step()
        assert [p.seq for p in pieces] == [stream]
    assert long.priming and 0 < long.primed <= 30
    batch.cancel(long)
    assert long.finish_reason == "cancelled" and batch.rows == 1
    run(batch)
    assert stream.text == solo(kernel, vocab, req(prompt="X", n=50))


def test_a_burst_added_together_writes_what_each_writes_alone(trained):
    kernel, vocab = trained
    requests = [req(prompt=p, n=40, seed=s) for s, p in enumerate(["ROMEO:", "", "KING", "O" * 300, "First"])]
    batch = Batch(kernel, vocab, PromptCache())
    groups = [batch.add(r, 2) for r in requests]
    run(batch)
    for seqs, r in zip(groups, requests):
        assert [s.text for s in seqs] == [solo(kernel, vocab, r),
                                          solo(kernel, vocab, req(prompt=r.prompt, n=40, seed=r.params.seed + 1))]


def test_a_burst_takes_its_rows_in_one_resize(trained, monkeypatch):
    """Sequences admitted together grow the batch's tensors once, not once each."""
    kernel, vocab = trained
    batch = Batch(kernel, vocab, PromptCache())
    (neighbour,) = batch.add(req(prompt="X", n=100, seed=9))
    batch.step()
    sizes = []
    real = Batch._resize

    def resize(self, n):
        before = self._rows
        real(self, n)
        if self._rows != before:
            sizes.append(self._rows)

    monkeypatch.setattr(Batch, "_resize", resize)
    requests = [req(prompt=p, n=40, seed=s) for s, p in enumerate(["ROMEO:", "KING", "First", "O", "Be"])]
    groups = [batch.add(r) for r in requests]
    batch.step()
    assert sizes == [kernel.rows(6)] and batch.rows == 6
    run(batch)
    assert [seqs[0].text for seqs in groups] == [solo(kernel, vocab, r) for r in requests]


SPEECH = "First Citizen:\nBefore we proceed any further, hear me speak."


def test_requests_arriving_with_one_prompt_prime_it_once(trained):
    """A request whose prompt another request's row is priming waits for that row (with
    or without a cache to keep the result), and each writes what it writes alone; its
    own second sample follows it, and a prompt that only begins the same primes itself."""
    kernel, vocab = trained
    for cache in (PromptCache(), PromptCache(max_bytes=0)):
        batch = Batch(kernel, vocab, cache)
        batch.add(req(prompt="X", n=150, seed=0))  # a sampling neighbour: priming goes row by row
        batch.step()
        (first,) = batch.add(req(prompt=SPEECH, n=30, seed=1))
        batch.step()
        batch.step()
        later = batch.add(req(prompt=SPEECH, n=30, seed=2), 2) + batch.add(req(prompt=SPEECH[:20], n=30, seed=3))
        batch.step()
        assert [s.joined for s in later] == [True, False, False] and later[0].leader is first
        assert later[0].row == later[1].row == -1 and later[2].row >= 0
        assert batch.logits.shape[0] == kernel.rows(batch.rows)  # no row kept for the one that joined
        run(batch)
        assert cache.primed_tokens == 1 + len(SPEECH) + 20
        assert [s.text for s in [first, *later]] == [solo(kernel, vocab, req(prompt=p, n=30, seed=k))
                                                      for p, k in [(SPEECH, 1), (SPEECH, 2), (SPEECH, 3),
                                                                   (SPEECH[:20], 3)]]


@pytest.mark.parametrize("stop", ["cancel", "suspend"])
def test_a_request_waiting_on_anothers_priming_primes_itself_if_that_stops(trained, stop):
    kernel, vocab = trained
    batch = Batch(kernel, vocab, PromptCache(), auto_admit=False)
    (neighbour,) = batch.add(req(prompt="X", n=150, seed=0))
    (a,) = batch.add(req(prompt=SPEECH, n=30, seed=1))
    batch.admit(neighbour)
    batch.admit(a)
    batch.step()
    (b,) = batch.add(req(prompt=SPEECH, n=30, seed=2))
    batch.admit(b)
    assert b.joined and b.row == -1 and not b.ready
    getattr(batch, stop)(a)
    assert b.ready and not b.joined and b.leader is None
    batch.admit(b)
    assert b.row >= 0 and b.priming  # nothing primes it but itself now
    while len(batch):
        for seq in [s for s in batch.waiting if s.ready]:
            batch.admit(seq)
        batch.step()
    assert b.text == solo(kernel, vocab, req(prompt=SPEECH, n=30, seed=2))
    assert a.text == ("" if stop == "cancel" else solo(kernel, vocab, req(prompt=SPEECH, n=30, seed=1)))


def test_prompt_cache_stays_within_its_byte_budget(trained):
    kernel, vocab = trained
    cache = PromptCache(max_bytes=40_000)
    batch = Batch(kernel, vocab, cache)
    for i in range(60):
        batch.add(req(prompt=f"prompt number {i} " * 10, n=1))
        run(batch)
        assert cache.bytes <= 40_000
    assert 0 < len(cache) < 60
    assert cache.lookup(vocab.encode("prompt number 59 " * 10))[1] is not None  # the newest stays
    assert cache.lookup(vocab.encode("prompt number 0 " * 10))[1] is None  # the oldest went


def test_byte_vocabulary_generates_valid_utf8(tmp_path):
    torch.manual_seed(0)
    vocab = Vocab.bytes()
    kernel = StepKernel(CharRNN(ModelConfig(vocab_size=256, hidden=32, embedding=8)).eval())
    batch = Batch(kernel, vocab)
    seqs = batch.add(GenerationRequest(prompt="héllo 字", max_chars=200, params=SamplingParams(seed=4)), count=3)
    run(batch)
    for seq in seqs:
        assert seq.generated == 200 and seq.prompt_tokens == len("héllo 字".encode())
        assert isinstance(seq.text, str) and "\udcff" not in seq.text


def test_zero_length_finishes_at_once(trained):
    kernel, vocab = trained
    batch = Batch(kernel, vocab)
    (seq,) = batch.add(req(n=0))
    assert seq.finished and seq.text == "" and len(batch) == 0


@pytest.mark.parametrize("kw,field", [
    (dict(max_chars=-1), "max_chars"), (dict(max_chars=MAX_CHARS + 1), "max_chars"), (dict(stop=("",)), "stop"),
    (dict(logprobs=21), "logprobs"), (dict(prompt=3), "prompt"),
])
def test_invalid_requests_name_their_field(kw, field):
    with pytest.raises(ConfigError) as e:
        GenerationRequest(**kw)
    assert e.value.field == field


# -- one sequence failing -------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    torch.manual_seed(0)
    vocab = Vocab.from_chars("abcdefghijklmnopqrstuvwxyz ,.:\n")
    model = CharRNN(ModelConfig(vocab_size=vocab.size, hidden=32, embedding=16, layers=2))
    return Engine(Checkpoint(path=tmp_path_factory.mktemp("ckpt"), model=model.eval(), vocab=vocab, config={}))


def test_one_failing_sequence_leaves_the_others_untouched(engine, boom):
    solo_texts = [engine.generate(p, max_chars=30, seed=7).text for p in ("to be", "or not")]
    batch = engine.new_batch()
    seqs = [batch.add(GenerationRequest.of(p, max_chars=30, seed=7))[0] for p in ("to be", "boom", "or not")]
    finishes = {}
    while len(batch):
        for piece in batch.step():
            if piece.finish_reason:
                finishes[piece.seq.request.prompt] = piece.finish_reason
    assert finishes == {"to be": "length", "boom": FINISH_ERROR, "or not": "length"}
    assert isinstance(seqs[1].error, RuntimeError)
    assert [seqs[0].text, seqs[2].text] == solo_texts


def test_a_failure_to_cache_a_finished_generation_costs_nothing(engine, monkeypatch):
    """Caching the state after a generation only saves work: when it fails, that
    generation and the others in its step end as they would have."""
    solo_texts = [engine.generate(p, max_chars=10, seed=7).text for p in ("fine", "to be")]
    real = PromptCache.put

    def failing(self, ids, *args):
        if len(ids) == 13:  # "fine" and its first nine characters
            raise MemoryError("injected")
        return real(self, ids, *args)

    monkeypatch.setattr(PromptCache, "put", failing)
    batch = engine.new_batch()
    seqs = [batch.add(GenerationRequest.of(p, max_chars=10, seed=7))[0] for p in ("fine", "to be")]
    run(batch)
    assert [s.finish_reason for s in seqs] == ["length", "length"] and [s.text for s in seqs] == solo_texts


def test_generate_and_stream_raise_the_sequence_error(engine, boom):
    with pytest.raises(RuntimeError, match="injected"):
        engine.generate("boom", max_chars=10, seed=1)
    with pytest.raises(RuntimeError, match="injected"):
        list(engine.stream("boom", max_chars=10, seed=1))


def test_a_row_whose_sampling_fails_ends_alone(engine, failing_draw):
    """A failure inside the batched draw is traced to its row: that sequence ends with an
    error, the others write their solo text."""
    solo_texts = [engine.generate(p, max_chars=30, seed=7).text for p in ("to be", "or not")]
    batch = engine.new_batch()
    good_a = batch.add(GenerationRequest.of("to be", max_chars=30, seed=7))[0]
    bad = batch.add(GenerationRequest.of("xx", max_chars=30, seed=7, top_p=BAD_TOP_P))[0]
    good_b = batch.add(GenerationRequest.of("or not", max_chars=30, seed=7))[0]
    run(batch)
    assert bad.finish_reason == FINISH_ERROR and isinstance(bad.error, OverflowError)
    assert [good_a.text, good_b.text] == solo_texts


def test_suspended_sequences_resume_exactly(trained):
    """A sequence whose row is taken away (while sampling or while priming) and given back
    later writes what it writes uninterrupted."""
    kernel, vocab = trained
    batch = Batch(kernel, vocab, auto_admit=False)
    requests = [req(prompt="ROMEO:\n", n=80, seed=1), req(prompt="x" * 300, n=40, seed=2)]
    seqs = [batch.add(r)[0] for r in requests]
    for seq in seqs:
        batch.admit(seq)
    for step in range(120):
        if step == 20:  # one samples, the other is still priming
            assert not seqs[0].priming and seqs[1].priming
            for seq in seqs:
                batch.suspend(seq)
            assert batch.rows == 0 and all(s.ready for s in seqs)
        if step == 30:
            for seq in seqs:
                batch.admit(seq)
        batch.step()
    for seq in seqs:
        batch.admit(seq) if seq.ready else None
    while len(batch):
        batch.step()
    assert [s.text for s in seqs] == [solo(kernel, vocab, r) for r in requests]


def test_top_k_is_bounded_by_the_vocabulary(engine):
    with pytest.raises(ConfigError, match="vocabulary size") as e:
        engine.generate("x", max_chars=3, top_k=engine.vocab.size + 1)
    assert e.value.field == "top_k"
    with pytest.raises(ConfigError) as e:
        engine.generate("x", max_chars=3, top_k=1 << 64)
    assert e.value.field == "top_k"
    with pytest.raises(ConfigError, match="Unicode") as e:
        engine.generate("\udcff", max_chars=3)
    assert e.value.field == "prompt"
