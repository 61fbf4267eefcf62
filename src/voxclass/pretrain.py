"""A speech encoder pretrained on speech synthesized on the fly, with phonemes as targets.

Without the Hugging Face Hub every preset starts from random weights, and learns which sound
differences are words and which are the speaker from a small labelled set alone. Here
espeak-ng (`synth.Espeak`) says random text: words drawn from a frequency list (`wordfreq`,
flattened so rarer words come up too) and numbers, never the shipped phrase files' requests
(a fine-tuned model's unseen-wording figure would then count sentences the encoder heard), in
every English accent and every human-like voice variant, at a random rate, pitch and pitch
range, through a random channel (telephone band, wideband, room reverberation;
`synth.apply_channel`), with speed perturbation, gain and noise (`features.Augment`). The
synthesizer also says which phonemes it speaks (`Espeak.phonemes`), so the target is free:
CTC over the phoneme string teaches the encoder speech content, whoever says it, with no
timing needed.

The model is a stock `Wav2Vec2BertForCTC` with a preset's encoder (`tiny-fine-128` by default), so
OUT is a plain `save_pretrained` directory: `voxclass train --model OUT` (or the shipped
`speech-tiny`) loads its encoder under a new classification head.

Training runs until `hours` of synthetic speech have been heard or `time_budget_minutes` have
passed, whichever comes first; the learning rate follows a cosine over that progress. A fixed
validation set (its own seed) gives the phoneme error rate of greedy CTC decoding.

`init` goes on from an earlier output: its weights and architecture, its validation clips (so
the phoneme error rates compare), and a new seed for the training clips (the same seed would
say the same clips again).
"""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ConfigError
from .features import Augment, extract_one, min_samples, pad_batch
from .presets import PRESETS, preset_config
from .synth import (
    CHANNELS,
    Espeak,
    apply_channel,
    english_accents,
    human_variants,
)

BLANK, UNKNOWN = "<pad>", "<unk>"
"""CTC blank (also the padding id) and the id of a phoneme missing from the vocabulary."""
VOCAB_WORDS = 3000
"""The most frequent words, said in every accent, whose phonemes make the vocabulary."""
MAX_RESTARTS = 20
"""Synthesis workers that may die (an espeak-ng crash) before pretraining gives up."""
MARKER = "pretrain.json"
"""Written into every pretrain output: what made it, and how well it learned."""
UNRECORDED = "(a run whose command is not on record)"


@dataclass
class PretrainConfig:
    """What `voxclass pretrain` makes."""

    out: Path
    """Output folder: a `save_pretrained` Wav2Vec2BertForCTC directory (+ vocab.json, card)."""
    hours: float = 20.0
    """Hours of synthetic speech to train on (each clip is new)."""
    time_budget_minutes: float | None = None
    """Stop after this much wall time, even if fewer hours were heard."""
    preset: str = "tiny-fine-128"
    """Encoder architecture: a Wav2Vec2-BERT preset (tiny, tiny-fine, tiny-fine-128, small);
    the default is the shape of the shipped `speech-tiny`."""
    batch_size: int = 32
    """Clips per step."""
    learning_rate: float = 1e-3
    """Peak learning rate (AdamW, linear warm-up, then cosine to zero)."""
    warmup_steps: int = 300
    """Steps of linear warm-up."""
    max_words: int = 6
    """Longest random word sequence in one clip."""
    vocabulary_words: int = 20000
    """Draw words from this many most frequent English words."""
    validation_clips: int = 64
    """Fixed clips (own seed) for the phoneme error rate."""
    eval_minutes: float = 5.0
    """Report validation loss and phoneme error rate this often."""
    workers: int = 1
    """Processes synthesizing clips while the model trains (0: in the training process)."""
    seed: int = 0
    """Same seed, same clips and initial weights."""
    init: Path | None = None
    """An earlier `voxclass pretrain` output to go on training (its weights and architecture:
    --preset is not used); give a --seed none of its runs used."""


def check(config: PretrainConfig) -> dict | None:
    """Settings that cannot work are a ConfigError before anything is made; returns what the
    `--init` run was (`earlier_run`)."""
    spec = PRESETS.get(config.preset)
    if spec is None or spec()[0].model_type != "wav2vec2-bert":
        names = [n for n, s in PRESETS.items() if s()[0].model_type == "wav2vec2-bert"]
        raise ConfigError(f"--preset {config.preset!r}: choose one of {', '.join(names)}")
    if config.hours <= 0 or (config.time_budget_minutes or 1) <= 0:
        raise ConfigError("--hours and --time-budget-minutes: give positive numbers")
    if config.batch_size < 1 or config.max_words < 1 or config.validation_clips < 1:
        raise ConfigError("--batch-size, --max-words, --validation-clips: give at least 1")
    out = Path(config.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / MARKER).is_file():
        raise ConfigError(
            f"{out}: exists and is not a `voxclass pretrain` output; give a new or empty folder"
        )
    return earlier_run(config)


