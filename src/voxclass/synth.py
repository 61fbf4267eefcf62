"""Synthetic MInDS-14-style spoken banking requests, so the whole loop runs offline.

Speech comes from espeak-ng as shipped in the `espeakng-loader` wheel (no system packages),
driven through its C API with ctypes. Each clip is a customer's request in one of the 14
MInDS-14 intents, said by an English accent + voice variant at a varied rate and pitch, then
passed through a telephone channel (300-3400 Hz band, 8 kHz mono, light noise) like MInDS-14.

Test clips use voice variants never used in train, so the test score says something about
speakers the model has not heard. Validation clips are new clips by the training voices: training
picks its best epoch on them, so the test split is used once, for the final figure.
"""

from __future__ import annotations

import csv
import ctypes
import os
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, sosfilt

INTENTS: dict[str, list[str]] = {
    "abroad": [
        "hi I'm going to {place} next week can I use my card over there",
        "I'm travelling to {place} do I need to tell you before I go",
        "will my debit card work abroad in {place}",
        "I want to let the bank know I'll be overseas in {place}",
        "hello yes what are the fees for using my card abroad",
        "can I take money out of a cash machine in {place}",
        "I'm on holiday in {place} and I need to use my card",
        "how do I set up a travel notice for {place}",
        "do you charge for foreign transactions when I'm abroad",
        "I'll be working in {place} for a month will my account still work",
        "I need to pay for things in {place} with my card is that okay",
        "my son is studying in {place} can he use the card over there",
        "what exchange rate do you use when I spend money abroad",
        "um I'm flying to {place} tomorrow I'd like to use my card there",
        "can I withdraw euros with my card when I'm in {place}",
    ],
    "address": [
        "I moved house and I need to change my address",
        "hi I want to update the address on my account",
        "how do I change my home address with you",
        "I've just moved to {place} can you update my details",
        "my address is wrong on my statements can I fix it",
        "I need to give you my new postal address",
        "hello I'd like to update where you send my letters",
        "can I change my address online or do I have to call",
        "we relocated to {place} last month I need to change the address",
        "please update my billing address",
        "um yeah my address has changed how do I tell the bank",
        "I want my cards sent to a new address",
        "where can I update my contact address in the app",
        "I moved out of my flat so my address needs changing",
        "can you change the correspondence address on my account",
    ],
    "app_error": [
        "your app keeps crashing when I try to log in",
        "hi the mobile app isn't working it shows an error",
        "I can't open the banking app on my phone",
        "the app says something went wrong every time I pay someone",
        "the app freezes when I look at my balance",
        "I get an error code in the app when I transfer money",
        "hello the app won't let me sign in since the update",
        "why does the banking app keep logging me out",
        "the app shows a blank screen after I enter my password",
        "I updated the app and now it doesn't work at all",
        "um there's a bug in your app it won't load my account",
        "the app is stuck on the loading screen",
        "I can't scan cheques in the app it just crashes",
        "your app gives me a network error but my internet is fine",
        "the fingerprint login in the app has stopped working",
    ],
    "atm_limit": [
        "what's the most I can take out of a cash machine in one day",
        "I need to withdraw {amount} can I do that at an ATM",
        "hi can you raise my daily ATM limit",
        "the cash machine won't give me more than {amount}",
        "how much cash can I withdraw per day",
        "I'd like to increase my withdrawal limit to {amount}",
        "what's my daily cash withdrawal limit",
        "the ATM said I reached my limit how do I change it",
        "hello is there a limit on how much I can take out at the ATM",
        "can I take out {amount} in cash today",
        "um the machine only let me withdraw part of what I asked for",
        "I need a higher cash limit for this week",
        "why is my ATM limit so low",
        "can you lower my cash machine limit for safety",
        "what's the maximum withdrawal at an ATM abroad",
    ],
    "balance": [
        "hi I'd like to check the balance on my account",
        "how much money do I have in my current account",
        "can you tell me my balance please",
        "what's the balance on my savings account",
        "I want to know how much is in my account",
        "hello could you read me my account balance",
        "um how much do I have left in my account",
        "I need to check my balance before I pay {company}",
        "what's my available balance right now",
        "how do I see my balance without logging in",
        "is there enough money in my account for {amount}",
        "can I get my balance by text message",
        "what is the current balance on my joint account",
        "I'd like to hear my balance",
        "how much money is in my checking account today",
    ],
    "business_loan": [
        "I run a small business and I'd like to apply for a loan",
        "hi what business loans do you offer",
        "I need {amount} to expand my company can you help",
        "how do I apply for a loan for my shop",
        "what interest rate do you charge on business loans",
        "hello I'm starting a company and need financing",
        "can my business borrow {amount} from you",
        "um I want to talk to someone about a commercial loan",
        "what do I need to apply for a business loan",
        "I need a loan to buy equipment for my business",
        "do you lend to new businesses",
        "how long does a business loan application take",
        "I'd like to discuss a loan for my restaurant",
        "can I get a business line of credit",
        "my company {company} needs a loan of {amount}",
    ],
    "card_issues": [
        "my card isn't working",
        "hi my card got declined at {company} but I have money",
        "the chip on my card is damaged",
        "I think my card is broken it won't go in the machine",
        "my card was swallowed by the cash machine",
        "hello my contactless payments stopped working",
        "I lost my card what should I do",
        "my card has expired and the new one hasn't arrived",
        "um my card keeps getting rejected online",
        "my card was stolen yesterday",
        "the card you sent me doesn't work",
        "I need a replacement card my old one is bent",
        "my card PIN isn't being accepted",
        "why was my card declined at {company}",
        "the magnetic strip on my card seems to be faulty",
    ],
    "cash_deposit": [
        "how do I deposit cash into my account",
        "hi I want to pay in {amount} in cash",
        "can I deposit money at a cash machine",
        "where can I put cash into my account",
        "hello I have some cash I'd like to deposit",
        "do you have a branch where I can pay in cash",
        "um can I deposit coins at the counter",
        "I want to put {amount} into my savings account",
        "is there a limit on cash deposits",
        "can I pay cash in at the post office",
        "how long does a cash deposit take to show up",
        "I need to deposit my wages in cash",
        "can someone else deposit cash into my account",
        "I'd like to make a cash deposit today",
        "which machines accept cash deposits near {place}",
    ],
    "direct_debit": [
        "I want to set up a direct debit",
        "hi how do I cancel a direct debit to {company}",
        "can I change the date of my direct debit",
        "there's a direct debit I don't recognise on my account",
        "hello I need to set up a direct debit for my rent",
        "how do I see all my direct debits",
        "um {company} took a direct debit twice this month",
        "I'd like to stop a direct debit",
        "can I set up a direct debit for {amount} a month",
        "my direct debit to {company} failed why",
        "how do I amend a direct debit",
        "I need to cancel all my direct debits",
        "when will my direct debit be taken",
        "can you reverse a direct debit payment",
        "I want {company} to collect by direct debit",
    ],
    "freeze": [
        "I need to freeze my account right now",
        "hi can you block my card I think someone's using it",
        "please freeze my card I lost it",
        "how do I temporarily freeze my card",
        "hello I want to lock my account",
        "um there are payments I didn't make please freeze everything",
        "can I freeze my card in the app",
        "I'd like to put a hold on my account",
        "block my card immediately please",
        "I want to unfreeze my card",
        "someone stole my wallet freeze my cards",
        "how do I stop all payments from my account",
        "can you suspend my debit card",
        "I need my account frozen for fraud",
        "please put a block on my credit card",
    ],
    "high_value_payment": [
        "I need to make a large payment of {amount}",
        "hi I want to transfer {amount} to another bank",
        "how do I send a high value payment",
        "I'm buying a house and need to pay {amount}",
        "hello can I make a payment over my daily limit",
        "um I need to pay {amount} to {company} today",
        "what's the limit for a single transfer",
        "I'd like to send a big sum of money",
        "my payment of {amount} was blocked",
        "how do I pay for a car costing {amount}",
        "can I raise my transfer limit for one payment",
        "I have to transfer a large amount urgently",
        "I need to send {amount} abroad",
        "is there extra security for large payments",
        "I want to make a same day payment of {amount}",
    ],
    "joint_account": [
        "I want to open a joint account with my partner",
        "hi how do I add my wife to my account",
        "can I open a joint account online",
        "hello my husband and I want a shared account",
        "how do I remove someone from a joint account",
        "um what do we need to open a joint account",
        "can three people have a joint account",
        "I'd like to turn my account into a joint account",
        "my partner and I want to combine our accounts",
        "can I add my daughter to my account",
        "how do joint accounts work",
        "we want to close our joint account",
        "can both of us have a card on the joint account",
        "I need to take my ex off our joint account",
        "what happens to a joint account if we split up",
    ],
    "latest_transactions": [
        "can you tell me my latest transactions",
        "hi what were my last few payments",
        "I want to check my recent transactions",
        "hello what have I spent this week",
        "um can you read me the last five transactions",
        "did my payment to {company} go through",
        "I'd like to see my recent activity",
        "what came out of my account yesterday",
        "show me my most recent card payments",
        "has my salary been paid in",
        "can I get a list of this month's transactions",
        "what was the last payment from my account",
        "I want to review my recent spending",
        "did {company} take {amount} from my account",
        "what are my pending transactions",
    ],
    "pay_bill": [
        "I want to pay a bill",
        "hi how do I pay my {company} bill",
        "can I pay my electricity bill online",
        "hello I need to pay {amount} to {company}",
        "um how do I set up a new payee to pay a bill",
        "I'd like to pay my phone bill",
        "can I pay my credit card bill from this account",
        "how do I pay my water bill",
        "I need to pay my council tax",
        "can I schedule a bill payment for next week",
        "I want to pay my gas bill of {amount}",
        "how do I pay an invoice from {company}",
        "can you help me pay my internet bill",
        "I have a bill of {amount} to pay today",
        "please pay my {company} bill from my current account",
    ],
}

