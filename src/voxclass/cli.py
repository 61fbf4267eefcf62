"""Command line: parses arguments and calls the library. No logic of its own.

Every command's options are the fields of its config dataclass, with the field's docstring as
help (`train` adds every transformers.TrainingArguments field). They are built only when that
command runs or shows its help, so `voxclass --help` imports no command's module, and
`predict` on an exported model imports neither torch, transformers nor datasets. Every command
takes `--config FILE.yaml`; the command line wins over the file, the file over the defaults.

User errors (AudioError, DataError, ModelError, ConfigError) become one line on stderr and exit
code 2.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import ConfigError, build_config, field_default, field_docs, option_name

CONFIG_HELP = "YAML file of options, keys spelled like the fields (batch_size: 8); the command "
CONFIG_HELP += "line wins over it."


@dataclasses.dataclass
class Spec:
    """How a command's config dataclass becomes its arguments and options."""

    config: type
    arguments: tuple[str, ...] = ()
    """Fields taken as positional arguments (a list field takes the rest)."""
    optional: tuple[str, ...] = ()
    """Positional arguments that may be left out (their field's default applies)."""
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    """Field -> option where they differ (source -> --data)."""
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    """Further option spellings -> field (--num-train-epochs -> epochs)."""
    hidden: tuple[str, ...] = ()
    """Fields set in YAML only."""
    passthrough: tuple[str, type] | None = None
    """(dict field, dataclass): that dataclass's fields, each an option, collected in the dict."""
    passthrough_fields: list = dataclasses.field(default_factory=list)
    passthrough_notes: dict[str, str] = dataclasses.field(default_factory=dict)
    """Passthrough field -> voxclass's own value, shown in its help."""

    def display(self, name: str) -> str:
        return name.upper() if name in self.arguments else self.names.get(name, option_name(name))


def _base_type(hint: Any) -> Any:
    """`X | None` -> X; `list[X]` stays a list."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


METAVARS = {bool: "[true|false]", int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}


def _option(names: list[str], dest: str, hint: Any, doc: str, default: Any) -> click.Option:
    """An option whose text value build_config converts (one conversion for YAML and command
    line). A bool takes true/false, or nothing for true (`--resume`)."""
    base = _base_type(hint)
    metavar = "A,B,..." if typing.get_origin(base) is list else METAVARS.get(base, "VALUE")
    shown = default
    if isinstance(default, list):
        shown = ",".join(map(str, default))
    help_text = doc
    if default is not dataclasses.MISSING and default not in (None, "", []):
        help_text += f"  [default: {str(shown).lower() if isinstance(shown, bool) else shown}]"
    flag = {"is_flag": False, "flag_value": "true"} if base is bool else {}
    return click.Option([*names, dest], default=None, metavar=metavar, help=help_text, **flag)


def make_params(spec: Spec) -> list[click.Parameter]:
    cls = spec.config
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params: list[click.Parameter] = []
    for name in spec.arguments:
        many = typing.get_origin(_base_type(hints[name])) is list
        metavar = name.upper() + ("..." if many else "")
        metavar = f"[{metavar}]" if name in spec.optional else metavar
        params.append(click.Argument([name], nargs=-1 if many else 1, required=False,
                                     metavar=metavar))  # fmt: skip
    params.append(click.Option(["--config", "config_file"], metavar="FILE.yaml", help=CONFIG_HELP))
    for name, f in fields.items():
        if name in spec.arguments or name in spec.hidden:
            continue
        aliases = [option_name(a) for a, field in spec.aliases.items() if field == name]
        names = [spec.display(name), *aliases]
        params.append(_option(names, name, hints[name], docs.get(name, ""), field_default(f)))
    if spec.passthrough:
        other = spec.passthrough[1]
        other_docs = field_docs(other)
        for f in spec.passthrough_fields:
            doc = other_docs.get(f.name, "")
            if f.name in spec.passthrough_notes:
                doc += f"  [voxclass: {spec.passthrough_notes[f.name]}]"
            option = _option([option_name(f.name)], f.name, f.type, doc, field_default(f))
            option.passthrough = True  # listed in its own section of --help
            params.append(option)
    return params


class ConfigCommand(click.Command):
    """A command whose parameters come from a Spec, made on first use."""

    def __init__(self, name: str, spec: Callable[[], Spec], run: Callable, help: str):
        self._make_spec, self._spec, self._params = spec, None, None
        self._run = run
        super().__init__(name, help=help, callback=self._invoke, no_args_is_help=False)

    @property
    def spec(self) -> Spec:
        if self._spec is None:
            self._spec = self._make_spec()
        return self._spec

    @property
    def params(self) -> list[click.Parameter]:  # type: ignore[override]
        if self._params is None:
            self._params = make_params(self.spec)
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value or None

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        spec = self.spec
        docs = field_docs(spec.config)
        if spec.arguments:
            with formatter.section("Arguments"):
                formatter.write_dl([(n.upper(), docs.get(n, "")) for n in spec.arguments])
        options = [p for p in self.get_params(ctx) if isinstance(p, click.Option)]
        own = [p.get_help_record(ctx) for p in options if not getattr(p, "passthrough", False)]
        extra = [p.get_help_record(ctx) for p in options if getattr(p, "passthrough", False)]
        with formatter.section("Options"):
            formatter.write_dl([r for r in own if r])
        if extra:
            title = f"{spec.passthrough[1].__module__.split('.')[0]}.{spec.passthrough[1].__name__}"
            with formatter.section(f"{title} options (over voxclass's choices)"):
                formatter.write_dl([r for r in extra if r])

    def _invoke(self, config_file: str | None, **values: Any) -> Any:
        spec = self.spec
        values = {k: (list(v) or None) if isinstance(v, tuple) else v for k, v in values.items()}
        config = build_config(
            spec.config,
            Path(config_file) if config_file else None,
            values,
            option_names={n: spec.display(n) for n in spec.config.__dataclass_fields__},
            passthrough=spec.passthrough,
            required=tuple(a for a in spec.arguments if a not in spec.optional),
        )
        return self._run(config)


class Commands(click.Group):
    """`voxclass --help` lists the commands in the order they are declared."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


