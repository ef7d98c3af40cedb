"""`charnet sample`: prints what the engine generates; every bad input is one clear line."""

from __future__ import annotations

import pytest

import charnet
from tests.conftest import assert_clean_error, cli, run_cli


def test_prints_prompt_and_continuation(capsys, tiny_model):
    result = cli(capsys, "sample", tiny_model, "--prompt", "ROMEO:", "--length", "80", "--seed", "3")
    assert result.returncode == 0, result.stderr
    expected = charnet.load(tiny_model).generate("ROMEO:", max_chars=80, seed=3).text
    assert result.stdout == "ROMEO:" + expected + "\n"
    assert result.stderr == ""  # a given seed is not echoed back


def test_greedy_no_echo_and_random_seed_reported(capsys, tiny_model):
    greedy = cli(capsys, "sample", tiny_model, "-p", "KING", "-n", "60", "-t", "0", "--no-echo", "--no-stream")
    assert greedy.returncode == 0
    assert greedy.stdout == charnet.load(tiny_model).generate("KING", max_chars=60, temperature=0).text + "\n"
    seed = int(greedy.stderr.strip().removeprefix("seed: "))
    replay = cli(capsys, "sample", tiny_model, "-p", "KING", "-n", "60", "-t", "0", "--no-echo", "--seed", str(seed))
    assert replay.stdout == greedy.stdout


def test_num_samples_and_stop(capsys, tiny_model):
    result = cli(capsys, "sample", tiny_model, "-p", "A", "-n", "100", "--seed", "5", "--num-samples", "3",
                 "--stop", "\\n", "--no-echo")
    assert result.returncode == 0
    model = charnet.load(tiny_model)
    for i in range(3):
        out = model.generate("A", max_chars=100, seed=5 + i, stop="\n")
        assert f"--- sample {i + 1} of 3, seed {5 + i} ---\n{out.text}\n" in result.stdout
        assert "\n" not in out.text


def test_prompt_characters_outside_the_vocabulary_warn(capsys, tiny_model):
    result = cli(capsys, "sample", tiny_model, "-p", "Ω東", "-n", "5", "--seed", "1")
    assert result.returncode == 0
    assert "warning:" in result.stderr and "'Ω', '東'" in result.stderr


