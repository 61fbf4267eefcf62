"""unseen_speakers.py with the added synthetic words read from a folder (tts_digits.py)."""
import sys, runpy
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import unseen_speakers as us
folder = Path(sys.argv.pop(1))
us.digit_words = lambda out, per_label: us.synth_rows(folder)
sys.argv[0] = "unseen_speakers.py"
us.main()
