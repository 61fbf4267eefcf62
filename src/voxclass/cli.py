"""Command line: parses arguments and calls the library. No logic of its own.

User errors (AudioError, DataError, ModelError) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

try:  # typer >= 0.24 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # older typer runs on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError

from .audio import AudioError, AudioLimits
from .config import ConfigError, check_output_file
from .data import DataConfig, DataError
from .model import ModelError, require_torch

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, evaluate, export and serve audio classifiers.",
)
console = Console()
err_console = Console(stderr=True)
USER_ERRORS: tuple[type[Exception], ...] = (AudioError, DataError, ModelError, ConfigError)


def data_options(
    source: str,
    hub_config: str | None,
    hub_split: str | None,
    label_column: str,
    test_size: float,
    seed: int,
    group_by: str | None,
    group_pattern: str | None,
    test_groups: str | None,
    multi_label: bool = False,
    label_separator: str = ";",
    allow_outside_paths: bool = False,
) -> DataConfig:
    return DataConfig(
        source=source,
        hub_config=hub_config,
        hub_split=hub_split,
        label_column=label_column,
        test_size=test_size,
        seed=seed,
        group_by=group_by,
        group_pattern=group_pattern,
        test_groups=[g for g in (test_groups or "").split(",") if g],
        multi_label=multi_label,
        label_separator=label_separator,
        allow_outside_paths=allow_outside_paths,
    )


ALLOW_OUTSIDE_HELP = "Let a manifest name audio outside its folder (../x.wav, /abs/x.wav)."


@app.command()
def synth(
    out: Path = typer.Argument(
        ..., help="Output folder (audiofolder with train/, validation/ and test/)."
    ),
    phrases: str = typer.Option(
        "banking", help="Phrase file (YAML: labels, slots) or a shipped one: banking, digits."
    ),
    train_per_label: int = typer.Option(120, help="Training clips per label."),
    validation_per_label: int = typer.Option(
        10, help="Validation clips per label (training voices; picks the best epoch)."
    ),
    test_per_label: int = typer.Option(30, help="Test clips per label (unseen voices)."),
    new_wording_per_label: int = typer.Option(
        0, help="Clips per label in test_new_wording (held-out phrasings, unseen voices)."
    ),
    channel: str = typer.Option("telephone", help="telephone (300-3400 Hz), wideband or room."),
    sampling_rate: int = typer.Option(8000, help="8000 or 16000 Hz."),
    accents: str = typer.Option(
        None, help="Comma-separated espeak-ng English accents (default: all of them)."
    ),
    variants: str = typer.Option(
        None, help="Comma-separated espeak-ng voice variants (default: every human-like one)."
    ),
    test_voice_fraction: float = typer.Option(
        0.25, help="Part of the variants kept for the test splits (0: none, no test clips)."
    ),
    seed: int = typer.Option(0, help="Same seed, same files."),
) -> None:
    """Generate spoken clips from text: each label's phrasings from a phrase file, said by
    espeak-ng's English voices (default: 14 MInDS-14-style banking intents, 8 kHz telephone)."""
    from rich.progress import Progress

    from .synth import SynthConfig, synthesize

    config = SynthConfig(
        out=out,
        phrases=phrases,
        train_per_label=train_per_label,
        validation_per_label=validation_per_label,
        test_per_label=test_per_label,
        new_wording_per_label=new_wording_per_label,
        channel=channel,
        sampling_rate=sampling_rate,
        accents=[a for a in (accents or "").split(",") if a] or None,
        variants=[v for v in (variants or "").split(",") if v] or None,
        test_voice_fraction=test_voice_fraction,
        seed=seed,
    )
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("synthesizing", total=config.clips)
        stats = synthesize(config, progress=lambda: progress.advance(task))
    console.print(
        f"wrote {stats['clips']} clips to {out} in {stats['seconds']:.1f} s "
        f"({stats['clips_per_second']:.0f} clips/s)"
    )