def test_real_process_streams(tiny_model):
    result = run_cli("sample", tiny_model, "-p", "", "-n", "40", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == charnet.load(tiny_model).generate("", max_chars=40, seed=2).text + "\n"


@pytest.mark.parametrize("args,fragments", [
    (["--temperature", "-0.5"], ["--temperature", ">= 0"]),
    (["--top-p", "0"], ["--top-p", "(0, 1]"]),
    (["--top-p", "1.2"], ["--top-p"]),
    (["--top-k", "-1"], ["--top-k"]),
    (["--repetition-penalty", "0"], ["--repetition-penalty", "> 0"]),
    (["--length", "-1"], ["--length"]),
    (["--length", "100001"], ["--length", "100000"]),
    (["--num-samples", "0"], ["--num-samples"]),
    (["--seed", "-3"], ["--seed"]),
    (["--top-k", "many"], ["--top-k", "integer"]),
    (["--min-p", "1.5"], ["--min-p"]),
    (["--typical-p", "0"], ["--typical-p"]),
    (["--frequency-penalty", "3"], ["--frequency-penalty"]),
    (["--presence-penalty", "-2.5"], ["--presence-penalty"]),
    (["--logit-bias", "e"], ["--logit-bias", "CHAR=BIAS"]),
    (["--logit-bias", "ee=1"], ["--logit-bias", "one character"]),
    (["--logit-bias", "e=lots"], ["--logit-bias", "number"]),
    (["--logit-bias", "e=101"], ["--logit-bias", "[-100, 100]"]),
    (["--logit-bias", "{=5"], ["--logit-bias", "not a token"]),
    (["--logit-bias", "id:9999=5"], ["--logit-bias", "vocabulary size"]),
    (["--regex", "[a-"], ["--regex", "unclosed"]),
    (["--regex", "a", "--choice", "b"], ["--regex", "--choice", "give one"]),
    (["--json-schema", "/nonexistent.json"], ["--json-schema", "cannot read"]),
    (["--choice", "{x}"], ["--choice", "can begin it"]),  # the tiny model has no braces
])
def test_bad_values(capsys, tiny_model, args, fragments):
    assert_clean_error(cli(capsys, "sample", tiny_model, *args), *fragments)


def test_unknown_checkpoint_lists_the_names(capsys, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARNET_CHECKPOINTS", str(tiny_model.parent))
    assert_clean_error(cli(capsys, "sample", "nonesuch"), "nonesuch", "available names:", "best")
    assert_clean_error(cli(capsys, "sample", tmp_path / "missing"), "missing")


def test_no_checkpoint_means_the_bundled_model(tmp_path):
    """From any directory, `charnet sample` finds checkpoints/shakespeare of the checkout."""
    result = run_cli("sample", "-p", "ROMEO:", "-n", "60", "--seed", "1", "-t", "0.5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ROMEO:" + charnet.load("shakespeare").generate(
        "ROMEO:", max_chars=60, seed=1, temperature=0.5).text + "\n"
    bundled = charnet.load("shakespeare")
    assert bundled.checkpoint.config["metrics"]["val_loss"] < 1.5  # the quality bar, as recorded


@pytest.mark.parametrize("args, option", [(["--top-k", "18446744073709551616"], "--top-k"),
                                          (["--top-k", "100000"], "--top-k"),
                                          (["--stop", "x" * 300], "--stop")])
def test_out_of_range_values_are_one_line(capsys, args, option):
    result = cli(capsys, "sample", "-n", "5", *args)
    assert_clean_error(result, option)


def test_constraint_options(capsys, tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 80}},'
                      ' "required": ["age"], "additionalProperties": false}', encoding="utf-8")
    grammar = tmp_path / "greeting.lark"
    grammar.write_text('start: ("Good morrow" | "Farewell") ", " NAME\nNAME: /[A-Z][a-z]+/\n', encoding="utf-8")
    model = charnet.load("shakespeare")
    runs = [(["--regex", "[A-Z][a-z]+ of [A-Z][a-z]+"], {"regex": "[A-Z][a-z]+ of [A-Z][a-z]+"}),
            (["--json-schema", schema], {"json": schema.read_text(encoding="utf-8")}),
            (["--grammar", grammar], {"grammar": grammar.read_text(encoding="utf-8")}),
            (["--choice", "Ay", "--choice", "No, my lord"], {"choice": ["Ay", "No, my lord"]})]
    for args, constraint in runs:
        result = cli(capsys, "sample", "-p", "ROMEO:\n", "-n", "80", "--seed", "2", "--no-echo", *args)
        assert result.returncode == 0, result.stderr
        expected = model.generate("ROMEO:\n", max_chars=80, seed=2, constraint=constraint)
        assert result.stdout == expected.text + "\n" and expected.finish_reason == "stop"


def test_decoding_options(capsys, tiny_model):
    args = ["--min-p", "0.05", "--typical-p", "0.9", "--frequency-penalty", "0.4", "--presence-penalty", "0.2",
            "--logit-bias", "e=-100", "--logit-bias", "\\n=-100"]
    result = cli(capsys, "sample", tiny_model, "-p", "A", "-n", "120", "--seed", "7", "--no-echo", *args)
    assert result.returncode == 0, result.stderr
    expected = charnet.load(tiny_model).generate("A", max_chars=120, seed=7, min_p=0.05, typical_p=0.9,
                                                 frequency_penalty=0.4, presence_penalty=0.2,
                                                 logit_bias={"e": -100, "\n": -100}).text
    assert result.stdout == expected + "\n" and "e" not in expected and "\n" not in expected
    e_id = charnet.load(tiny_model).vocab.token_id("e")
    forced = cli(capsys, "sample", tiny_model, "-n", "10", "--seed", "1", "--no-echo", "--logit-bias", f"id:{e_id}=100")
    assert forced.stdout == "e" * 10 + "\n"