PLACES = [
    "Spain",
    "France",
    "Japan",
    "Canada",
    "Mexico",
    "Italy",
    "Germany",
    "Thailand",
    "New York",
    "London",
    "Dublin",
    "Sydney",
    "Portugal",
    "Greece",
    "Brazil",
    "Kenya",
]
COMPANIES = [
    "Amazon",
    "Netflix",
    "Vodafone",
    "British Gas",
    "Tesco",
    "Uber",
    "Spotify",
    "Verizon",
    "Comcast",
    "Apple",
    "Walmart",
    "Target",
    "Shell",
    "Costco",
]
AMOUNTS = [
    "fifty pounds",
    "two hundred dollars",
    "five hundred pounds",
    "a thousand dollars",
    "three thousand pounds",
    "ten thousand dollars",
    "twenty five thousand pounds",
    "eight hundred dollars",
    "one hundred and fifty pounds",
    "sixty thousand dollars",
]

# English accents that espeak-ng ships; combined with voice variants they make the speakers.
ACCENTS = [
    "en-us",
    "en-gb-x-rp",
    "en-029",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-us-nyc",
    "en-gb-x-gbcwmd",
    "en",
]


def _is_human_like(variant_text: str) -> bool:
    """Callers are people: skip variants that warp the first three formants beyond 75-130 %
    (vocal tracts no adult has), use the Klatt synthesizer's robotic timbre, add heavy echo,
    or replace voicing (whisper, croak)."""
    text = variant_text.lower()
    for match in re.finditer(r"^\s*formant\s+([1-3])\s+(\d+)", text, re.M):
        if not 75 <= int(match.group(2)) <= 130:
            return False
    echo = re.search(r"^\s*echo\s+\d+\s+(\d+)", text, re.M)
    return not (re.search(r"^\s*klatt\b", text, re.M) or (echo and int(echo.group(1)) > 20))