@app.command()
def pretrain(
    out: Path = typer.Option(..., help="Output folder: a save_pretrained CTC model directory."),
    hours: float = typer.Option(20.0, help="Hours of synthetic speech to train on."),
    time_budget_minutes: float = typer.Option(None, help="Stop after this much wall time."),
    preset: str = typer.Option("tiny-fine", help="Encoder architecture (a Wav2Vec2-BERT preset)."),
    batch_size: int = typer.Option(32, help="Clips per step."),
    learning_rate: float = typer.Option(1e-3, help="Peak learning rate."),
    workers: int = typer.Option(1, help="Processes synthesizing clips (0: none, inline)."),
    seed: int = typer.Option(0, help="Same seed, same clips and initial weights."),
) -> None:
    """Pretrain a speech encoder on espeak-ng speech made on the fly (every English voice,
    channel and noise), with CTC over the phonemes it says; fine-tune it with
    `voxclass train --model OUT`."""
    require_torch("pretraining")
    from .pretrain import PretrainConfig
    from .pretrain import pretrain as run_pretraining

    summary = run_pretraining(
        PretrainConfig(
            out=out,
            hours=hours,
            time_budget_minutes=time_budget_minutes,
            preset=preset,
            batch_size=batch_size,
            learning_rate=learning_rate,
            workers=workers,
            seed=seed,
        ),
        log=lambda line: err_console.print(line, highlight=False, markup=False),
        command=" ".join(["voxclass", *sys.argv[1:]]),
    )
    final = summary["final"]
    console.print(
        f"wrote {out}: {summary['hours_heard']:.2f} h of speech in "
        f"{summary['wall_seconds'] / 60:.1f} min, phoneme error rate "
        f"{final['phoneme_error_rate']:.3f}"
    )