app = Commands(
    "voxclass",
    help="Train, evaluate, export and serve audio classifiers.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def command(name: str, spec: Callable[[], Spec]):
    """Register `run(config)` as command `name`; its docstring is the command's help."""

    def register(run: Callable) -> Callable:
        app.add_command(ConfigCommand(name, spec, run, help=run.__doc__ or ""))
        return run

    return register


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _print(text: str, stderr: bool = False) -> None:
    _console(stderr).print(text, highlight=False, markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------ the commands


def _synth_spec() -> Spec:
    from .synth import SynthConfig

    return Spec(SynthConfig, arguments=("out",))


@command("synth", _synth_spec)
def synth(config) -> None:
    """Generate spoken clips from text: each label's phrasings from a phrase file, said by
    espeak-ng's English voices (default: 14 MInDS-14-style banking intents, 8 kHz telephone)."""
    from rich.progress import Progress

    from .synth import synthesize

    with Progress(console=_console(stderr=True), transient=True) as progress:
        task = progress.add_task("synthesizing", total=config.clips)
        stats = synthesize(config, progress=lambda: progress.advance(task))
    _print(
        f"wrote {stats['clips']} clips to {config.out} in {stats['seconds']:.1f} s "
        f"({stats['clips_per_second']:.0f} clips/s)"
    )


def _pretrain_spec() -> Spec:
    from .pretrain import PretrainConfig

    return Spec(PretrainConfig)


@command("pretrain", _pretrain_spec)
def pretrain(config) -> None:
    """Pretrain a speech encoder on espeak-ng speech made on the fly (every English voice,
    channel and noise), with CTC over the phonemes it says; fine-tune it with
    `voxclass train --model OUT`."""
    from .model import require_torch

    require_torch("pretraining")
    from .pretrain import pretrain as run_pretraining

    summary = run_pretraining(
        config,
        log=lambda line: _print(line, stderr=True),
        command=" ".join(["voxclass", *sys.argv[1:]]),
    )
    final = summary["final"]
    _print(
        f"wrote {config.out}: {summary['hours_heard']:.2f} h of speech in "
        f"{summary['wall_seconds'] / 60:.1f} min, phoneme error rate "
        f"{final['phoneme_error_rate']:.3f}"
    )


def _inspect_spec() -> Spec:
    from .data import InspectConfig

    return Spec(InspectConfig, arguments=("source",))


@command("inspect", _inspect_spec)
def inspect(config) -> int:
    """Per-split class counts, durations, sample rates, channels; lists every file that
    training, evaluation or prediction would refuse (the same audio checks; clips shorter than
    the model's shortest input are padded with silence, not refused)."""
    from rich.table import Table

    from .audio import AudioLimits
    from .data import load_data, summarize

    summaries, bad = summarize(load_data(config), AudioLimits(max_seconds=config.max_seconds))
    labels = list(next(iter(summaries.values())).class_counts)
    table = Table(title=f"{config.source}")
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
    _console().print(table)
    if bad:
        _console(stderr=True).print(f"[red]{len(bad)} bad file(s):[/red]")
        for error in bad:
            _print(f"  {error}", stderr=True)
        return 1
    return 0


def _train_spec() -> Spec:
    from transformers import TrainingArguments

    from .train import (
        TRAINER_ALIASES,
        TRAINER_DEFAULTS,
        TRAINER_DERIVED,
        TrainConfig,
        trainer_fields,
    )

    notes = {k: str(v).lower() if isinstance(v, bool) else str(v)
             for k, v in TRAINER_DEFAULTS.items()}  # fmt: skip
    return Spec(
        TrainConfig,
        names={"source": "--data"},
        aliases=TRAINER_ALIASES,
        hidden=("training_args",),
        passthrough=("training_args", TrainingArguments),
        passthrough_fields=trainer_fields(),
        passthrough_notes={**notes, **TRAINER_DERIVED},
    )


@command("train", _train_spec)
def train(config) -> int:
    """Train a classifier: --data SOURCE --model MODEL --output DIR, and any option below.
    Every transformers.TrainingArguments field is an option too (--bf16 true, --report-to
    tensorboard, ...), over voxclass's own choices. Ctrl-C keeps the checkpoints: exit code 130,
    continue with the same command and --resume."""
    from .model import require_torch

    require_torch("training")
    from .train import interrupted_message
    from .train import train as run_training

    try:
        out = run_training(config)
    except KeyboardInterrupt:
        _print(interrupted_message(config), stderr=True)
        return 130
    _print(f"model written to {out}")
    return 0


def _evaluate_spec() -> Spec:
    from .evaluate import EvalConfig

    return Spec(EvalConfig, arguments=("model",), names={"source": "--data"})


@command("evaluate", _evaluate_spec)
def evaluate(config) -> None:
    """Accuracy, macro-F1, per-class report, confusion matrix and every misclassified clip;
    with --snr, accuracy under noise per SNR (report.json `noise`, snr.png)."""
    from rich.progress import Progress
    from rich.table import Table

    from .evaluate import absent_note
    from .evaluate import evaluate as run_evaluation

    console = _console()
    with Progress(console=_console(stderr=True), transient=True) as progress:
        task = progress.add_task("decoding", total=None)
        report = run_evaluation(config, progress=lambda: progress.advance(task))
    table = Table(title=f"{config.model} on {config.source} [{config.split}]")
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
        f"({report['errors']} of {report['clips']} misclassified) -> {config.out}/"
    )
    if report["absent_labels"]:
        _print(absent_note(report).removeprefix("- "))
    if "noise" in report:
        curves = report["noise"]["curves"]
        table = Table(title="accuracy under noise")
        table.add_column("SNR dB", justify="right")
        for name in curves:
            table.add_column(name, justify="right")
        for i, snr_db in enumerate(config.snr or []):
            table.add_row(f"{snr_db:g}", *(f"{c[i]['accuracy']:.4f}" for c in curves.values()))
        console.print(table)


def _predict_spec() -> Spec:
    from .predict import PredictConfig

    return Spec(PredictConfig, arguments=("model", "inputs"))


@command("predict", _predict_spec)
def predict(config) -> int:
    """Classify audio. Exit code: 0 all inputs classified, 1 some inputs failed (error rows),
    2 bad usage, model or data."""
    from .predict import ENGINES, default_engine

    if (engine := config.engine or default_engine()) not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose {', '.join(ENGINES)}")
    out = config.out
    if engine != "plain":
        from .scale import run_engine

        if config.allow_outside_paths:
            raise ConfigError(
                f"--allow-outside-paths works with the plain engine only, not --engine {engine}"
            )
        args = (config.top_k, config.batch_size, config.chunk_size, config.window, config.hop)
        summary = run_engine(engine, config.model, config.inputs, out, *args,
                             config.workers, config.address)  # fmt: skip
        if summary is None:
            return 0
        _print(f"{summary.rows} rows ({summary.errors} errors) in {out}", stderr=True)
        # torchrun would read exit 1 as a crashed rank; its error rows speak for themselves
        return 1 if summary.errors and default_engine() == "plain" else 0
    from .audio import AudioError
    from .classifier import Classifier
    from .config import check_output_file, write_atomic
    from .predict import expand_inputs, render, run

    if out is not None and out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; shards need --engine shards or ray")
    if config.format not in ("table", "json", "csv"):
        raise ConfigError(f"--format {config.format!r}: choose table, json or csv")
    if out is not None:
        check_output_file(out, "--out")
    # A missing input or a bad manifest fails before the model loads.
    paths = expand_inputs(config.inputs, config.allow_outside_paths)
    clf = Classifier.load(config.model)
    results = run(clf, paths, config.top_k, config.batch_size, config.window, config.hop)
    failed = sum(isinstance(r, AudioError) for r in results)
    text = render(results, config.format)
    if out is None:
        _print(text)
    else:
        write_atomic(out, text)
    if failed:
        _print(f"{failed} of {len(results)} input(s) failed (see error rows)", stderr=True)
        return 1
    return 0


def _export_spec() -> Spec:
    from .export import ExportConfig

    return Spec(ExportConfig, arguments=("model",))


@command("export", _export_spec)
def export(config) -> None:
    """Export to ONNX for onnxruntime; checks the graph against torch before keeping it."""
    from .export import check_note, held_out_note
    from .export import export as run_export

    report = run_export(
        config.model,
        config.out,
        int8=config.int8,
        calibrate=config.calibrate,
        calibration_limit=config.calibration_clips,
        min_agreement=config.min_agreement,
    )
    _print(
        f"exported {report.path} ({report.form}, "
        f"{report.size_bytes / 1e6:.1f} MB): max logit diff vs torch {report.max_abs_diff:.2e}, "
        f"top-1 agreement {report.agreement:.1%} on {report.clips} clips{check_note(report)}"
    )
    if note := held_out_note(report, config.min_agreement):
        _print(note)


def _serve_spec() -> Spec:
    from .serve import ServeConfig

    return Spec(ServeConfig, arguments=("model",))


@command("serve", _serve_spec)
def serve(config) -> None:
    """HTTP API (/v1/classify, /v1/model, /health, /docs) and a web page at / to try the model."""
    from .serve import serve as run_server

    if config.token is None:  # an empty VOXCLASS_TOKEN is refused by serve, never "no auth"
        config.token = os.environ.get("VOXCLASS_TOKEN")
    run_server(**dataclasses.asdict(config))


def _demo_spec() -> Spec:
    from .demo import DemoConfig

    return Spec(DemoConfig)


@command("demo", _demo_spec)
def demo(config) -> None:
    """The whole loop offline: synthesize spoken banking requests, train word detectors on the
    shipped speech-tiny encoder, evaluate on unseen voices and unseen wording, classify a few
    clips."""
    from rich.table import Table

    from .demo import run_demo
    from .model import require_torch

    require_torch("the demo (it trains a model)")
    err_console = _console(stderr=True)
    result = run_demo(config, log=lambda m: err_console.print(f"[bold]>[/] {m}"))
    table = Table(title="a few unseen-voice test clips")
    for column in ("clip", "true intent", "predicted (score)"):
        table.add_column(column)
    for p in result["predictions"]:
        path = Path(p.source)
        table.add_row(path.name, path.parent.name, f"{p.labels[0]} ({p.scores[0]:.2f})")
    console = _console()
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


# ---------------------------------------------------------------------------------- the entry


def user_errors() -> tuple[type[Exception], ...]:
    """The library's error types (imported once an error happened: a command's module has
    loaded them by then)."""
    from .audio import AudioError
    from .data import DataError
    from .model import ModelError

    return AudioError, DataError, ModelError, ConfigError


def _stream_spec() -> Spec:
    from .stream import StreamConfig

    return Spec(StreamConfig, arguments=("model", "source"), optional=("source",))


@command("stream", _stream_spec)
def stream(config) -> None:
    """Classify audio as it is spoken: hop, segment and end events as JSON lines."""
    from .stream import print_events

    print_events(
        config.model,
        config.source,
        config.realtime,
        config.rate,
        config.format,
        config.hop,
        config.top_k,
        config.min_silence,
    )


QUIET = {
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def quiet_libraries() -> None:
    """Our own progress bars and errors speak; datasets' casting and transformers'
    weight-loading bars and warnings (a model that does not fit its config is our one-line
    ModelError) are noise, and would push an error off its one line. The environment tells the
    libraries a command imports (importing them here would slow every command down); the ones
    already imported (a caller's, in-process) are told directly. An explicit setting wins."""
    for name, value in QUIET.items():
        os.environ.setdefault(name, value)
    if "datasets" in sys.modules:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    if "transformers" in sys.modules:
        from transformers.utils.logging import disable_progress_bar as quiet_transformers
        from transformers.utils.logging import set_verbosity_error

        quiet_transformers()
        set_verbosity_error()


def _unknown_option(err: click.NoSuchOption) -> str:
    name = err.option_name.lstrip("-").replace("-", "_")
    close = f"; did you mean {', '.join(err.possibilities)}?" if err.possibilities else ""
    return f"unknown option(s) {name}{close}"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors, usage errors included, are one line on stderr
    (`error: ...`) and exit code 2; a command's own exit code (predict: 1) passes through."""
    quiet_libraries()
    try:
        code = app.main(argv, prog_name="voxclass", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as err:
        err.show()
        sys.exit(err.exit_code)
    except click.ClickException as err:  # a bad option: one line, not a framed box
        where = f"{err.ctx.command_path} --help" if getattr(err, "ctx", None) else "--help"
        text = _unknown_option(err) if isinstance(err, click.NoSuchOption) else err.format_message()
        _print(f"error: {text} (see {where})", stderr=True)
        sys.exit(err.exit_code)
    except click.Abort:
        _print("Aborted!", stderr=True)
        sys.exit(1)
    except Exception as err:
        if not isinstance(err, user_errors()):
            raise
        _print(f"error: {err}", stderr=True)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
