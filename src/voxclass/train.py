"""`voxclass train`: the transformers audio-classification recipe, with better defaults.

Reads like the transformers example it improves on: build datasets, build model,
TrainingArguments, Trainer, train(). What changes is in the defaults and the collator:
no 1 s truncation, per-batch padding over length-grouped batches, augmentation, best model by
macro-F1, early stopping, resumable checkpoints, and an output directory that is only ever
complete (written to a temp dir, then renamed) and never replaces a folder voxclass did not write.

Multi-process / multi-node runs go through the standard engine: `torchrun ... -m voxclass train`
or `accelerate launch -m voxclass train`; the Trainer picks up the environment they set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict, Features, concatenate_datasets
from transformers import (
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from .adversary import SpeakerAdversary, ramp
from .config import (
    ConfigError,
    publish_folder,
    recover_interrupted_write,
    save_config,
    staging_folder,
)
from .data import (
    DataConfig,
    DataError,
    audio_struct,
    is_multi_label,
    label_names,
    load_data,
)
from .features import (
    Augment,
    PadCollator,
    decode_split,
    featurize,
    max_seconds_for,
    min_input_length,
)
from .metrics import trainer_metrics
from .model import HEADS, ModelError, build_model, fine_tuning_rate
from .noise import load_recordings
from .pooled_head import mean_member_loss
from .presets import PRESETS


@dataclass
class TrainConfig(DataConfig):
    """Everything `voxclass train` needs; the data fields come from DataConfig."""

    model: str = "facebook/wav2vec2-base"
    """Hub id, local model directory, or preset name (tiny, tiny-fine, tiny-fine-128, small,
    tiny-wav2vec2, the shipped pretrained speech-tiny, speech-embedding)."""
    head: str = "mean"
    """Classification head: mean (the model's own: the mean of the encoder's frames, then
    linear; the folder loads in stock transformers) or keywords (word-sized detectors over the
    encoder's frames, their mean and maximum over the clip: it carries to wording never trained
    on far better; the folder carries its code, so stock `pipeline` needs
    trust_remote_code=True). With keywords the encoder is frozen unless
    --freeze-feature-encoder false."""
    keyword_members: int = 5
    """With --head keywords: independent detector banks, each with its own classifier and
    loss, whose mean is the model's answer (an ensemble over one encoder pass: on wording never
    trained on, one bank depends much on its random start, their mean less)."""
    output: str = "model"
    """Final model directory. Checkpoints live in OUTPUT.work/ until training completes."""
    overwrite: bool = False
    """Replace OUTPUT if it holds an earlier voxclass model (and discard the checkpoints of an
    interrupted run in OUTPUT.work/). A folder voxclass did not write is never replaced."""
    max_seconds: float | None = None
    """Longest clip kept whole; default: 95th percentile of training clip lengths, capped 30 s."""
    epochs: float | None = None
    """Default 30 for a preset trained from scratch, 10 for a pretrained model."""
    learning_rate: float | None = None
    """Default 1e-3 for a preset trained from scratch or a new head on a frozen encoder
    (`speech-embedding`, --head keywords), 5e-4 for an encoder made by `voxclass pretrain`
    (speech-tiny), 5e-5 for another pretrained model."""
    batch_size: int = 16
    """Per device."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    warmup: float = 0.1
    """Fraction of steps with linear warm-up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    early_stopping: int = 5
    """Stop after this many evaluations without a better validation score (macro-F1; the loss
    under --head keywords) (0: never)."""
    early_stopping_from: float | None = None
    """Start counting those evaluations only once validation macro-F1 has reached this.
    Default: a quarter of the way from chance (1 / number of labels) to 1 for one label per
    clip, 0 with several. From scratch on a small, noisy validation split a model can sit at
    chance for many epochs before it learns; counting from the start would stop it there."""
    augment: bool = True
    """Random gain, noise and time shift in training (SpecAugment comes from the model config)."""
    augment_noise: str | None = None
    """Folder (or file) of your own noise recordings, mixed into augmented clips instead of white
    noise (e.g. the room, line or machine noise of the deployment)."""
    augment_copies: int = 3
    """Copies of each training clip featurized before training: the clean clip plus
    augmented ones."""
    class_weights: bool = False
    """Weight the loss by inverse class frequency (for imbalanced data; single-label only)."""
    freeze_feature_encoder: bool = True
    """Freeze the CNN feature encoder of a pretrained wav2vec2-family model (the whole encoder
    of `speech-embedding` and under --head keywords, so that only the head trains)."""
    freeze_layers: int = 0
    """Freeze the feature projection and the lowest N encoder layers of a pretrained model:
    they keep what pretraining taught while the layers above adapt."""
    speaker_adversary: float = 0.0
    """Weight of speaker-adversarial training (e.g. 1.0; 0: off). Needs groups that name the
    speaker (--group-by / --group-pattern): a speaker classifier learns from the pooled
    features while the encoder learns to leave it guessing, so the features stop telling the
    training speakers apart. Single-process training only; the saved model is the stock
    classifier."""
    mixup: float = 0.0
    """Mixup's Beta(a, a) parameter (e.g. 0.4; 0: off): each training batch is mixed with a
    shuffled copy of itself, inputs and losses weighted alike."""
    average_best: int = 0
    """Average the weights of the N best evaluations (by validation macro-F1; the loss under
    --head keywords) when training ends, as speech recipes do (ESPnet averages its 10 best
    epochs): one model with part of an ensemble's gain. The average is kept only if it scores
    at least as well as the best single evaluation on the validation split; metrics.json
    records both. 0: off. Holds N copies of the weights in memory; after --resume only the
    evaluations since resuming count."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run the epochs)."""
    time_budget_minutes: float | None = None
    """Stop training (then evaluate and keep the best model) after this much wall time."""
    resume: bool = False
    """Continue from the last checkpoint in OUTPUT.work/."""
    push_to_hub: str | None = None
    """Upload the final model and card to this Hub repository."""
    num_workers: int = 0
    """DataLoader worker processes."""
    sampling_rate: int | None = None
    """Model input rate; default: the feature extractor's."""
    synth_phrases: str | None = None
    """Phrase file (or a shipped one: banking, digits) to synthesize extra training clips from
    (`voxclass synth`); they join the training split only. Its labels must be the data's."""
    synth_per_label: int = 100
    """Synthetic training clips per label with --synth-phrases."""
    synth_channel: str = "telephone"
    """Channel of the synthetic clips: telephone (made at 8 kHz), wideband or room (16 kHz)."""
    training_args: dict[str, Any] = field(default_factory=dict)
    """Any other transformers.TrainingArguments field (bf16, report_to, gradient_checkpointing,
    eval_strategy, ...), applied over voxclass's own choices. On the command line each is its
    own option (--bf16 true); in YAML, a top-level key or an entry of this mapping."""