@app.command()
def inspect(
    source: str = typer.Argument(..., help="Hub dataset id, audiofolder, or CSV/JSONL manifest."),
    hub_config: str = typer.Option(None, help="Hub dataset configuration (e.g. en-US)."),
    hub_split: str = typer.Option(None, help="Hub split to load."),
    label_column: str = typer.Option("label", help="Label column (MInDS-14: intent_class)."),
    test_size: float = typer.Option(0.2, help="Held-out fraction when there is no test split."),
    seed: int = typer.Option(42, help="Seed of the held-out split."),
    group_by: str = typer.Option(None, help="Column naming groups (e.g. speaker)."),
    group_pattern: str = typer.Option(None, help="Regex with (?P<group>...) on file names."),
    test_groups: str = typer.Option(None, help="Comma-separated groups to hold out as test."),
    max_seconds: float = typer.Option(
        AudioLimits.max_seconds,
        help="Clips longer than this are reported bad (training's limit by default).",
    ),
    multi_label: bool = typer.Option(
        False, "--multi-label", help="Several labels per clip in a manifest cell (dog;siren)."
    ),
    label_separator: str = typer.Option(";", help="Separates a cell's labels (--multi-label)."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help=ALLOW_OUTSIDE_HELP
    ),
) -> None:
    """Per-split class counts, durations, sample rates, channels; lists every file that
    training, evaluation or prediction would refuse (the same audio checks; clips shorter than
    the model's shortest input are padded with silence, not refused)."""
    from .data import load_data, summarize

    config = data_options(
        source,
        hub_config,
        hub_split,
        label_column,
        test_size,
        seed,
        group_by,
        group_pattern,
        test_groups,
        multi_label=multi_label,
        label_separator=label_separator,
        allow_outside_paths=allow_outside_paths,
    )
    summaries, bad = summarize(load_data(config), AudioLimits(max_seconds=max_seconds))
    labels = list(next(iter(summaries.values())).class_counts)
    table = Table(title=f"{source}")
    table.add_column("label")
    for name in summaries:
        table.add_column(name, justify="right")
    for label in labels:
        table.add_row(label, *(str(s.class_counts[label]) for s in summaries.values()))
    table.add_section()
    table.add_row("clips", *(str(s.clips) for s in summaries.values()))
    table.add_row(
        "seconds min/med/max",
        *(
            "/".join(f"{d:.1f}" for d in s.durations) if s.durations else "-"
            for s in summaries.values()
        ),
    )
    table.add_row(
        "sample rates",
        *(
            ", ".join(f"{r} Hz×{n}" for r, n in sorted(s.sample_rates.items()))
            for s in summaries.values()
        ),
    )
    table.add_row(
        "channels",
        *(
            ", ".join(f"{c}ch×{n}" for c, n in sorted(s.channels.items()))
            for s in summaries.values()
        ),
    )
    if any(s.groups is not None for s in summaries.values()):
        table.add_row("groups", *(str(s.groups) for s in summaries.values()))
    console.print(table)
    if bad:
        err_console.print(f"[red]{len(bad)} bad file(s):[/red]")
        for error in bad:
            err_console.print(f"  {error}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    data: str = typer.Option(None, help="Hub dataset id, audiofolder, or CSV/JSONL manifest."),
    model: str = typer.Option(None, help="Hub id, model dir, or preset (tiny, small, ...)."),
    output: str = typer.Option(None, help="Final model directory."),
    config: Path = typer.Option(None, help="YAML file of options (command line wins)."),
    resume: bool = typer.Option(None, "--resume", help="Continue from the last checkpoint."),
) -> None:
    """Train a classifier. Any TrainConfig field is also an option: --epochs 5 --batch-size 8,
    --group-pattern REGEX, --class-weights true, --multi-label true, --overwrite true, ... (see
    docs: voxclass/train.py TrainConfig). Ctrl-C keeps the checkpoints: exit code 130."""
    require_torch("training")
    from .config import build_config, parse_overrides
    from .train import TrainConfig, interrupted_message
    from .train import train as run_training

    values = {
        "source": data,
        "model": model,
        "output": output,
        "resume": resume,
        **parse_overrides(ctx.args),
    }
    settings = build_config(TrainConfig, config, values, option_names={"source": "data"})
    if not settings.source:
        raise ConfigError("--data is required (on the command line or as `source:` in --config)")
    try:
        out = run_training(settings)
    except KeyboardInterrupt:
        err_console.print(interrupted_message(settings), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    console.print(f"model written to {out}")


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="Trained (or exported) model directory."),
    data: str = typer.Option(..., help="Hub dataset id, audiofolder, or CSV/JSONL manifest."),
    split: str = typer.Option("test", help="Split to score."),
    out: str = typer.Option("eval", help="Folder for report.json/.md, errors.csv, confusion.png."),
    batch_size: int = typer.Option(16, help="Clips per forward pass."),
    hub_config: str = typer.Option(None, help="Hub dataset configuration (e.g. en-US)."),
    hub_split: str = typer.Option(None, help="Hub split to load."),
    label_column: str = typer.Option("label", help="Label column (MInDS-14: intent_class)."),
    test_size: float = typer.Option(0.2, help="Held-out fraction when there is no test split."),
    seed: int = typer.Option(
        42, help="Seed of the held-out split (use the training one) and of the --snr noise."
    ),
    group_by: str = typer.Option(None, help="Column naming groups (e.g. speaker)."),
    group_pattern: str = typer.Option(None, help="Regex with (?P<group>...) on file names."),
    test_groups: str = typer.Option(None, help="Comma-separated groups to hold out as test."),
    snr: str = typer.Option(
        None, help="Also score with noise mixed in at these SNRs (dB), e.g. 30,24,18,12,6,0."
    ),
    noise: str = typer.Option(
        "white", help="Noises for --snr, comma-separated: white, pink, babble, a file or folder."
    ),
    label_separator: str = typer.Option(
        ";", help="Separates a manifest cell's labels for a multi-label model."
    ),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help=ALLOW_OUTSIDE_HELP
    ),
) -> None:
    """Accuracy, macro-F1, per-class report, confusion matrix and every misclassified clip;
    with --snr, accuracy under noise per SNR (report.json `noise`, snr.png)."""
    from rich.progress import Progress

    from .evaluate import EvalConfig, absent_note, parse_snr
    from .evaluate import evaluate as run_evaluation

    base = data_options(
        data,
        hub_config,
        hub_split,
        label_column,
        test_size,
        seed,
        group_by,
        group_pattern,
        test_groups,
        label_separator=label_separator,
        allow_outside_paths=allow_outside_paths,
    )
    config = EvalConfig(
        **vars(base),
        model=model,
        split=split,
        out=out,
        batch_size=batch_size,
        snr=parse_snr(snr) if snr is not None else None,
        noise=[n for n in noise.split(",") if n],
    )
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("decoding", total=None)
        report = run_evaluation(config, progress=lambda: progress.advance(task))
    table = Table(title=f"{model} on {data} [{split}]")
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for label, m in report["per_class"].items():
        table.add_row(
            label,
            f"{m['precision']:.3f}",
            f"{m['recall']:.3f}",
            f"{m['f1']:.3f}",
            str(m["support"]),
        )
    console.print(table)
    console.print(
        f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
        f"({report['errors']} of {report['clips']} misclassified) -> {out}/"
    )
    if report["absent_labels"]:
        console.print(
            absent_note(report).removeprefix("- "), highlight=False, markup=False, soft_wrap=True
        )
    if "noise" in report:
        curves = report["noise"]["curves"]
        table = Table(title="accuracy under noise")
        table.add_column("SNR dB", justify="right")
        for name in curves:
            table.add_column(name, justify="right")
        for i, snr_db in enumerate(config.snr or []):
            table.add_row(f"{snr_db:g}", *(f"{c[i]['accuracy']:.4f}" for c in curves.values()))
        console.print(table)


