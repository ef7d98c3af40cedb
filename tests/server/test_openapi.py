"""Schemathesis over /openapi.json of a real server, every check it has (`--checks all`),
with and without an API key: no 5xx, every response's status, headers, content type and
body as documented, every request the schema allows accepted and every one it forbids
refused, the key enforced where the schema declares it.

The server's limits that JSON Schema can state (lengths, maxima, item counts) are in its
schema. Two cannot be stated, as they multiply fields: the response budget (choices x
tokens x alternatives) and the room for a request's sequences (prompts x n). The server
fuzzed here is given room for anything its schema allows, so neither binds; both are
tested where they do (`test_errors.py`). Nor can it state what is valid by meaning (a
pattern that compiles, a character the model has): `fuzz_hooks.py` gives well-shaped
bodies contents the model can honour there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

FUZZED = ["--max-chars-cap", "64", "--max-concurrency", "16", "--max-queue", "16", "--max-n", "4",
          "--max-prompt-chars", "200", "--max-score-chars", "2000",
          # 4 prompts x n=4 x (200 echoed + 64 generated) x (1 + 20 logprobs) = 88,704
          "--max-response-tokens", "100000"]


@pytest.mark.parametrize("key", [None, "fuzz"], ids=["no key", "key"])
def test_api_conforms_to_its_schema(start_server, models_dir, key, tmp_path):
    server = start_server([models_dir, *FUZZED], env={"CHARNET_API_KEY": key} if key else {})
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", "--checks", "all",
               "--max-examples", "200", "--workers", "1", "--seed", "1", "--request-timeout", "60",
               "--suppress-health-check", "all"]
    if key:
        command += ["--header", f"Authorization: Bearer {key}"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": "tests.server.fuzz_hooks",
                              "PYTHONPATH": str(ROOT)})
    summary = run.stdout[-3000:]
    assert run.returncode == 0, summary
    generated = int(re.search(r"(\d+) generated", run.stdout).group(1))
    assert generated >= 2000, summary
    assert re.search(r"Operations:\s+9 selected / 9 total", run.stdout), summary