TRAINER_DEFAULTS: dict[str, Any] = {
    "lr_scheduler_type": "cosine",
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "logging_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "macro_f1",
    "greater_is_better": True,
    "train_sampling_strategy": "group_by_length",
    "length_column_name": "length",
    "remove_unused_columns": False,
    "report_to": "none",
    "save_only_model": False,
    # A resumed run continues early stopping's count of evaluations without progress.
    "restore_callback_states_from_checkpoint": True,
}
"""voxclass's choices for TrainingArguments fields no TrainConfig field sets (each can be
overridden through `training_args`)."""

BEST_BY_LOSS = {"metric_for_best_model": "loss", "greater_is_better": False}
"""How --head keywords picks its best epoch and counts early stopping (unless `training_args`
says otherwise). Its detectors over a frozen encoder reach 1.000 validation accuracy within a
few epochs; every later epoch then ties on macro-F1 and the first is kept, while the
validation loss still ranks them."""

TRAINER_ALIASES = {
    "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "dataloader_num_workers": "num_workers",
}
"""TrainingArguments fields that a TrainConfig field of another name sets (the option takes
both names). Fields of the same name (learning_rate, seed, ...) are TrainConfig's."""

TRAINER_OWNED = {"output_dir": "--output", "resume_from_checkpoint": "--resume"}
"""TrainingArguments fields voxclass sets from its own options, not settable directly."""

TRAINER_DERIVED = {
    "per_device_eval_batch_size": "2 x --batch-size",
    "warmup_steps": "--warmup",
    "use_cpu": "true when there is no GPU",
    "disable_tqdm": "true unless stderr is a terminal (a line per epoch instead)",
}
"""What voxclass passes for these TrainingArguments fields (see `training_arguments`)."""


def trainer_fields() -> list:
    """The TrainingArguments fields passable through `training_args`."""
    own = {f.name for f in fields(TrainConfig)} | set(TRAINER_ALIASES) | set(TRAINER_OWNED)
    return [f for f in fields(TrainingArguments) if f.init and f.name not in own]


def work_dir(config: TrainConfig) -> Path:
    out = Path(config.output)
    return out.parent / f"{out.name}.work"


# Every voxclass output holds these: an existing folder without them is not voxclass's.
OUTPUT_MARKERS = ("config.json", "metrics.json", "voxclass_config.yaml")
CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def is_main_process() -> bool:
    """Rank 0 of a torchrun job (or a single process): the only one that moves folders."""
    return int(os.environ.get("RANK", "0")) == 0


def is_voxclass_output(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in OUTPUT_MARKERS)


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT.fullmatch(path.name)
    return int(match[1]) if match and path.is_dir() else None