@app.command()
def predict(
    model: str = typer.Argument(..., help="Trained (or exported) model directory."),
    inputs: list[str] = typer.Argument(..., help="Audio files, folders, or CSV/JSONL manifests."),
    top_k: int = typer.Option(5, help="Labels per clip."),
    batch_size: int = typer.Option(16, help="Clips per forward pass."),
    output_format: str = typer.Option("table", "--format", help="table, json or csv."),
    out: Path = typer.Option(None, help="Write the results here instead of the terminal."),
    window: float = typer.Option(None, help="Window seconds for long audio (default: model max)."),
    hop: float = typer.Option(None, help="Hop seconds between windows (default: window / 2)."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths", help=ALLOW_OUTSIDE_HELP
    ),
    engine: str = typer.Option(
        None,
        help="plain (one file or the terminal); shards or ray (resumable Parquet shards in "
        "--out DIR). Default: shards under torchrun, else plain.",
    ),
    address: str = typer.Option(None, help="Ray cluster: auto or ray://HOST:PORT (default local)."),
    workers: int = typer.Option(1, help="Ray actors, each with its own copy of the model."),
    chunk_size: int = typer.Option(500, help="Inputs per shard: the unit of resuming."),
) -> None:
    """Classify audio. Exit code: 0 all inputs classified, 1 some inputs failed (error rows),
    2 bad usage, model or data."""
    from .classifier import Classifier
    from .config import write_atomic
    from .predict import expand_inputs, render, run
    from .scale import ENGINES, default_engine, run_engine

    if (engine := engine or default_engine()) not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose {', '.join(ENGINES)}")
    if engine != "plain":
        if allow_outside_paths:
            raise ConfigError(
                f"--allow-outside-paths works with the plain engine only, not --engine {engine}"
            )
        args = (top_k, batch_size, chunk_size, window, hop, workers, address)
        if summary := run_engine(engine, model, inputs, out, *args):
            err_console.print(f"{summary.rows} rows ({summary.errors} errors) in {out}")
            # torchrun would read exit 1 as a crashed rank; its error rows speak for themselves
            if summary.errors and default_engine() == "plain":
                raise typer.Exit(1)
        return
    if out is not None and out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; shards need --engine shards or ray")
    if output_format not in ("table", "json", "csv"):
        raise ConfigError(f"--format {output_format!r}: choose table, json or csv")
    if out is not None:
        check_output_file(out, "--out")
    # A missing input or a bad manifest fails before the model loads.
    paths = expand_inputs(inputs, allow_outside_paths)
    clf = Classifier.load(model)
    results = run(clf, paths, top_k, batch_size, window, hop)
    failed = sum(isinstance(r, AudioError) for r in results)
    text = render(results, output_format)
    if out is None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)
    else:
        write_atomic(out, text)
    if failed:
        err_console.print(f"{failed} of {len(results)} input(s) failed (see error rows)")
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def demo(ctx: typer.Context) -> None:
    """The whole loop offline: synthesize spoken banking requests, train the tiny preset,
    evaluate on unseen voices, classify a few clips. Any DemoConfig field is an option, with
    DemoConfig's default: --output DIR, --time-budget-minutes, --seed, --train-per-intent,
    --epochs, ... (see docs: voxclass/demo.py DemoConfig)."""
    require_torch("the demo (it trains a model)")
    from .config import build_config, parse_overrides
    from .demo import DemoConfig, run_demo

    config = build_config(DemoConfig, None, parse_overrides(ctx.args))
    result = run_demo(config, log=lambda m: err_console.print(f"[bold]>[/] {m}"))
    table = Table(title="a few unseen-voice test clips")
    for column in ("clip", "true intent", "predicted (score)"):
        table.add_column(column)
    for p in result["predictions"]:
        path = Path(p.source)
        table.add_row(path.name, path.parent.name, f"{p.labels[0]} ({p.scores[0]:.2f})")
    console.print(table)
    report, new_wording = result["report"], result["new_wording_report"]
    console.print(
        f"unseen-voice test accuracy [bold]{report['accuracy']:.3f}[/], macro-F1 "
        f"{report['macro_f1']:.3f} on {report['clips']} clips; unseen wording (and voices) "
        f"accuracy [bold]{new_wording['accuracy']:.3f}[/], macro-F1 "
        f"{new_wording['macro_f1']:.3f} on {new_wording['clips']} clips; total "
        f"{result['total_seconds']:.0f} s (synth {result['synth_seconds']:.0f} s, "
        f"training {result['train_seconds']:.0f} s)\n"
        f"model: {result['model']}  report: {config.output / 'eval' / 'report.md'}"
    )