def _variants(data_path: str) -> list[str]:
    """Human-like voice variants shipped by espeak-ng, sorted: the same list on every machine."""
    folder = os.path.join(data_path, "voices", "!v")
    return [
        name
        for name in sorted(os.listdir(folder))
        if " " not in name
        and name not in ("croak", "whisper", "whisperf")
        and _is_human_like(open(os.path.join(folder, name), errors="ignore").read())
    ]


@dataclass
class SynthConfig:
    """What `voxclass synth` makes."""

    out: Path
    """Output folder: OUT/{train,validation,test}/<intent>/*.wav and OUT/metadata.csv."""
    train_per_intent: int = 120
    """Training clips per intent."""
    test_per_intent: int = 30
    """Test clips per intent (spoken by voices never used in train)."""
    validation_per_intent: int = 10
    """Validation clips per intent (training voices, new clips; for choosing the best epoch)."""
    test_voice_fraction: float = 0.25
    """Fraction of the voice variants reserved for the test split."""
    seed: int = 0
    """Same seed, same files, bit for bit."""
    sampling_rate: int = 8000
    """Stored rate; 8 kHz telephone audio like MInDS-14."""
    noise_db: float = -45.0
    """Level of the background noise added on the line (dBFS, RMS)."""

    @property
    def clips(self) -> int:
        """How many clips the data set holds, all splits together."""
        per_intent = self.train_per_intent + self.validation_per_intent + self.test_per_intent
        return len(INTENTS) * per_intent