def is_complete_checkpoint(path: Path) -> bool:
    """The Trainer writes a checkpoint's model, optimizer, scheduler and RNG state first and
    trainer_state.json last: a folder cut short by a kill lacks it or holds a truncated one."""
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = ("model.safetensors", "model.safetensors.index.json")
    return (path / "optimizer.pt").is_file() and any((path / w).is_file() for w in weights)


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing. (transformers' get_last_checkpoint
    takes the highest-numbered folder, even one a kill left half-written.)"""
    if not folder.is_dir():
        return None
    complete = [p for p in folder.iterdir() if checkpoint_step(p) is not None]
    complete = [p for p in complete if is_complete_checkpoint(p)]
    return max(complete, key=checkpoint_step, default=None)


def is_voxclass_work_dir(path: Path) -> bool:
    """OUTPUT.work as voxclass leaves it: a `checkpoints` folder of `checkpoint-N` folders."""
    if not path.is_dir():
        return False
    entries = list(path.iterdir())
    if any(e.name != "checkpoints" or not e.is_dir() for e in entries):
        return False
    return all(checkpoint_step(c) is not None for e in entries for c in e.iterdir())


def check_replaceable(config: TrainConfig) -> None:
    """OUTPUT may be written: it does not exist, is an empty folder, or is an earlier voxclass
    output and `--overwrite` is on. Anything else stays untouched."""
    out = Path(config.output)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not is_voxclass_output(out):
        raise ConfigError(
            f"--output {out} exists and voxclass did not write it (no "
            f"{', '.join(OUTPUT_MARKERS)}): choose a new folder; voxclass never replaces it"
        )
    if not config.overwrite:
        raise ConfigError(
            f"--output {out} holds an earlier voxclass model: pass --overwrite true to "
            f"replace it, or choose a new folder"
        )


def check_apart_from_data(config: TrainConfig, data: Iterable[Path]) -> None:
    """Neither OUTPUT (replaced at the end) nor OUTPUT.work (removed at the end) may be a data
    folder, hold one, or lie inside one; `--overwrite` does not change that."""
    targets = [Path(config.output).resolve(), work_dir(config).resolve()]
    for path in {Path(p).resolve() for p in data}:
        for target in targets:
            if target == path or target in path.parents or path in target.parents:
                raise ConfigError(
                    f"--output {config.output}: {target} would hold or sit inside the "
                    f"training data ({path}); choose a folder outside the data"
                )


def check_output(config: TrainConfig) -> None:
    """Before any data is read: OUTPUT is replaceable (see `check_replaceable`), apart from
    the data source, and OUTPUT.work is voxclass's own, its checkpoints kept unless
    `--resume` continues them or `--overwrite` starts over."""
    source = Path(config.source)
    check_apart_from_data(config, [source] if source.exists() else [])
    check_replaceable(config)
    work = work_dir(config)
    if not work.exists():
        return
    if not is_voxclass_work_dir(work):
        raise ConfigError(
            f"{work} exists and voxclass did not make it (it keeps checkpoints there): move "
            f"it away or choose another --output"
        )
    if not (config.resume or config.overwrite) and last_complete_checkpoint(work / "checkpoints"):
        raise ConfigError(
            f"{work} holds the checkpoints of an interrupted run: continue it with --resume, "
            f"or start over with --overwrite true"
        )


def clip_folders(dd: DatasetDict) -> set[Path]:
    """Folders holding the clips of a manifest (which may point anywhere)."""
    paths = (a["path"] for split in dd.values() for a in split["audio"])
    return {Path(p).parent for p in paths if p and os.path.isabs(p)}


def resume_checkpoint(config: TrainConfig) -> Path:
    """The last complete checkpoint in OUTPUT.work/; incomplete ones are removed, so the
    Trainer neither counts them among the checkpoints it keeps nor writes into them."""
    checkpoints = work_dir(config) / "checkpoints"
    last = last_complete_checkpoint(checkpoints)
    if last is None:
        raise ModelError(
            f"--resume: no complete checkpoint in {checkpoints}; start without --resume"
        )
    if is_main_process():
        for path in checkpoints.iterdir():
            if checkpoint_step(path) is not None and not is_complete_checkpoint(path):
                shutil.rmtree(path)
    return last


def interrupted_message(config: TrainConfig) -> str:
    """What to tell a user who stopped training (Ctrl-C)."""
    work = work_dir(config)
    if last_complete_checkpoint(work / "checkpoints") is None:
        return "training interrupted before its first checkpoint: run the same command again"
    return (
        f"training interrupted; its checkpoints are kept in {work}/: continue with the same "
        f"command and --resume"
    )


def decode_data(dd: DatasetDict, config: TrainConfig, sampling_rate: int) -> DatasetDict:
    """Decode every clip once; a bad file anywhere stops training with all of them named."""
    decoded = DatasetDict({k: decode_split(v, sampling_rate) for k, v in dd.items()})
    errors = [e for split in decoded.values() for e in split["error"] if e]
    if errors:
        more = f"\n  ... {len(errors) - 50} more" if len(errors) > 50 else ""
        raise DataError(
            f"{len(errors)} bad audio file(s); fix or remove them (`voxclass inspect` lists "
            f"them):\n  " + "\n  ".join(errors[:50]) + more
        )
    return decoded


def augmentation(config: TrainConfig, sampling_rate: int) -> Augment | None:
    """The training augmentation, with the `--augment-noise` recordings loaded once at the
    model's rate; None with `--augment false` (and then `--augment-noise` is an error)."""
    if not config.augment:
        if config.augment_noise:
            raise ConfigError("--augment-noise needs augmentation on; drop --augment false")
        return None
    noises = load_recordings(config.augment_noise, sampling_rate) if config.augment_noise else None
    return Augment(noises=noises)


def add_synthetic_clips(train_split: Dataset, config: TrainConfig) -> Dataset:
    """The training split plus clips synthesized from `config.synth_phrases` into the work
    dir. Only training gets them: validation and test stay real, so their figures are too."""
    from .synth import SynthConfig, load_phrases, synthesize

    if is_multi_label(train_split):
        raise ConfigError("--synth-phrases makes one label per clip; drop it with --multi-label")
    labels, phrases = label_names(train_split), load_phrases(config.synth_phrases)
    missing = sorted(set(labels) - set(phrases.labels))
    extra = sorted(set(phrases.labels) - set(labels))
    if missing or extra:
        raise DataError(
            f"{config.synth_phrases}: its labels must be the data's; without phrasings: "
            f"{', '.join(missing) or 'none'}; not in the data: {', '.join(extra) or 'none'}"
        )
    folder = work_dir(config) / "synth"
    rows = synthesize(
        SynthConfig(
            out=folder,
            phrases=config.synth_phrases,
            train_per_label=config.synth_per_label,
            validation_per_label=0,
            test_per_label=0,
            test_voice_fraction=0,  # no synthetic test clips: every voice may train
            channel=config.synth_channel,
            sampling_rate=8000 if config.synth_channel == "telephone" else 16000,
            seed=config.seed,
        )
    )["rows"]
    columns = {
        "audio": [{"path": str(folder / r["file_name"]), "bytes": None} for r in rows],
        "label": [r["label"] for r in rows],
    }
    if "group" in train_split.column_names:
        columns["group"] = [f"synthetic {r['voice']}" for r in rows]
    # as in data.py: a plain struct, then cast (encoding an Audio feature needs torchcodec)
    features = Features({**train_split.features, "audio": audio_struct()})
    synthetic = Dataset.from_dict(columns, features=features)
    synthetic = synthetic.cast_column("audio", train_split.features["audio"])
    return concatenate_datasets([train_split, synthetic])