def earlier_run(config: PretrainConfig) -> dict | None:
    """What the `--init` run was (None without one): the commands and seeds of every run that
    made it, the hours they heard and the preset of the first; a ConfigError if it cannot go on."""
    if config.init is None:
        return None
    init = Path(config.init)
    try:
        summary = json.loads((init / MARKER).read_text())
        earlier = {
            # an output from before --init, made from Python, has no command on record
            "commands": summary.get("commands") or [summary["command"] or UNRECORDED],
            "seeds": summary.get("seeds", [summary["config"]["seed"]]),
            "hours_heard": summary.get("total_hours_heard", summary["hours_heard"]),
            "preset": (summary.get("earlier") or summary["config"])["preset"],
        }
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"--init {init}: not a `voxclass pretrain` output (no readable {MARKER}); give the "
            "--out folder of an earlier run"
        ) from None
    if config.seed in earlier["seeds"]:
        raise ConfigError(
            f"--init {init} was trained with --seed {config.seed}: give another --seed, or the "
            "same clips are heard again"
        )
    return earlier


def word_list(size: int) -> tuple[list[str], np.ndarray]:
    """The `size` most frequent English words (letters and apostrophes only) and sampling
    weights: the square root of frequency, so that "the" is common but rarer words come up."""
    import wordfreq

    words = [
        w for w in wordfreq.top_n_list("en", size) if w.replace("'", "").isalpha() and w != "'"
    ]
    weights = np.sqrt([wordfreq.word_frequency(w, "en") for w in words])
    return words, weights / weights.sum()


def phoneme_vocabulary(espeak: Espeak, accents: list[str], words: list[str]) -> dict[str, int]:
    """Phoneme name -> id: blank 0, unknown 1, then every phoneme the accents use for `words`
    (sorted, so the same espeak-ng gives the same ids)."""
    seen: set[str] = set()
    for accent in accents:
        for i in range(0, len(words), 100):
            seen.update(espeak.phonemes(" ".join(words[i : i + 100]), accent))
    return {name: i for i, name in enumerate([BLANK, UNKNOWN, *sorted(seen)])}


class TextMaker:
    """Random text to say: word sequences (most clips) and numbers."""

    def __init__(self, words: list[str], weights: np.ndarray, max_words: int) -> None:
        self.words, self.weights, self.max_words = words, weights, max_words

    def __call__(self, rng: np.random.Generator) -> str:
        if rng.random() < 0.15:  # digit strings ("4 0 7"), or a number espeak-ng reads out in words
            if rng.random() < 0.5:
                return " ".join(str(d) for d in rng.integers(0, 10, rng.integers(1, 8)))
            return str(int(rng.integers(0, 10 ** int(rng.integers(1, 7)))))
        n = int(rng.integers(1, self.max_words + 1))
        return " ".join(rng.choice(self.words, size=n, p=self.weights))


@dataclass
class Voices:
    """Every English accent and every human-like voice variant espeak-ng ships (the others,
    such as `Demonic`, are not speech to learn from, and some crash espeak-ng in some
    accents)."""

    accents: list[str]
    variants: list[str]

    @classmethod
    def of(cls, espeak: Espeak) -> Voices:
        return cls(english_accents(espeak.data_path), human_variants(espeak.data_path))

    def pick(self, rng: np.random.Generator) -> str:
        return f"{self.accents[rng.integers(len(self.accents))]}+" + str(
            self.variants[rng.integers(len(self.variants))]
        )