class Espeak:
    """Minimal ctypes binding to libespeak-ng from the espeakng-loader wheel (synchronous mode)."""

    _RATE, _PITCH, _RANGE = 1, 3, 4

    def __init__(self) -> None:
        import espeakng_loader

        self.data_path = espeakng_loader.get_data_path()
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.sampling_rate = self._lib.espeak_Initialize(2, 0, self.data_path.encode(), 0)
        if self.sampling_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
        )
        self._callback = callback_type(self._collect)  # kept alive: C holds a pointer to it
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, _events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def say(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, seed: int = 0
    ) -> np.ndarray:
        """Speak `text`; float32 mono at `self.sampling_rate`."""
        # espeak-ng draws voice flutter and breath noise from its own generator: seed it from
        # the clip so that the random part is the clip's own.
        self._lib.espeak_ng_SetRandSeed(seed)
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((self._RATE, rate), (self._PITCH, pitch), (self._RANGE, pitch_range)):
            self._lib.espeak_SetParameter(param, value, 0)
        self._chunks.clear()
        data = text.encode()
        self._lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 1, None, None)
        self._lib.espeak_Synchronize()
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def telephone_channel(
    wave: np.ndarray, rate: int, out_rate: int, noise_db: float, rng: np.random.Generator
) -> np.ndarray:
    """Band-limit to 300-3400 Hz, resample to `out_rate`, level to a random gain, add noise."""
    sos = butter(4, [300, 3400], btype="bandpass", fs=rate, output="sos")
    wave = soxr.resample(sosfilt(sos, wave), rate, out_rate).astype(np.float32)
    wave = np.concatenate(
        [
            np.zeros(int(rng.uniform(0.05, 0.3) * out_rate), np.float32),
            wave,
            np.zeros(int(rng.uniform(0.05, 0.3) * out_rate), np.float32),
        ]
    )
    peak = np.abs(wave).max() or 1.0
    wave = wave / peak * 10 ** (rng.uniform(-12, -3) / 20)
    wave += rng.standard_normal(wave.size).astype(np.float32) * 10 ** (noise_db / 20)
    return np.clip(wave, -1.0, 1.0)


def fill_slots(template: str, rng: random.Random) -> str:
    return template.format(
        place=rng.choice(PLACES), company=rng.choice(COMPANIES), amount=rng.choice(AMOUNTS)
    )


def split_voices(variants: list[str], test_fraction: float, seed: int) -> tuple[list, list]:
    """Partition voice variants into train and test sets (disjoint, deterministic)."""
    shuffled = variants[:]
    random.Random(seed).shuffle(shuffled)
    n_test = max(1, round(len(shuffled) * test_fraction))
    return sorted(shuffled[n_test:]), sorted(shuffled[:n_test])


def plan(config: SynthConfig, variants: list[str]) -> Iterator[dict]:
    """Every clip to make: intent, text, voice and prosody, drawn from one seeded generator."""
    rng = random.Random(config.seed)
    train_variants, test_variants = split_voices(variants, config.test_voice_fraction, config.seed)
    for split, count, pool in (
        ("train", config.train_per_intent, train_variants),
        ("test", config.test_per_intent, test_variants),
        # after test, so that adding validation clips left the train and test clips unchanged
        ("validation", config.validation_per_intent, train_variants),
    ):
        for intent, templates in INTENTS.items():
            for i in range(count):
                yield {
                    "split": split,
                    "intent": intent,
                    "file_name": f"{split}/{intent}/{intent}_{i:04d}.wav",
                    "text": fill_slots(templates[i % len(templates)], rng),
                    "voice": f"{rng.choice(ACCENTS)}+{rng.choice(pool)}",
                    "rate": rng.randint(130, 210),
                    "pitch": rng.randint(25, 75),
                    "range": rng.randint(20, 80),
                    "seed": rng.randrange(2**31),
                }


def synthesize(config: SynthConfig, progress=None) -> dict:
    """Write the dataset; return counts and speed. Files appear only once complete."""
    espeak = Espeak()
    rows = list(plan(config, _variants(espeak.data_path)))
    config.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for row in rows:
        speech = espeak.say(
            row["text"], row["voice"], row["rate"], row["pitch"], row["range"], row["seed"]
        )
        wave = telephone_channel(
            speech,
            espeak.sampling_rate,
            config.sampling_rate,
            config.noise_db,
            np.random.default_rng(row["seed"]),
        )
        path = config.out / row["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.wav")
        sf.write(tmp, wave, config.sampling_rate, subtype="PCM_16")
        tmp.replace(path)
        if progress:
            progress()
    seconds = time.perf_counter() - start
    metadata = config.out / "metadata.csv"
    tmp = metadata.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(
            f, ["file_name", "intent", "text", "voice", "split"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(metadata)
    return {"clips": len(rows), "seconds": seconds, "clips_per_second": len(rows) / seconds}
