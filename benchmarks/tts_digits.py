"""FSDD-style digit words from Debian's flite and festival voices, in `voxclass synth`'s layout
(train and validation splits, metadata.csv), for the leave-one-speaker-out trial of those
engines (apt-get install flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts):

    python benchmarks/tts_digits.py OUT 150 flite,festival
    python benchmarks/unseen_speakers_tts.py OUT --preset tiny-fine --variants plus_synth --epochs 10
"""
import csv, os, random, subprocess, sys, tempfile
from concurrent.futures import ThreadPoolExecutor
import numpy as np, soundfile as sf, soxr
from voxclass.synth import apply_channel
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
FLITE = ["kal16", "awb", "rms", "slt"]
FEST = ["kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"]
out, per_label, engines = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
voices = ([("flite", v) for v in FLITE] if "flite" in engines else []) + ([("festival", v) for v in FEST] if "festival" in engines else [])
os.makedirs(out, exist_ok=True)
def make(job):
    i, digit, split = job
    rng = random.Random(i); nrng = np.random.default_rng(i)
    engine, voice = voices[i % len(voices)]
    word = rng.choice([WORDS[digit], WORDS[digit] + ".", WORDS[digit] + "!", WORDS[digit] + "?"])
    stretch = rng.uniform(0.8, 1.25)
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        if engine == "flite":
            f0 = rng.uniform(90, 150) if voice != "slt" else rng.uniform(150, 230)
            subprocess.run(["flite", "-voice", voice, "-t", word, "-o", tmp.name, "--setf", f"duration_stretch={stretch}", "--setf", f"int_f0_target_mean={f0}"], check=True, capture_output=True)
        else:
            subprocess.run(["text2wave", "-o", tmp.name, "-eval", f"(voice_{voice})", "-eval", f"(Parameter.set 'Duration_Stretch {stretch})"], input=word.encode(), check=True, capture_output=True)
        wave, rate = sf.read(tmp.name, dtype="float32")
    warp = rng.uniform(0.88, 1.12)
    wave = soxr.resample(wave, rate, int(rate * warp)).astype(np.float32)  # played at `rate`
    wave = apply_channel(wave, rate, 8000, rng.choice(["wideband", "wideband", "room"]), -60.0, nrng)
    name = f"{split}/{digit}/{digit}_{voice}_{i}.wav"
    os.makedirs(os.path.dirname(f"{out}/{name}"), exist_ok=True)
    sf.write(f"{out}/{name}", wave, 8000, subtype="PCM_16")
    return {"file_name": name, "label": str(digit), "text": word, "voice": f"{engine}-{voice}", "split": split}
jobs = [(i, i % 10, "train" if (i // 10) % 11 else "validation") for i in range(per_label * 10 * 11 // 10)]
with ThreadPoolExecutor(4) as ex:
    rows = list(ex.map(make, jobs))
with open(f"{out}/metadata.csv", "w", newline="") as f:
    w = csv.DictWriter(f, ["file_name", "label", "text", "voice", "split"]); w.writeheader(); w.writerows(rows)
print(len(rows), sum(r["split"] == "train" for r in rows))
