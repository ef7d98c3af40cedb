"""Units of information: the trainer, `charnet eval` and scoring report bits, the model
computes nats."""

import math

LN2 = math.log(2)


def bits(nats: float) -> float:
    """Nats converted to bits."""
    return nats / LN2