@app.command()
def export(
    model: str = typer.Argument(..., help="Trained model directory (any transformers one)."),
    out: Path = typer.Option(..., help="New folder for model.onnx, config and extractor."),
    int8: bool = typer.Option(False, help="Dynamic int8 quantization of the weights."),
) -> None:
    """Export to ONNX for onnxruntime; checks the graph against torch before keeping it."""
    from .export import export as run_export

    report = run_export(model, out, int8=int8)
    console.print(
        f"exported {report.path} ({'int8' if report.int8 else 'fp32'}, "
        f"{report.size_bytes / 1e6:.1f} MB): max logit diff vs torch {report.max_abs_diff:.2e}, "
        f"top-1 agreement {report.agreement:.1%} on {report.clips} clips"
    )


@app.command()
def serve(
    model: str = typer.Argument(..., help="Trained (or exported) model directory."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (0.0.0.0 exposes it to all)."),
    port: int = typer.Option(8000, help="TCP port."),
    max_upload_mb: float = typer.Option(20.0, help="Largest accepted upload (413 above)."),
    token: str = typer.Option(
        None, envvar="VOXCLASS_TOKEN", help="Require 'Authorization: Bearer TOKEN' on /v1/."
    ),
    max_audio_seconds: float = typer.Option(
        None,
        help="Longest accepted upload in seconds, checked from its header (422 above). "
        "Default: 10 of the model's windows, at least 60.",
    ),
    max_sample_rate: int = typer.Option(
        48000, help="Highest accepted upload sample rate in Hz (422 above)."
    ),
    allowed_hosts: str = typer.Option(
        None,
        help="Comma-separated Host header values answered (400 otherwise; '*' for any). "
        "Default: localhost, 127.0.0.1, [::1] and --host unless it is 0.0.0.0.",
    ),
) -> None:
    """HTTP API (/v1/classify, /v1/model, /health, /docs) and a web page at / to try the model."""
    from .serve import serve as run_server

    if token is None:  # click reads an empty VOXCLASS_TOKEN as unset; it must not mean no auth
        token = os.environ.get("VOXCLASS_TOKEN")
    run_server(
        model,
        host=host,
        port=port,
        max_upload_mb=max_upload_mb,
        token=token,
        max_audio_seconds=max_audio_seconds,
        max_sample_rate=max_sample_rate,
        allowed_hosts=None if allowed_hosts is None else allowed_hosts.replace(" ", "").split(","),
    )


def main() -> None:
    """Console-script entry: user errors, usage errors included, are one line on stderr
    (`error: ...`) and exit code 2; a command's own exit code (predict: 1) passes through."""
    from datasets.utils.logging import disable_progress_bar
    from transformers.utils.logging import disable_progress_bar as quiet_transformers
    from transformers.utils.logging import set_verbosity_error

    # Our own progress bars and errors speak; datasets' casting and transformers'
    # weight-loading bars and warnings (a model that does not fit its config is our one-line
    # ModelError) are noise, and would push an error off its one line.
    disable_progress_bar()
    quiet_transformers()
    set_verbosity_error()
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as err:
        err.show()
        sys.exit(err.exit_code)
    except ClickException as err:  # a bad option: one line, not a framed box
        where = f"{err.ctx.command_path} --help" if getattr(err, "ctx", None) else "--help"
        message = f"error: {err.format_message()} (see {where})"
        err_console.print(message, highlight=False, markup=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except typer.Abort:
        err_console.print("Aborted!")
        sys.exit(1)
    except USER_ERRORS as err:
        err_console.print(f"error: {err}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