class ClipMaker:
    """Synthetic clips at the model's rate, with their phoneme ids."""

    def __init__(self, config: PretrainConfig, vocab: dict[str, int], rate: int) -> None:
        self.espeak = Espeak()
        self.voices = Voices.of(self.espeak)
        self.text = TextMaker(*word_list(config.vocabulary_words), config.max_words)
        self.vocab, self.rate = vocab, rate
        self.augment = Augment(speed=(0.85, 1.2), shift_seconds=0.0, noise_snr_db=(5.0, 40.0))

    def __call__(self, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
        text, voice = self.text(rng), self.voices.pick(rng)
        seed = int(rng.integers(2**31))
        speech = self.espeak.say(
            text,
            voice,
            rate=int(rng.integers(110, 230)),
            pitch=int(rng.integers(15, 85)),
            pitch_range=int(rng.integers(10, 90)),
            seed=seed,
        )
        channel = CHANNELS[rng.integers(len(CHANNELS))]
        wave = apply_channel(
            speech, self.espeak.sampling_rate, self.rate, channel, rng.uniform(-65, -35), rng
        )
        wave = self.augment(wave, rng, self.rate)
        unknown = self.vocab[UNKNOWN]
        return wave, [self.vocab.get(p, unknown) for p in self.espeak.phonemes(text, voice)]


def collate(
    extractor: Any, clips: list[tuple[np.ndarray, list[int]]], rate: int, shortest: int
) -> dict:
    """Padded model inputs, CTC labels (-100 past each clip's phonemes) and seconds of audio;
    `shortest`: see `features.min_samples`."""
    import torch

    batch = pad_batch(extractor, [extract_one(extractor, w, rate, shortest) for w, _ in clips])
    longest = max(len(ids) for _, ids in clips)
    labels = torch.full((len(clips), longest), -100, dtype=torch.long)
    for row, (_, ids) in enumerate(clips):
        labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    batch["labels"] = labels
    batch["seconds"] = sum(len(w) for w, _ in clips) / rate
    return batch


def _batches(
    config: PretrainConfig, vocab: dict[str, int], extractor: Any, key: list[int]
) -> Iterator[dict]:
    """Endless batches of new clips drawn from the seed `key`."""
    rng = np.random.default_rng(key)
    rate = extractor.sampling_rate
    make = ClipMaker(config, vocab, rate)
    shortest = min_samples(extractor, sampling_rate=rate)
    while True:
        yield collate(extractor, [make(rng) for _ in range(config.batch_size)], rate, shortest)


def _produce(config: PretrainConfig, vocab: dict, extractor: Any, key: list[int], conn) -> None:
    """A synthesis process: sends batches down `conn` until the reader goes away. Each send
    completes before the next clip is made, so a crash never leaves half a batch in the pipe.
    Batches go as plain pickles, tensors by value: `conn.send` would pass a tensor's storage
    as a file descriptor fetched later from this process, and a crash in between loses it."""
    import torch

    torch.set_num_threads(1)  # the training process has the cores
    try:
        for batch in _batches(config, vocab, extractor, key):
            conn.send_bytes(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass


def _stream(config: PretrainConfig, vocab: dict[str, int], extractor: Any, log) -> Iterator[dict]:
    """Batches from `config.workers` processes. espeak-ng is C code: a text that crashes it
    (rare) kills only its process, and a fresh one, with a fresh seed, takes over (at most
    MAX_RESTARTS times). Plain processes and pipes rather than a torch DataLoader: a DataLoader
    reports a dead worker by raising from a signal handler in whatever the training loop is
    doing at that moment, where nothing can catch it cleanly."""
    import multiprocessing
    from multiprocessing.connection import wait

    if not config.workers:
        yield from _batches(config, vocab, extractor, [config.seed, 1, 0])
        return
    context = multiprocessing.get_context("fork")
    started = 0

    def start():
        nonlocal started
        reader, writer = context.Pipe(duplex=False)
        key = [config.seed, 1, started]
        process = context.Process(
            target=_produce, args=(config, vocab, extractor, key, writer), daemon=True
        )
        process.start()
        writer.close()  # the child's copy is the only writer: its death ends the pipe
        started += 1
        return process, reader

    workers = [start() for _ in range(config.workers)]
    try:
        while True:
            for ready in wait([reader for _, reader in workers]):
                index = next(i for i, (_, r) in enumerate(workers) if r is ready)
                try:
                    yield pickle.loads(ready.recv_bytes())
                except EOFError:
                    process, _ = workers[index]
                    process.join()
                    if started - config.workers >= MAX_RESTARTS:
                        raise RuntimeError(
                            f"{started} synthesis processes died (espeak-ng crashed); giving up"
                        ) from None
                    log(
                        f"a synthesis process died (exit code {process.exitcode}); starting another"
                    )
                    ready.close()
                    workers[index] = start()
    finally:
        for process, reader in workers:
            reader.close()
            process.kill()
            process.join()


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two id sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def greedy_decode(logits: Any, lengths: Any) -> list[list[int]]:
    """Best path: the most likely id per frame, repeats merged, blanks (id 0) dropped."""
    best = logits.argmax(-1).tolist()
    out = []
    for ids, n in zip(best, lengths.tolist(), strict=True):
        merged = [i for k, i in enumerate(ids[:n]) if i and (k == 0 or i != ids[k - 1])]
        out.append(merged)
    return out


def evaluate(model: Any, batches: list[dict]) -> dict[str, float]:
    """Mean CTC loss and phoneme error rate (greedy decoding) on fixed batches."""
    import torch

    model.eval()
    losses, errors, total = [], 0, 0
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "seconds"}
            out = model(**inputs)
            losses.append(float(out.loss))
            frames = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1))
            for hyp, ref in zip(greedy_decode(out.logits, frames), inputs["labels"], strict=True):
                ref = [int(i) for i in ref if i >= 0]
                errors += edit_distance(hyp, ref)
                total += len(ref)
    model.train()
    return {"loss": float(np.mean(losses)), "phoneme_error_rate": errors / max(total, 1)}


