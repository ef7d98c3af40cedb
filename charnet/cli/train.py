"""`charnet train`: fit a model on a corpus into a run directory."""

from __future__ import annotations

import dataclasses
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from charnet.cli import app, unescape
from charnet.config import DEFAULT_MAX_TIME, FINETUNE_LR, ModelConfig, TrainConfig, parse_duration
from charnet.documents import LINE_BREAK
from charnet.errors import CharnetError

M = ModelConfig(vocab_size=1)  # the defaults, for --help
T = TrainConfig(max_steps=1)


class Cell(str, Enum):
    rnn = "rnn"
    lstm = "lstm"
    peephole = "peephole"
    gru = "gru"


class Precision(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"


class TokenizerKind(str, Enum):
    char = "char"
    byte = "byte"


class Documents(str, Enum):
    files = "files"
    lines = "lines"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


MODEL_OPTS = {"model": "cell", "layers": "layers", "hidden": "hidden", "embedding": "embedding",
              "dropout": "dropout", "tie_embeddings": "tie_embeddings"}
# Options that define the run; on --resume they must match it (budgets may change).
FIXED_TRAIN_OPTS = ("seq_len", "batch_size", "lr", "weight_decay", "warmup", "grad_clip", "val_fraction", "seed",
                    "documents", "weight_drop", "locked_dropout", "input_dropout", "embed_dropout", "ar", "tar")
# Any of these given turns the automatic sizing off (`charnet.training.sizing`).
SHAPE_OPTS = ("layers", "hidden", "embedding", "tie_embeddings")
# Options a resumed run may change: they decide when to stop, what to show, where to run.
RESUME_OVERRIDES = ("eval_every", "eval_chars", "patience", "device", "compile", "precision", "samples",
                    "sample_every", "sample_chars", "sample_prompt")

Opt = typer.Option


def auto(fixed) -> str:
    """Help text of an option the automatic sizing chooses."""
    return (f"\\[default: sized to the corpus, the budget and this device; {fixed} when --layers, --hidden, "
            f"--embedding or --tie-embeddings is given]")


@app.command(no_args_is_help=False)
def train(
    ctx: typer.Context,
    corpus: Annotated[Optional[list[str]], typer.Argument(
        help="Text files, directories (read recursively) or globs such as 'src/**/*.py'; documents are "
             "joined with --separator. \\[default: the bundled corpora/shakespeare.txt]", show_default=False)] = None,
    init_from: Annotated[Optional[str], Opt(metavar="CHECKPOINT", help="Fine-tune: start from this checkpoint (a path, a "
                                            "run directory or a name such as shakespeare), its shape and vocabulary "
                                            "(extended with the corpus' new characters); fresh optimizer and schedule, "
                                            f"--lr {FINETUNE_LR:g} unless given.", show_default=False)] = None,
    documents: Annotated[Documents, Opt(help="files: running text, files joined by --separator; lines: every non-empty "
                                             "line is a document (a name, a title), shuffled each epoch, each started "
                                             "afresh and ended with a line break.")] = Documents.files,
    model: Annotated[Cell, Opt(help="Recurrent cell: rnn, lstm, peephole (LSTM with peepholes) or gru (the best "
                                    "in the quality benchmark).")] = Cell(M.cell),
    layers: Annotated[int, Opt(min=1, help=f"Stacked recurrent layers. {auto(M.layers)}", show_default=False)] = M.layers,
    hidden: Annotated[int, Opt(min=1, help=f"Units per recurrent layer. {auto(M.hidden)}", show_default=False)] = M.hidden,
    embedding: Annotated[int, Opt(min=1, help=f"Size of the input character embedding. {auto(M.embedding)}",
                                  show_default=False)] = M.embedding,
    dropout: Annotated[float, Opt(help=f"Dropout between layers and before the output layer, in [0, 1). {auto(M.dropout)}",
                                  show_default=False)] = M.dropout,
    tie_embeddings: Annotated[bool, Opt(help="Share input embedding and output weights (needs --embedding = --hidden).")] = False,
    weight_drop: Annotated[float, Opt(help=f"DropConnect on the recurrent (hidden-to-hidden) weights, in [0, 1). {auto(T.weight_drop)}",
                                      show_default=False)] = T.weight_drop,
    locked_dropout: Annotated[bool, Opt(help=f"One dropout mask per stream and window, shared across time "
                                             f"(variational dropout). {auto('off')}", show_default=False)] = T.locked_dropout,
    input_dropout: Annotated[float, Opt(help="Dropout on the embedded input characters, in [0, 1).")] = T.input_dropout,
    embed_dropout: Annotated[float, Opt(help="Drop whole characters: each one's embedding zeroed for a step with this "
                                             "probability, in [0, 1).")] = T.embed_dropout,
    ar: Annotated[float, Opt(help="Activation regularisation: adds AR x mean(h^2) of the top layer to the loss.")] = T.ar,
    tar: Annotated[float, Opt(help="Temporal activation regularisation: adds TAR x mean((h_t - h_t-1)^2) of the top "
                                   "layer to the loss.")] = T.tar,
    seq_len: Annotated[int, Opt(min=1, help=f"Characters per truncated-BPTT window. {auto(T.seq_len)}",
                                show_default=False)] = T.seq_len,
    batch_size: Annotated[int, Opt(min=1, help=f"Parallel streams per step (per process under torchrun). {auto(T.batch_size)}",
                                   show_default=False)] = T.batch_size,
    lr: Annotated[Optional[float], Opt(help=f"Peak AdamW learning rate (warmup, then cosine decay to a tenth). "
                                            f"\\[default: {T.lr:g}; {FINETUNE_LR:g} with --init-from]",
                                       show_default=False)] = None,
    weight_decay: Annotated[float, Opt(help="AdamW weight decay on weight matrices.")] = T.weight_decay,
    warmup: Annotated[int, Opt(min=0, help="Learning-rate warmup steps.")] = T.warmup_steps,
    grad_clip: Annotated[float, Opt(help="Clip the global gradient norm to this (0: off).")] = T.grad_clip,
    max_steps: Annotated[Optional[int], Opt(min=1, help="Stop after this many steps.", show_default=False)] = None,
    epochs: Annotated[Optional[float], Opt(help="Stop after this many passes over the training split.", show_default=False)] = None,
    max_time: Annotated[Optional[str], Opt(help="Stop after this much training time: 90s, 15m, 2h, 1h30m. With no "
                                          f"budget given at all: {DEFAULT_MAX_TIME / 60:g}m.", show_default=False)] = None,
    val_fraction: Annotated[float, Opt(help="Fraction at the end of the corpus held out for validation (0: none).")] = T.val_fraction,
    eval_every: Annotated[int, Opt(min=1, help="Validate and save the last checkpoint every this many steps.")] = T.eval_every,
    eval_chars: Annotated[int, Opt(min=1, help="Validation characters scored at each periodic evaluation "
                                   "(the final one scores all).")] = T.eval_chars,
    patience: Annotated[Optional[int], Opt(min=1, help="Stop early after this many evaluations without a new best.",
                                           show_default=False)] = None,
    samples: Annotated[int, Opt(min=0, help="Samples drawn with the current weights at each evaluation, shown and "
                                            "kept in metrics.jsonl (0: none).")] = T.samples,
    sample_every: Annotated[Optional[int], Opt(min=0, help="Steps between samples (0: never). \\[default: --eval-every]",
                                               show_default=False)] = None,
    sample_chars: Annotated[int, Opt(min=1, help="Characters per sample at most.")] = T.sample_chars,
    sample_prompt: Annotated[str, Opt(help="Text the samples continue (empty: a new document; escapes such as \\n "
                                           "are understood).")] = T.sample_prompt,
    seed: Annotated[int, Opt(help="Random seed: same seed, same device, same losses.")] = T.seed,
    device: Annotated[Device, Opt(help="auto picks CUDA when present, then MPS, else CPU.")] = Device.auto,
    compile: Annotated[bool, Opt(help="torch.compile the model (needs a C++ compiler on CPU).")] = False,
    precision: Annotated[Precision, Opt(help="Forward/backward arithmetic: bfloat16 autocast (weights stay float32), "
                                             "float32, or auto: bfloat16 on CUDA, float32 elsewhere. bfloat16 trains "
                                             "1.7-2x faster on CPUs with native bf16.")] = Precision.auto,
    tokenizer: Annotated[TokenizerKind, Opt(help="Vocabulary: char (the characters of the corpus) or byte "
                                            "(256 UTF-8 byte values).")] = TokenizerKind.char,
    encoding: Annotated[str, Opt(help="Text encoding of the corpus files.")] = "utf-8",
    separator: Annotated[str, Opt(help="Put between documents (escape sequences like \\n are understood).")] = "\\n\\n",
    out: Annotated[Optional[Path], Opt(help="Run directory for checkpoints and logs. \\[default: runs/<corpus>-<model>]",
                                       show_default=False)] = None,
    resume: Annotated[bool, Opt(help="Continue the run in --out from its last checkpoint.")] = False,
    force: Annotated[bool, Opt(help="Replace a run already in --out.")] = False,
) -> None:
    """Train a character-level language model on a corpus.

    Checkpoints go to --out: best/ (lowest validation loss) and last/ (with everything
    --resume needs), plus metrics.jsonl, loss.png and tensorboard/. Ctrl-C saves last/
    and exits with code 130; run again with --resume to continue.
    """
    from charnet.checkpoint import load_checkpoint
    from charnet.corpus import bundled_corpus
    from charnet.training.data import load_corpus
    from charnet.training.distributed import from_env, shutdown
    from charnet.training.finetune import grow
    from charnet.training.finetune import lineage as fine_tune_lineage
    from charnet.training.run_dir import prepare_out_dir
    from charnet.training.trainer import Trainer

    if resume and force:
        raise CharnetError("--resume and --force contradict each other; pick one")
    if resume and init_from:
        raise CharnetError("--init-from starts a new run from a checkpoint and --resume continues the run in --out; "
                           "pick one")
    lines = documents is Documents.lines
    if lines and _given(ctx, "separator"):
        raise CharnetError("--separator joins files of running text; with --documents lines every file ends a line")
    sep = LINE_BREAK if lines else unescape(separator)
    parent = _parent(ctx, init_from) if init_from else None  # its contradictions, before --out is touched
    specs = list(corpus or [])
    if not specs and not resume:
        default = bundled_corpus()
        if not default.is_file():
            raise CharnetError(f"no corpus given, and the bundled corpus {default} is missing")
        specs = [str(default)]
    if out is None:
        name = Path(specs[0].split("*")[0].rstrip("/") or "corpus").stem if specs else "run"
        out = Path("runs") / f"{name or 'corpus'}-{parent.model.config.cell if parent else model.value}"

    dist = from_env(device.value)
    trainer = None
    try:
        # Only the main process touches --out; the others wait, and fail with it.
        dist.on_main(lambda: prepare_out_dir(out, resume=resume, force=force))
        budgets = dict(max_steps=max_steps, epochs=epochs, max_time=parse_duration(max_time) if max_time else None)
        checkpoint, init, lineage = None, None, None
        if resume:
            checkpoint = load_checkpoint(out / "last", with_resume=True)
            saved = checkpoint.config
            _check_unchanged(ctx, saved, dist.world_size)
            model_cfg = checkpoint.model.config
            base = TrainConfig.from_dict(saved["training"])
            # A new budget replaces the old one entirely, in one replace: an interim config
            # with no budget at all would take on the default --max-time.
            given = budgets if any(v is not None for v in budgets.values()) else {}
            overrides = {name: _value(ctx, name) for name in RESUME_OVERRIDES if _given(ctx, name)}
            if _given(ctx, "batch_size"):  # _check_unchanged allowed it: the global batch is the run's
                overrides["batch_size"] = batch_size
            train_cfg = dataclasses.replace(base, **given, **overrides)
            specs = specs or saved["corpus"].get("specs") or []
            corpus_data = load_corpus(specs, vocab=checkpoint.vocab, encoding=saved["corpus"]["encoding"],
                                      separator=saved["corpus"]["separator"])
            lineage = saved.get("parent")
            if corpus_data.sha256 != saved["corpus"]["sha256"]:
                raise CharnetError("--resume: the corpus differs from the one this run was trained on; "
                                   "give the same corpus, or start a new run")
        else:
            # Validate every option before the (possibly long) first pass over the corpus.
            model_cfg = ModelConfig(vocab_size=1, cell=model.value, layers=layers, hidden=hidden,
                                    embedding=embedding, dropout=dropout, tie_embeddings=tie_embeddings)
            default_lr = FINETUNE_LR if parent is not None else T.lr
            train_cfg = TrainConfig(seq_len=seq_len, batch_size=batch_size, lr=default_lr if lr is None else lr,
                                    weight_decay=weight_decay, warmup_steps=warmup, grad_clip=grad_clip,
                                    val_fraction=val_fraction, eval_every=eval_every, eval_chars=eval_chars,
                                    patience=patience, seed=seed, device=device.value, compile=compile,
                                    precision=precision.value, documents=documents.value, samples=samples,
                                    sample_every=sample_every, sample_chars=sample_chars,
                                    sample_prompt=unescape(sample_prompt), weight_drop=weight_drop,
                                    locked_dropout=locked_dropout, input_dropout=input_dropout,
                                    embed_dropout=embed_dropout, ar=ar, tar=tar, **budgets)
            require = LINE_BREAK if lines else ""
            if parent is None:
                corpus_data = load_corpus(specs, tokenizer=tokenizer.value, require=require, encoding=encoding,
                                          separator=sep)
                model_cfg = dataclasses.replace(model_cfg, vocab_size=corpus_data.vocab.size)
                if not any(_given(ctx, opt) for opt in SHAPE_OPTS):
                    model_cfg, train_cfg = _sized(ctx, corpus_data, model_cfg, train_cfg, dist)
            else:
                corpus_data = load_corpus(specs, vocab=parent.vocab, extend=True, require=require, encoding=encoding,
                                          separator=sep)
                init = grow(parent.model, corpus_data.vocab.size, parent.vocab.unk_id, dropout)
                model_cfg = init.config
                added = [corpus_data.vocab.display(i) for i in range(parent.vocab.size, corpus_data.vocab.size)]
                lineage = fine_tune_lineage(parent, init_from, added)
                dist.on_main(lambda: print(_vocabulary_line(parent, added)))
        if dist.main:
            skipped = corpus_data.sources
            for path, why in skipped.skipped_unreadable:
                print(f"warning: skipped {path}: {why}", file=sys.stderr)
            if skipped.skipped_binary:
                print(f"warning: skipped {len(skipped.skipped_binary)} binary files", file=sys.stderr)
        trainer = Trainer(corpus_data, model_cfg, train_cfg, out, dist=dist, resume=checkpoint, init=init,
                          parent=lineage)
        result = trainer.fit()
        # The others wait for the report: a process that exits first with 130 makes
        # torchrun stop the rest, which could cut the main one short.
        dist.on_main(lambda: _report(result))
    finally:
        if trainer is not None:
            trainer.close()
        if dist.active:
            # Everything is saved and said. A process that exits non-zero first (130
            # after Ctrl-C, 2 after an error) makes torchrun SIGTERM the others; let
            # them finish leaving the group and exit with their own code instead.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        shutdown()
    if result.stopped in ("SIGINT", "SIGTERM"):
        raise typer.Exit(130)


def _sized(ctx: typer.Context, corpus, model_cfg: ModelConfig, train_cfg: TrainConfig, dist):
    """The configs with what `charnet.training.sizing` chooses for this corpus, budget
    and device, the options given explicitly kept; the choice is printed."""
    from charnet.device import resolve_device
    from charnet.training import sizing

    budget = sizing.Budget(seconds=train_cfg.max_time, steps=train_cfg.max_steps, epochs=train_cfg.epochs)
    flops = None
    if budget.seconds is not None:
        device = resolve_device(train_cfg.device, dist.local_rank)
        # Every process must choose the same shape: they agree on the slowest one's speed.
        measured = sizing.measure_flops(model_cfg.cell, model_cfg.vocab_size, device, train_cfg.precision)
        flops = -dist.max([-measured])[0] * dist.world_size
    train_chars, lines = sizing.corpus_shape(corpus, train_cfg.documents, train_cfg.val_fraction)
    chosen = sizing.choose(train_chars, model_cfg.vocab_size, budget, cell=model_cfg.cell, flops_per_s=flops,
                           world_size=dist.world_size, lines=lines)
    dist.on_main(lambda: print(chosen.describe(budget)))
    given = {name for name in (*sizing.SIZED_MODEL, *sizing.SIZED_TRAINING) if _given(ctx, name)}
    return sizing.apply(chosen, model_cfg, train_cfg, given)


def _parent(ctx: typer.Context, spec: str):
    """The --init-from checkpoint, loaded; a given shape option that contradicts it is
    an error naming the option."""
    from charnet.checkpoint import find, load_checkpoint
    from charnet.training.finetune import shape_conflicts

    parent = load_checkpoint(find(spec))
    given = {opt: _value(ctx, opt) for opt in (*MODEL_OPTS, "tokenizer") if _given(ctx, opt) and opt != "dropout"}
    for opt, new, old in shape_conflicts(parent.model.config, parent.vocab, given):
        flag = "--" + opt.replace("_", "-")
        raise CharnetError(f"--init-from {spec}: {flag} {new!r} contradicts the checkpoint's {old!r}; a fine-tuned "
                           f"model keeps its parent's shape, so drop {flag}")
    return parent


def _vocabulary_line(parent, added: list[str]) -> str:
    if not added:
        return f"vocabulary: the parent's {parent.vocab.size} tokens cover the corpus"
    shown = " ".join(repr(c) for c in added[:20]) + (" ..." if len(added) > 20 else "")
    return f"vocabulary: the parent's {parent.vocab.size} tokens + {len(added)} new characters: {shown}"


def _value(ctx: typer.Context, name: str):
    """An option's value as the config stores it (enums by value, text unescaped)."""
    value = ctx.params[name]
    value = value.value if isinstance(value, Enum) else value
    return unescape(value) if name in ("separator", "sample_prompt") else value


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was typed on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _check_unchanged(ctx: typer.Context, saved: dict, world_size: int) -> None:
    """On --resume, an explicitly given option that would change the run is an error.
    --batch-size may change with the number of processes, as long as the global batch
    (batch size x processes) stays the run's: the streams, and so the run, are the same."""
    base = TrainConfig.from_dict(saved["training"])  # settings older runs did not record take their defaults
    recorded = {**{opt: saved["model"][field] for opt, field in MODEL_OPTS.items()},
                **{opt: getattr(base, "warmup_steps" if opt == "warmup" else opt) for opt in FIXED_TRAIN_OPTS},
                "tokenizer": saved["tokenizer"]["kind"], "encoding": saved["corpus"]["encoding"],
                "separator": saved["corpus"]["separator"]}
    for opt, old in recorded.items():
        if not _given(ctx, opt):
            continue
        new = _value(ctx, opt)
        if opt == "batch_size":
            old_world = saved["training"].get("world_size", 1)
            global_batch = old * old_world
            if new * world_size == global_batch:
                continue
            hint = (f"--batch-size {global_batch // world_size} keeps it" if global_batch % world_size == 0
                    else f"drop --batch-size to keep {old} per process")
            raise CharnetError(f"--resume: --batch-size {new} x {_processes(world_size)} changes the run's global batch "
                               f"of {global_batch} ({old} x {_processes(old_world)}); {hint}")
        if new != old:
            flag = "--" + opt.replace("_", "-")
            raise CharnetError(f"--resume: {flag} {new!r} differs from the run's {old!r}; drop it, or start a new run")


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _report(result) -> None:
    from charnet.units import bits

    minutes, seconds = divmod(int(result.elapsed), 60)
    lines = [f"done: {result.step} steps in {minutes}m{seconds:02d}s ({result.stopped})"]
    if result.best_val is not None:
        lines.append(f"best validation loss {result.best_val:.4f} nats/char = {bits(result.best_val):.4f} bits/char")
    saved = ", ".join(f"{result.run_dir}/{name}" for name in ("best", "last") if (result.run_dir / name).is_dir())
    lines.append(f"checkpoints: {saved}; continue with --resume --out {result.run_dir}")
    print("\n".join(lines))