def each_member(loss_of_logits, outputs) -> torch.Tensor:
    """`loss_of_logits` on the model's logits; for a model of several members (`--head
    keywords`, `--keyword-members`) the mean of it on each member's own logits."""
    members = getattr(outputs, "member_logits", None)
    return mean_member_loss(loss_of_logits, outputs.logits, members)


def class_weighted_loss(train: Dataset, num_labels: int):
    """Cross-entropy weighted by inverse class frequency, as a Trainer `compute_loss_func`."""
    counts = np.bincount(np.asarray(train["label"]), minlength=num_labels).astype(np.float32)
    weights = torch.tensor(counts.sum() / np.maximum(counts, 1) / num_labels)

    def loss(outputs, labels, num_items_in_batch=None):
        return each_member(lambda logits: F.cross_entropy(logits, labels, weight=weights), outputs)

    return loss


def multi_label_loss(outputs, labels, num_items_in_batch=None):
    """Binary cross-entropy on each label's logit (mean over clips and labels), as a Trainer
    `compute_loss_func`.

    Set explicitly because the wav2vec2-family heads compute cross-entropy whatever
    `config.problem_type` says (only some heads, e.g. AST, honour it). The Trainer counts every
    multi-hot entry of the accumulated batches in `num_items_in_batch` and expects a loss given
    it to be divided by that count, so gradient accumulation gives the mean over all of them."""

    def loss(logits):
        if num_items_in_batch is None:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        total = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")
        return total / num_items_in_batch

    return each_member(loss, outputs)


def loss_function(config: TrainConfig, train: Dataset, num_labels: int):
    """The Trainer's `compute_loss_func`: None (the model's own cross-entropy), class-weighted
    cross-entropy, or per-label BCE for multi-label data."""
    multi = is_multi_label(train)
    if multi and config.class_weights:
        raise ConfigError(
            "--class-weights weighs single-label classes; with --multi-label each label is its "
            "own yes/no decision: drop --class-weights"
        )
    if multi:
        return multi_label_loss
    return class_weighted_loss(train, num_labels) if config.class_weights else None


class ShuffledLengthGroupedSampler(LengthGroupedSampler):
    """Batches of similar length (little padding) in random order.

    The stock sampler sorts pools of 50 batches by length and emits them longest first. When
    length carries the label (one intent's phrasings are longer than another's), consecutive
    steps then sweep from some classes to others, and a model trained from scratch learned
    nothing. Pools of 8 batches keep most of the padding saving; the batch order is shuffled.
    """

    pool_batches = 8

    def __iter__(self):
        order = get_length_grouped_indices(
            self.lengths,
            self.batch_size,
            mega_batch_mult=self.pool_batches,
            generator=self.generator,
        )
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        shuffled = torch.randperm(len(batches), generator=self.generator).tolist()
        return iter([i for b in shuffled for i in batches[b]])


def mix(inputs: dict, key: str, alpha: float) -> tuple[float, torch.Tensor | None]:
    """Mixup (Zhang et al., 2018) of a batch with a shuffled copy of itself, in place: model
    inputs `key` weighted `share` ~ Beta(alpha, alpha) and 1 - share, attention masks joined.
    Returns (share, the partner of each row); (1.0, None) when alpha is 0."""
    if not alpha:
        return 1.0, None
    share = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(len(inputs[key]), device=inputs[key].device)
    inputs[key] = share * inputs[key] + (1.0 - share) * inputs[key][partner]
    if "attention_mask" in inputs:
        inputs["attention_mask"] = torch.maximum(
            inputs["attention_mask"], inputs["attention_mask"][partner]
        )
    return share, partner


class VoxTrainer(Trainer):
    """The stock Trainer with the length-grouped sampler above, optional mixup, and, given an
    `adversary`, a speaker-adversarial loss on the input of the model's `classifier` layer (the
    pooled utterance features of every transformers audio classifier)."""

    def __init__(
        self,
        *args,
        adversary: SpeakerAdversary | None = None,
        weight: float = 0.0,
        mixup: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.mixup = mixup
        self.adversary = adversary.to(self.args.device) if adversary is not None else None
        self.adversary_weight = weight

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.adversary is not None and not any(
            g.get("adversary") for g in optimizer.param_groups
        ):
            optimizer.add_param_group(
                {
                    "params": list(self.adversary.parameters()),
                    "weight_decay": 0.0,
                    "adversary": True,
                }
            )
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        speakers = inputs.pop("speakers", None)
        adversarial = self.adversary is not None and speakers is not None
        if not model.training or not (adversarial or self.mixup):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        share, partner = mix(inputs, self.model.main_input_name, self.mixup)
        labels = inputs["labels"]  # the Trainer pops them when it has a compute_loss_func
        pooled = []  # the classifier's input, the pooled features the speaker head reads
        hook = (
            self.model.classifier.register_forward_hook(
                lambda module, args, output: pooled.append(args[0])
            )
            if adversarial
            else None
        )
        try:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        finally:
            if hook is not None:
                hook.remove()
        if share < 1.0:
            partner_loss = self.label_loss(outputs, labels[partner], num_items_in_batch)
            loss = share * loss + (1.0 - share) * partner_loss
        if adversarial:
            progress = self.state.global_step / max(self.state.max_steps, 1)
            weight = self.adversary_weight * ramp(progress)
            speakers = speakers.to(pooled[0].device)
            loss = loss + share * self.adversary.loss(pooled[0], speakers, weight)
            if share < 1.0:
                partner_loss = self.adversary.loss(pooled[0], speakers[partner], weight)
                loss = loss + (1.0 - share) * partner_loss
        return (loss, outputs) if return_outputs else loss

    def label_loss(self, outputs, labels, num_items_in_batch=None):
        """The loss the model's own would give for these labels (or voxclass's loss function)."""
        if self.compute_loss_func is not None:
            return self.compute_loss_func(outputs, labels, num_items_in_batch)
        return each_member(lambda logits: F.cross_entropy(logits, labels), outputs)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        return ShuffledLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=dataset[self.args.length_column_name],
        )