def resume(init: Path, vocab: dict[str, int]):
    """The Wav2Vec2BertForCTC of an earlier run and its extractor; a ConfigError if its phoneme
    set is not the one this espeak-ng gives (another espeak-ng version)."""
    from transformers import AutoFeatureExtractor, Wav2Vec2BertForCTC

    try:
        earlier = json.loads((init / "vocab.json").read_text())
        if earlier == vocab:
            return (
                Wav2Vec2BertForCTC.from_pretrained(init),
                AutoFeatureExtractor.from_pretrained(init),
            )
    except Exception as err:  # safetensors' own error (a corrupt file) is not an OSError
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ConfigError(
            f"--init {init}: its vocab.json, weights or extractor cannot be read ({first}); "
            "give the --out folder of a complete `voxclass pretrain` run"
        ) from None
    raise ConfigError(
        f"--init {init}: its {len(earlier)} phonemes are not the {len(vocab)} this "
        "espeak-ng says; pretrain from scratch (without --init)"
    )


def build(config: PretrainConfig, vocab_size: int):
    """A fresh Wav2Vec2BertForCTC with the preset's encoder, and the preset's extractor."""
    from transformers import Wav2Vec2BertForCTC

    model_config, extractor = preset_config(config.preset)
    model_config.vocab_size = vocab_size
    model_config.pad_token_id = 0  # the CTC blank
    model_config.ctc_loss_reduction = "mean"
    model_config.ctc_zero_infinity = True  # a clip said too fast for its frames: no inf loss
    model_config.final_dropout = 0.1
    return Wav2Vec2BertForCTC(model_config), extractor


