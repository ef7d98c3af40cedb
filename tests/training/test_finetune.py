"""Fine-tuning: a grown vocabulary keeps the parent's rows and predictions; the CLI
records the lineage and refuses options that contradict the parent's shape."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from charnet.checkpoint import load_checkpoint
from charnet.config import ModelConfig
from charnet.model import CharRNN
from charnet.tokenizer import Vocab
from charnet.training.finetune import VOCAB_ROWS, grow
from tests.conftest import TINY, assert_clean_error, cli


@pytest.mark.parametrize("tie", [False, True])
def test_growing_keeps_every_old_row_and_the_parents_predictions(tie):
    torch.manual_seed(0)
    old = Vocab.from_chars("abc \n")
    parent = CharRNN(ModelConfig(vocab_size=old.size, cell="gru", hidden=16, embedding=16, layers=2,
                                 tie_embeddings=tie)).eval()
    new = old.extended("abcé€")
    assert new.listing()[: old.size] == old.listing() and new.listing()[old.size:] == ["é", "€"]
    child = grow(parent, new.size, old.unk_id, dropout=0.3).eval()
    assert child.config.dropout == 0.3 and child.config.vocab_size == old.size + 2
    before, after = parent.state_dict(), child.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        kept = after[name][: old.size] if name in VOCAB_ROWS else after[name]
        if name == "head.bias":  # the unknown id shares its probability with the two new characters
            kept = torch.cat([kept[:old.unk_id], kept[old.unk_id + 1:]])
            tensor = torch.cat([tensor[:old.unk_id], tensor[old.unk_id + 1:]])
        assert torch.equal(kept, tensor), name
    ids = torch.tensor([[1, 2, 3, 4, 2]])
    with torch.no_grad():
        p = parent(ids)[0].softmax(-1)
        q = child(ids)[0].softmax(-1)
    known = [i for i in range(old.size) if i != old.unk_id]
    torch.testing.assert_close(q[..., known], p[..., known])
    torch.testing.assert_close(q[..., old.unk_id] * 3, p[..., old.unk_id])  # split three ways, evenly
    torch.testing.assert_close(q[..., old.size:], q[..., [old.unk_id, old.unk_id]])
    assert math.isclose(float(q.sum(-1).mean()), 1.0, rel_tol=1e-6)


def test_a_byte_vocabulary_never_grows():
    v = Vocab.bytes()
    assert v.extended("漢字 emoji 👍") is v and v.missing("👍") == []


def test_fine_tuning_extends_the_vocabulary_and_records_its_parent(capsys, trained, unicode_corpus, tmp_path):
    out = tmp_path / "child"
    result = cli(capsys, "train", unicode_corpus, "--init-from", trained, "--max-steps", "10", "--eval-every", "10",
                 "--batch-size", "4", "--seq-len", "32", "--out", out)
    assert result.returncode == 0, result.stderr
    papa = load_checkpoint(trained / "best")
    config = json.loads((out / "last" / "config.json").read_text())
    record = config["parent"]
    new_chars = sorted(set(unicode_corpus.read_bytes().decode("utf-8")) - set(papa.vocab.listing()))
    assert record["added_chars"] == new_chars and len(new_chars) > 20
    assert f"+ {len(new_chars)} new characters" in result.stdout
    assert record["weights_sha256"] == papa.config["files"]["model.safetensors"]
    assert record["path"] == str(papa.path) and record["vocab_size"] == papa.vocab.size
    assert config["model"] == {**papa.config["model"], "vocab_size": papa.vocab.size + len(new_chars)}
    assert config["training"]["lr"] == 5e-4  # the fine-tuning default
    child = load_checkpoint(out / "last")
    assert child.vocab.listing()[: papa.vocab.size] == papa.vocab.listing()
    assert "fine-tuned from" in cli(capsys, "info", out).stdout
    assert json.loads(cli(capsys, "info", out, "--json").stdout)["parent"] == record
    # A grandchild records the chain.
    grand = cli(capsys, "train", unicode_corpus, "--init-from", out / "last", "--max-steps", "2", "--eval-every", "2",
                "--batch-size", "4", "--seq-len", "32", "--lr", "1e-3", "--out", tmp_path / "grandchild")
    assert grand.returncode == 0, grand.stderr
    chain = json.loads((tmp_path / "grandchild" / "last" / "config.json").read_text())
    assert chain["training"]["lr"] == 1e-3 and chain["parent"]["added_chars"] == []
    assert chain["parent"]["parent"] == record


def test_weights_start_as_the_parents(capsys, trained, small_corpus, tmp_path):
    """A zero learning rate leaves the fine-tuned weights exactly the parent's."""
    out = tmp_path / "same"
    result = cli(capsys, "train", small_corpus, "--init-from", trained, "--lr", "1e-30", "--weight-decay", "0",
                 "--max-steps", "1", "--eval-every", "1", "--batch-size", "4", "--seq-len", "32", "--out", out)
    assert result.returncode == 0, result.stderr
    a, b = load_file(trained / "best" / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("args, flag", [
    (["--hidden", "48"], "--hidden"),
    (["--model", "gru"], "--model"),
    (["--layers", "3"], "--layers"),
    (["--tokenizer", "byte"], "--tokenizer"),
    (["--tie-embeddings"], "--tie-embeddings"),
])
def test_options_that_contradict_the_parent(capsys, trained, small_corpus, tmp_path, args, flag):
    out = tmp_path / "no"
    assert_clean_error(cli(capsys, "train", small_corpus, "--init-from", trained, *args, "--out", out),
                       "--init-from", flag, "contradicts")
    assert not out.exists()


def test_fine_tuning_errors(capsys, trained, small_corpus, tmp_path):
    assert_clean_error(cli(capsys, "train", small_corpus, "--init-from", tmp_path / "nothing", "--out", tmp_path / "a"),
                       "no such checkpoint")
    assert_clean_error(cli(capsys, "train", small_corpus, "--init-from", trained, "--resume", "--out", trained),
                       "--init-from", "--resume")
    # Restating the parent's shape is allowed.
    ok = cli(capsys, "train", small_corpus, "--init-from", trained, *TINY, "--max-steps", "1", "--eval-every", "1",
             "--out", tmp_path / "b")
    assert ok.returncode == 0, ok.stderr
