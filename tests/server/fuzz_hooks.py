"""Schemathesis hooks for `test_openapi.py` (loaded through SCHEMATHESIS_HOOKS).

Some of what a request may hold is valid by meaning, not by shape, and JSON Schema cannot
say it: a pattern must compile, a grammar must parse, a constraint must be one the model's
vocabulary can begin, a character bias must name a character the model has, a token id must
be below its vocabulary size. Each is refused with a 400 naming the field (`test_errors.py`,
`tests/inference/test_constraints.py`). Here, a generated body that is well-shaped in those
fields gets contents the fuzzed model can honour, of the same kind, so that every other
field is still checked against the rule that the schema's requests are accepted. A body
that is malformed there is left alone, so its refusal is still checked too.
"""

from __future__ import annotations

import schemathesis

VALID = {"regex": "[a-z]{1,8}", "grammar": 'start: "ROMEO" | "JULIET"', "choice": ["to be", "or not"]}
"""A constraint of each kind that the fuzzed models (trained on plain text) can write."""

CHARS = "abcdefghijklmnopqrstuvwxyz"


@schemathesis.hook
def map_body(context, body):
    if not isinstance(body, dict):
        return body
    outputs = body.get("structured_outputs")
    if isinstance(outputs, dict) and len(outputs) == 1:
        (kind, spec), = outputs.items()
        if kind in VALID and isinstance(spec, type(VALID[kind])) and spec:
            body["structured_outputs"] = {kind: VALID[kind]}
        elif kind in ("json", "json_object") and spec not in (None, False):  # no braces in the vocabulary
            body["structured_outputs"] = {"regex": VALID["regex"]}
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        body["response_format"] = {"type": "text"}
    bias = body.get("char_bias")
    if isinstance(bias, dict):
        body["char_bias"] = {(CHARS[i % len(CHARS)] if isinstance(k, str) and len(k) == 1 else k): v
                             for i, (k, v) in enumerate(bias.items())}
    ids = body.get("logit_bias")
    if isinstance(ids, dict):
        body["logit_bias"] = {(str(int(k) % 20) if isinstance(k, str) and k.isdigit() and len(k) <= 7 else k): v
                              for k, v in ids.items()}
    return body