class PatientEarlyStopping(EarlyStoppingCallback):
    """Early stopping whose patience starts once the best validation macro-F1 reaches `start`
    (whichever metric, `metric_for_best_model`, the patience counts on)."""

    def __init__(self, early_stopping_patience: int = 1, start: float = 0.0):
        super().__init__(early_stopping_patience)
        self.start = start
        self.best = float("-inf")

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        self.best = max(self.best, metrics.get("eval_macro_f1", float("-inf")))
        return super().on_evaluate(args, state, control, metrics, **kwargs)

    def check_metric_value(self, args, state, control, metric_value):
        super().check_metric_value(args, state, control, metric_value)
        if self.best < self.start:
            self.early_stopping_patience_counter = 0

    def state(self) -> dict:  # what a resumed run restores (restore_callback_states_...)
        saved = super().state()
        saved["args"] = {
            "early_stopping_patience": self.early_stopping_patience,
            "start": self.start,
        }
        saved["attributes"]["best"] = self.best
        return saved


def speaker_adversary(
    config: TrainConfig, train_split: Dataset, model: Any
) -> tuple[SpeakerAdversary | None, dict[str, int] | None]:
    """The speaker head and the training speakers' ids for --speaker-adversary (None, None
    when it is off); an impossible setting is a ConfigError before any audio is decoded."""
    if not config.speaker_adversary:
        return None, None
    if "group" not in train_split.column_names:
        raise ConfigError(
            "--speaker-adversary needs to know each clip's speaker: add --group-by COLUMN or "
            "--group-pattern REGEX"
        )
    speakers = sorted(set(train_split["group"]))
    if len(speakers) < 2:
        raise ConfigError(
            f"--speaker-adversary needs at least 2 speakers in the training split; it has "
            f"{len(speakers)}"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--speaker-adversary trains in one process only: run without torchrun")
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, torch.nn.Linear):
        raise ConfigError(
            f"--speaker-adversary needs a model whose `classifier` is one linear layer over "
            f"pooled features (the presets, wav2vec2, HuBERT, WavLM, Whisper); "
            f"{config.model}'s is {type(classifier).__name__}"
        )
    with torch.random.fork_rng(devices=[]):  # the rest of training draws what it would without
        torch.manual_seed(config.seed)
        head = SpeakerAdversary(classifier.in_features, len(speakers))
    return head, {speaker: i for i, speaker in enumerate(speakers)}


def early_stopping_start(config: TrainConfig, num_labels: int, multi_label: bool) -> float:
    """The macro-F1 from which early stopping counts (see `TrainConfig.early_stopping_from`)."""
    if config.early_stopping_from is not None:
        return config.early_stopping_from
    return 0.0 if multi_label else 0.25 + 0.75 / num_labels


class TimeBudget(TrainerCallback):
    """Ends training once the wall-clock budget is spent; the epoch ends early and, like any
    epoch end, is evaluated and checkpointed, so the best model so far is kept. It asks for
    no evaluation itself: a second one would log the step twice and count twice toward
    early stopping."""

    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + minutes * 60

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() > self.deadline:
            control.should_training_stop = True
        return control


class BestWeights(TrainerCallback):
    """A CPU copy of the model's weights at each of the `count` best evaluations so far (by
    the Trainer's `metric_for_best_model`), for `--average-best`."""

    def __init__(self, count: int):
        self.count = count
        self.kept: list[tuple[float, int, dict[str, torch.Tensor]]] = []  # (score, step, weights)

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        score = (metrics or {}).get(f"eval_{args.metric_for_best_model}")
        if score is None or model is None:
            return
        sign = 1 if args.greater_is_better else -1
        if len(self.kept) == self.count and sign * score <= sign * self.kept[-1][0]:
            return  # no better than the worst kept: skip the copy
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.kept.append((score, state.global_step, weights))
        self.kept.sort(key=lambda kept: -sign * kept[0])  # best first; ties: earliest first
        del self.kept[self.count :]


