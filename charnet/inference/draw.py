"""Drawing a batch's next tokens from its tables, and what the model believed about each.

`draw` takes the rows' pending logits (and their repetition and count tables, where the
sampling settings use them) and returns a token per row: through the compiled sampler
(`charnet.inference.fused_sampling`) when the kernel is fused, else through
`charnet.inference.sampling.choose`. Either way the unknown id is never drawn, and a
row's draw depends only on its own seed and step (the batch's other rows do not change
it). Rows that ask for log-probabilities get a `CharLogprob` each, computed from the
same logits.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from charnet.inference.generation import CharLogprob, Sequence
from charnet.inference.sampling import BatchParams, choose, uniform
from charnet.tokenizer import Vocab

try:
    from charnet.inference import fused_sampling
except Exception:  # numba absent or broken: the kernel is not fused either, and nothing calls it
    fused_sampling = None


def draw(tables: tuple[Tensor, Tensor, Tensor], used: int, rows: list[int], seqs: list[Sequence],
         params: BatchParams, allowed: Tensor | None, vocab: Vocab, fused: bool) -> tuple[Tensor, list]:
    """Tokens for `rows` from their pending logits, and their log-probability records.

    `tables`: the batch's (logits, recent, counts), of which the first `used` rows hold
    sequences; `seqs`: the sequences of `rows`, in the same order; `allowed`: their
    constraint masks, if any; `fused`: whether the compiled sampler runs."""
    logits_table, recent_table, counts_table = tables
    every = len(rows) == used
    unk = vocab.unk_id
    seeds = np.fromiter((s.seed for s in seqs), dtype=np.uint64, count=len(seqs))
    steps = np.fromiter((s.generated for s in seqs), dtype=np.uint64, count=len(seqs))
    want = [s.request.logprobs for s in seqs]
    logprobs = any(w is not None for w in want)
    if fused:
        # The compiled sampler reads the batch's tables in place and leaves out the
        # unknown id itself; log-probabilities, when asked for, see the same logits.
        tokens = torch.from_numpy(fused_sampling.choose(
            logits_table, np.asarray(rows, dtype=np.int64), params, seeds, steps, unk,
            recent_table if params.any_penalty else None, counts_table if params.any_count_penalty else None,
            allowed))
        if logprobs:
            logits = without_unknown(logits_table[:used].clone() if every else logits_table[rows], vocab)
    else:
        logits = without_unknown(logits_table[:used] if every else logits_table[rows], vocab)
        recent = counts = None
        if params.any_penalty:
            recent = recent_table[:used] if every else recent_table[rows]
        if params.any_count_penalty:
            counts = counts_table[:used] if every else counts_table[rows]
        tokens = choose(logits, params, uniform(seeds, steps), recent, counts, allowed)
    infos = records(logits, tokens, want, vocab) if logprobs else [None] * len(seqs)
    return tokens, infos


def without_unknown(logits: Tensor, vocab: Vocab) -> Tensor:
    """`logits` (changed in place) with the unknown id at -inf: it stands for characters
    the model never saw, not one to write."""
    if vocab.unk_id is not None:
        logits[:, vocab.unk_id] = float("-inf")
    return logits


def records(logits: Tensor, tokens: Tensor, want: list[int | None], vocab: Vocab) -> list[CharLogprob | None]:
    """Each row's drawn token and its `want` most likely alternatives under `logits`
    (None for a row that asked for none)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
    k = max(w for w in want if w is not None)
    top_v, top_i = logp.topk(k, dim=-1) if k else (None, None)
    top_v = top_v.tolist() if k else None
    top_i = top_i.tolist() if k else None
    out: list[CharLogprob | None] = []
    for r, (w, token) in enumerate(zip(want, tokens.tolist())):
        if w is None:
            out.append(None)
            continue
        top = [(vocab.display(i), v) for i, v in zip(top_i[r][:w], top_v[r][:w])] if w else []
        out.append(CharLogprob(text=vocab.display(token), logprob=chosen[r], top=top))
    return out