def train_step(model: Any, optimizer: Any, batch: dict) -> float:
    """One optimizer step on a batch from `collate`; returns its CTC loss."""
    import torch

    loss = model(**{k: v for k, v in batch.items() if k != "seconds"}).loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def pretrain(config: PretrainConfig, log=print, command: str | None = None) -> dict:
    """Pretrain and write OUT (through a temporary folder beside it); returns the summary.
    `command`: the command line that asked for it, for the model card."""
    import torch

    earlier = check(config)
    torch.manual_seed(config.seed)
    espeak = Espeak()
    voices = Voices.of(espeak)
    vocab = phoneme_vocabulary(espeak, voices.accents, word_list(VOCAB_WORDS)[0])
    if earlier is None:
        model, extractor = build(config, len(vocab))
    else:
        model, extractor = resume(Path(config.init), vocab)
    rate = extractor.sampling_rate
    seeds = [*(earlier["seeds"] if earlier else []), config.seed]
    validation_rng = np.random.default_rng([seeds[0], 2])
    make = ClipMaker(config, vocab, rate)
    shortest = min_samples(extractor, sampling_rate=rate)
    validation = [
        collate(extractor, [make(validation_rng) for _ in range(16)], rate, shortest)
        for _ in range(math.ceil(config.validation_clips / 16))
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    budget = (config.time_budget_minutes or math.inf) * 60
    target = config.hours * 3600
    start = last_eval = time.perf_counter()
    heard = 0.0
    step = 0
    losses: list[float] = []
    history = [{"step": 0, "hours": 0.0, **evaluate(model, validation)}]
    log(f"step 0: validation {history[-1]}")
    model.train()
    for batch in _stream(config, vocab, extractor, log):
        progress = max(heard / target, (time.perf_counter() - start) / budget)
        if progress >= 1:
            break
        warm = min(1.0, (step + 1) / config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * warm * 0.5 * (1 + math.cos(math.pi * progress))
        heard += batch["seconds"]
        losses.append(train_step(model, optimizer, batch))
        step += 1
        if time.perf_counter() - last_eval >= config.eval_minutes * 60:
            last_eval = time.perf_counter()
            history.append(
                {
                    "step": step,
                    "hours": heard / 3600,
                    "train_loss": float(np.mean(losses[-50:])),
                    **evaluate(model, validation),
                }
            )
            log(f"step {step}: {json.dumps(history[-1])}")
    seconds = time.perf_counter() - start
    final = {"step": step, "hours": heard / 3600, **evaluate(model, validation)}
    if losses:
        final["train_loss"] = float(np.mean(losses[-50:]))
    history.append(final)
    log(f"done: {json.dumps(final)}")
    command = command or command_line(config)
    summary = {
        "command": command,
        "commands": [*(earlier["commands"] if earlier else []), command],
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "earlier": earlier,
        "seeds": seeds,
        "steps": step,
        "hours_heard": heard / 3600,
        "total_hours_heard": heard / 3600 + (earlier["hours_heard"] if earlier else 0.0),
        "clips": step * config.batch_size,
        "wall_seconds": seconds,
        "final": final,
        "history": history,
        "voices": {"accents": voices.accents, "variants": voices.variants},
        "phonemes": len(vocab),
        "parameters": sum(p.numel() for p in model.parameters()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads",
    }
    write(config, model, extractor, vocab, summary)
    return summary


def write(config: PretrainConfig, model: Any, extractor: Any, vocab: dict, summary: dict) -> None:
    """The model directory, written beside OUT and renamed into place: a reader never sees a
    half-written one, and an earlier pretrain output is replaced whole."""
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.config.voxclass = {"pretrained_by": "voxclass pretrain", "phonemes": len(vocab)}
        model.save_pretrained(tmp)
        extractor.save_pretrained(tmp)
        (tmp / "vocab.json").write_text(json.dumps(vocab, indent=1))
        (tmp / MARKER).write_text(json.dumps(summary, indent=2))
        (tmp / "README.md").write_text(card(summary))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def command_line(config: PretrainConfig) -> str:
    """The command that makes `config`'s run (for a run started from Python)."""
    c = config
    return (
        f"voxclass pretrain --out {c.out} --hours {c.hours:g}"
        + (f" --time-budget-minutes {c.time_budget_minutes:g}" if c.time_budget_minutes else "")
        + (f" --init {c.init}" if c.init else f" --preset {c.preset}")
        + f" --seed {c.seed}"
    )


def card(summary: dict) -> str:
    """A model card saying exactly how the encoder was made."""
    c, final = summary["config"], summary["final"]
    commands = "\n    ".join(summary["commands"])
    earlier = summary["earlier"]
    preset = earlier["preset"] if earlier else c["preset"]
    heard = f"{summary['hours_heard']:.2f} hours of speech" + (
        f" (after {earlier['hours_heard']:.2f} hours in the runs before)" if earlier else ""
    )
    return f"""---
library_name: transformers
tags: [audio, speech, ctc, phonemes, voxclass, synthetic-data]
---
# Speech encoder pretrained by `voxclass pretrain`

A Wav2Vec2-BERT conformer (`{preset}` preset: {summary["parameters"]:,} parameters) trained
with CTC to recognise the {summary["phonemes"] - 2} espeak-ng phonemes of synthetic English
speech. Use it as a backbone: `voxclass train --model THIS_FOLDER` puts a new classification
head on the encoder.

## How it was made

    {commands}

- Data: {summary["clips"]:,} clips, {heard}, each synthesized
  once, on the fly, by espeak-ng (espeakng-loader wheel): random sequences of up to
  {c["max_words"]} words from the {c["vocabulary_words"]:,} most frequent English words
  (wordfreq) and numbers; every English accent
  ({len(summary["voices"]["accents"])}) and human-like voice variant
  ({len(summary["voices"]["variants"])}), random rate, pitch and pitch range; telephone band,
  wideband or room reverberation; speed perturbation, gain and noise. 8 kHz.
- Targets: the phonemes espeak-ng says (`espeak_TextToPhonemes`), stress marks removed.
- Training: {summary["steps"]:,} steps of {c["batch_size"]} clips, AdamW, peak learning
  rate {c["learning_rate"]:g}, cosine schedule; {summary["wall_seconds"] / 60:.1f} minutes on
  {summary["machine"]}.
- Result on {c["validation_clips"]} fixed validation clips: phoneme error rate
  {final["phoneme_error_rate"]:.3f} (greedy CTC decoding), CTC loss {final["loss"]:.3f}.

The voices are synthetic: what the encoder learned about real speakers is measured by fine-tuning
(see voxclass's README, `benchmarks/pretrained_vs_scratch.py`), not by the figures above.
"""
