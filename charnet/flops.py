"""What a character costs a model of a given shape, in matrix-product FLOPs.

Counts the matrix products only; embedding lookups, gate nonlinearities and the
peephole vectors' products are O(H) per character and left out:

    forward = sum over layers l of 2 g H (I_l + H)  +  2 H V
    training = 3 x forward   (backward: one product for the inputs' gradient and one
                              for the weights' gradient per forward product)

with g gate blocks (rnn 1, gru 3, lstm and peephole 4), H hidden units, I_l the
layer's input size (the embedding E for the first layer, H above it), V the vocabulary.
The benchmarks report speed against it, and `charnet train` sizes its models by it.
"""

from __future__ import annotations

GATES = {"rnn": 1, "gru": 3, "lstm": 4, "peephole": 4}
"""Gate blocks of each cell's stacked weight matrices."""

FORMULA = ("training FLOPs/char = 3 x forward; forward = sum_l 2*g*H*(I_l + H) + 2*H*V "
           "(g gates: rnn 1, gru 3, lstm/peephole 4; I_0 = embedding, I_l = H above; matrix products only)")


def flops_per_char(cell: str, layers: int, hidden: int, embedding: int, vocab: int) -> dict:
    """Forward and training (forward + backward) matrix-product FLOPs per character."""
    g = GATES[cell]
    forward = sum(2 * g * hidden * ((embedding if layer == 0 else hidden) + hidden) for layer in range(layers))
    forward += 2 * hidden * vocab
    return {"forward": forward, "training": 3 * forward, "formula": FORMULA}