def average_weights(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of each floating-point tensor (computed in float32); any other
    tensor (a counter) is taken from the first state."""
    return {
        name: torch.stack([s[name].float() for s in states]).mean(0).to(first.dtype)
        if first.is_floating_point()
        else first
        for name, first in states[0].items()
    }


def keep_average_if_better(trainer: Trainer, best: BestWeights, eval_set: Dataset) -> dict:
    """Load the average of the kept weights into the trained model if it scores at least as
    well as the model the Trainer ended with (its best) on `eval_set`; what was compared."""
    trainer.remove_callback(best)
    if len(best.kept) < 2:
        return {"evaluations": len(best.kept), "used": False}
    metric, sign = trainer.args.metric_for_best_model, 1 if trainer.args.greater_is_better else -1
    # predict, not evaluate: it scores without logging or telling the callbacks (early
    # stopping, the epoch log) about an evaluation that is not one of training's.
    single = trainer.predict(eval_set, metric_key_prefix="single").metrics[f"single_{metric}"]
    ended_with = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(average_weights([weights for _, _, weights in best.kept]))
    averaged = trainer.predict(eval_set, metric_key_prefix="average").metrics[f"average_{metric}"]
    used = sign * averaged >= sign * single
    if not used:
        trainer.model.load_state_dict(ended_with)
    print(
        f"average of the {len(best.kept)} best evaluations: {metric} {averaged:.4f} against "
        f"{single:.4f} for the best one: {'kept' if used else 'not kept'}",
        file=sys.stderr,
        flush=True,
    )
    return {
        "evaluations": len(best.kept),
        "steps": sorted(step for _, step, _ in best.kept),
        "metric": metric,
        "average": averaged,
        "best_single": single,
        "used": bool(used),
    }


class EpochLog(TrainerCallback):
    """One line per evaluation on stderr (epoch, training loss, the evaluated split's metrics),
    then one for the best model on the test split: what a log file or CI gets instead of
    progress bars redrawn hundreds of times."""

    def __init__(self, evaluated_on: str):
        self.evaluated_on = evaluated_on
        self.loss: float | None = None
        self.start = time.monotonic()
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = logs["loss"]
        if "eval_macro_f1" not in logs or not state.is_world_process_zero:
            return
        scores = (
            f"loss {logs['eval_loss']:.4f}, accuracy {logs['eval_accuracy']:.4f}, "
            f"macro-F1 {logs['eval_macro_f1']:.4f}"
        )
        if self.training:
            loss = f"loss {self.loss:.4f}; " if self.loss is not None else ""
            line = (
                f"epoch {state.epoch:.3g}/{args.num_train_epochs:g}: {loss}{self.evaluated_on} "
                f"{scores} ({time.monotonic() - self.start:.0f} s)"
            )
        else:
            line = f"best model on test: {scores}"
        print(line, file=sys.stderr, flush=True)


def by_length(ds: Dataset) -> Dataset:
    """Clips shortest first, so evaluation batches are padded little. Not `Dataset.sort`: it
    hands pyarrow >= 25 a deprecated sort option, a FutureWarning on every run."""
    return ds.select(np.argsort(np.asarray(ds["length"]), kind="stable"))


def training_arguments(
    config: TrainConfig, from_scratch: bool, pretrained_rate: float | None = None
) -> TrainingArguments:
    """voxclass's defaults, then the config's own fields, then `config.training_args`; a value
    TrainingArguments refuses is a ConfigError (before any data is read). `pretrained_rate`:
    a pretrained model's own learning rate (`model.fine_tuning_rate`), else 5e-5."""
    own_rate = pretrained_rate or 5e-5
    owned = set(config.training_args) & set(TRAINER_OWNED)
    if owned:
        name = sorted(owned)[0]
        raise ConfigError(f"{name} is set by voxclass: use {TRAINER_OWNED[name]}")
    chosen = {
        **TRAINER_DEFAULTS,
        **(BEST_BY_LOSS if config.head == "keywords" else {}),
        "output_dir": str(work_dir(config) / "checkpoints"),
        "num_train_epochs": config.epochs or (30 if from_scratch else 10),
        "max_steps": config.max_steps,
        # A small model from scratch needs a far higher rate than fine-tuning a pretrained one.
        "learning_rate": config.learning_rate or (1e-3 if from_scratch else own_rate),
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size * 2,
        "gradient_accumulation_steps": config.grad_accum,
        "warmup_steps": config.warmup,
        "weight_decay": config.weight_decay,
        "dataloader_num_workers": config.num_workers,
        "seed": config.seed,
        # Without a GPU, accelerate only sets up multi-process DDP (gloo) when told it is on
        # the CPU; otherwise each torchrun process would silently train alone.
        "use_cpu": not torch.accelerator.is_available(),
        # Progress bars only on a terminal; elsewhere EpochLog writes a line per epoch.
        "disable_tqdm": not sys.stderr.isatty(),
        **config.training_args,
    }
    half = [k for k in ("bf16", "fp16") if chosen.get(k)]
    if half and not torch.accelerator.is_available() and "use_cpu" not in config.training_args:
        raise ConfigError(
            f"--{half[0]} true: mixed precision needs a GPU and this machine has none; drop it "
            f"(or add --use-cpu true to try {half[0]} autocast on the CPU)"
        )
    try:
        args = TrainingArguments(**chosen)
        # The Trainer makes these at its start, after the data is decoded: an unknown or
        # uninstalled integration (--report-to tensorboard without tensorboard) fails now.
        for callback in get_reporting_integration_callbacks(args.report_to):
            callback()
    except (ValueError, TypeError, RuntimeError, ImportError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"TrainingArguments refused the options: {first}") from None
    return args


def train(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> Path:
    """Train and write the final model directory; returns its path.

    `callbacks`: your own TrainerCallbacks, run after voxclass's (early stopping, time
    budget). Before any data is decoded, OUTPUT and OUTPUT.work are checked (see
    `check_output`): nothing voxclass did not write is ever replaced or removed."""
    set_seed(config.seed)
    if config.average_best < 0 or config.average_best == 1:
        raise ConfigError(
            f"--average-best {config.average_best}: give 2 or more evaluations to average (0: off)"
        )
    if config.head not in HEADS:
        raise ConfigError(f"--head {config.head!r}: choose {' or '.join(HEADS)}")
    if config.keyword_members < 1:
        raise ConfigError(f"--keyword-members {config.keyword_members}: give 1 or more")
    from_scratch = config.model in PRESETS
    if is_main_process():
        recover_interrupted_write(Path(config.output))
    check_output(config)
    args = training_arguments(config, from_scratch)  # a refused option fails before the data
    checkpoint = resume_checkpoint(config) if config.resume else None
    dd = load_data(config)
    if Path(config.source).is_file():  # a manifest's clips may lie anywhere
        check_apart_from_data(config, clip_folders(dd))
    if not config.resume and is_main_process():
        shutil.rmtree(work_dir(config), ignore_errors=True)  # voxclass's own, checked above
    labels = label_names(dd["train"])  # sorted, deterministic
    real_train_clips = len(dd["train"])
    if config.synth_phrases:
        dd["train"] = add_synthetic_clips(dd["train"], config)
    multi = is_multi_label(dd["train"])
    # Before decoding: an impossible combination fails fast. Augmented copies do not change
    # the class proportions, so weights from the clips equal weights from the copies.
    compute_loss = loss_function(config, dd["train"], len(labels))
    # problem_type tells Classifier and pipeline() to score each label with its own sigmoid.
    overrides = {"problem_type": "multi_label_classification"} if multi else {}
    if config.head == "keywords":
        overrides["members"] = config.keyword_members
    model, extractor = build_model(config.model, labels, config.head, **overrides)
    own_rate = None if from_scratch else fine_tuning_rate(model.config)
    adversary, speakers = speaker_adversary(config, dd["train"], model)
    rate = config.sampling_rate or extractor.sampling_rate
    augment = augmentation(config, rate)  # before decoding: a bad noise folder fails fast
    decoded = decode_data(dd, config, rate)
    max_seconds = config.max_seconds or max_seconds_for(
        np.asarray(decoded["train"]["length"]), rate
    )
    freeze_pretrained_encoder(model, from_scratch, config.freeze_feature_encoder)
    freeze_lower_layers(model, from_scratch, config.freeze_layers)
    model.config.voxclass = {"max_seconds": max_seconds, "sampling_rate": rate}

    train_set = featurize(
        decoded["train"],
        extractor,
        rate,
        max_seconds,
        augment,
        copies=config.augment_copies,
        seed=config.seed,
    )
    # Evaluation batches are padded to their longest clip: sort by length so padding stays small.
    test_set = by_length(featurize(decoded["test"], extractor, rate, max_seconds))
    # The best epoch and early stopping are chosen on the validation split when the data has
    # one, so the final test figure is not selected on the test clips themselves.
    selected_on = "validation" if "validation" in decoded else "test"
    eval_set = (
        by_length(featurize(decoded[selected_on], extractor, rate, max_seconds))
        if selected_on != "test"
        else test_set
    )

    if own_rate:  # known only now that the model's config is read
        args = training_arguments(config, from_scratch, own_rate)
    stops: list[TrainerCallback] = []
    if config.early_stopping:
        start = early_stopping_start(config, len(labels), multi)
        stops.append(PatientEarlyStopping(config.early_stopping, start))
    if config.time_budget_minutes:
        stops.append(TimeBudget(config.time_budget_minutes))
    logs = [EpochLog(selected_on)] if args.disable_tqdm else []
    best_weights = [BestWeights(config.average_best)] if config.average_best else []
    trainer = VoxTrainer(
        model=model,
        args=args,
        data_collator=PadCollator(
            extractor,
            min_input_length(model),
            num_labels=len(labels) if multi else None,
            speakers=speakers,
        ),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=extractor,
        compute_metrics=trainer_metrics,
        compute_loss_func=compute_loss,
        callbacks=[*stops, *logs, *best_weights, *callbacks],
        adversary=adversary,
        weight=config.speaker_adversary,
        mixup=config.mixup,
    )
    trainer.remove_callback(PrinterCallback)  # its raw dicts would repeat EpochLog's lines
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        close_progress_bars(trainer)
        raise
    seconds = time.perf_counter() - start
    # Per-epoch history before the final evaluation of the best model, which would repeat it.
    epochs = [h for h in trainer.state.log_history if "eval_macro_f1" in h or "loss" in h]
    average = keep_average_if_better(trainer, *best_weights, eval_set) if best_weights else None
    final = trainer.evaluate(test_set)
    if not trainer.is_world_process_zero():
        return Path(config.output)
    metrics = {
        "final": {k.removeprefix("eval_"): v for k, v in final.items()},
        "train": {
            **result.metrics,
            "wall_seconds": seconds,
            "train_clips": len(decoded["train"]),
            "real_train_clips": real_train_clips,
            "synthetic_train_clips": len(decoded["train"]) - real_train_clips,
            "adversary_speakers": len(speakers or {}),
            "test_clips": len(test_set),
        },
        "epochs": epochs,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "checkpoint_average": average,
        "selected_on": selected_on,
        "labels": labels,
        "max_seconds": max_seconds,
        "sampling_rate": rate,
        "world_size": args.world_size,
    }
    out = write_output(trainer, config, metrics)
    if config.push_to_hub:
        push(out, config.push_to_hub)
    shutil.rmtree(work_dir(config), ignore_errors=True)
    return out


def close_progress_bars(trainer: Trainer) -> None:
    """Ctrl-C skips the Trainer's on_train_end, which closes its progress bars; left open,
    tqdm redraws them at exit, below the message saying how to resume."""
    for callback in trainer.callback_handler.callbacks:
        for bar in (
            getattr(callback, "training_bar", None),
            getattr(callback, "prediction_bar", None),
        ):
            if bar is not None:
                bar.close()


def freeze_pretrained_encoder(model, from_scratch: bool, enabled: bool) -> bool:
    """Freeze the CNN feature encoder of a pretrained wav2vec2-family model: its features are
    already good and fine-tuning them on little data hurts. A preset learns them from scratch."""
    if enabled and not from_scratch and hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
        return True
    return False


def freeze_lower_layers(model, from_scratch: bool, layers: int) -> None:
    """Freeze the feature projection and the lowest `layers` encoder layers (`--freeze-layers`)."""
    if not layers:
        return
    base = model.base_model
    stack = getattr(getattr(base, "encoder", None), "layers", None)
    if from_scratch or stack is None or not 0 < layers <= len(stack):
        raise ModelError(
            f"--freeze-layers {layers}: give 1 to the number of encoder layers "
            f"({len(stack) if stack is not None else 'none here'}) of a pretrained model"
        )
    frozen = [getattr(base, "feature_projection", None), *stack[:layers]]
    for module in filter(None, frozen):
        for parameter in module.parameters():
            parameter.requires_grad = False


def write_output(trainer: Trainer, config: TrainConfig, metrics: dict) -> Path:
    """Model, extractor, metrics, config and card into a temp folder beside OUTPUT, then
    renamed into place. An earlier output (checked again: still replaceable) is moved aside
    first and removed only once the new one is in place."""
    out = Path(config.output)
    check_replaceable(config)
    tmp = staging_folder(out)
    try:
        trainer.save_model(str(tmp))  # model + processing_class (the feature extractor)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        save_config(config, tmp / "voxclass_config.yaml")
        carries_code = bool(getattr(trainer.model.config, "auto_map", None))
        (tmp / "README.md").write_text(model_card(config, metrics, carries_code))
        publish_folder(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_card(config: TrainConfig, metrics: dict, carries_code: bool = False) -> str:
    """The folder's README.md. `carries_code`: the architecture's code is saved beside the
    weights (`--head keywords`, `speech-embedding`), so `pipeline` needs trust_remote_code."""
    final, clips = metrics["final"], metrics["train"]
    labels = ", ".join(f"`{x}`" for x in metrics["labels"])
    multi = (
        "\n- **Multi-label:** each label scored by its own sigmoid; accuracy is exact match of "
        "the label set, a label counting as present above 0.5"
        if config.multi_label
        else ""
    )
    average = metrics.get("checkpoint_average") or {}
    weights = (
        f"\n- **Weights:** the average of the {average['evaluations']} best evaluations "
        f"(steps {', '.join(map(str, average['steps']))}; validation {average['metric']} "
        f"{average['average']:.4f} against {average['best_single']:.4f} for the best)"
        if average.get("used")
        else ""
    )
    # the model's own code (keyword_head.py, ...) is in the folder, beside its weights
    remote = ", trust_remote_code=True" if carries_code else ""
    return f"""---
library_name: transformers
pipeline_tag: audio-classification
tags: [voxclass, audio-classification]
---
# {Path(config.output).name}

Audio classifier trained with [voxclass](https://pypi.org/project/voxclass/) from
`{config.model}` on `{config.source}`.

- **Labels ({len(metrics["labels"])}):** {labels}{multi}
- **Test accuracy:** {final.get("accuracy", float("nan")):.4f}
- **Test macro-F1:** {final.get("macro_f1", float("nan")):.4f}
- **Clips:** {clips["train_clips"]} train ({clips["real_train_clips"]} real, \
{clips["synthetic_train_clips"]} synthetic), {clips["test_clips"]} test
- **Max clip duration:** {metrics["max_seconds"]} s (longer audio: classify in windows)
- **Training time:** {metrics["train"]["wall_seconds"]:.0f} s on \
{metrics["world_size"]} process(es){weights}

## Use

```python
from transformers import pipeline
import soundfile as sf
import soxr

clf = pipeline("audio-classification", model="PATH_TO_THIS_FOLDER"{remote})
audio, rate = sf.read("clip.wav", dtype="float32")
if audio.ndim == 2:
    audio = audio.mean(axis=1)  # mono
# pipeline() resamples only with torchaudio installed: bring the audio to the model's rate
audio = soxr.resample(audio, rate, {metrics["sampling_rate"]})
print(clf({{"raw": audio, "sampling_rate": {metrics["sampling_rate"]}}}, top_k=5))
```

or with voxclass: `voxclass predict PATH_TO_THIS_FOLDER clip.wav --top-k 5`.

## Training configuration

```yaml
{json.dumps({k: v for k, v in asdict(config).items() if v not in (None, [], False)}, indent=2)}
```
"""


def push(out: Path, repo_id: str) -> None:
    """Upload the finished directory (model, extractor, card, metrics)."""
    from huggingface_hub import HfApi

    try:
        HfApi().create_repo(repo_id, exist_ok=True)
        HfApi().upload_folder(folder_path=str(out), repo_id=repo_id)
    except Exception as err:  # connection, auth and permission errors all land here
        raise ModelError(
            f"cannot push to the Hugging Face Hub repo '{repo_id}' ({type(err).__name__}); the "
            f"model is saved in {out}: log in (`hf auth login`) and check your connection"
        ) from None
