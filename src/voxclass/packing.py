"""A chunk of decoded audio as one Arrow row: what the Ray engine's decode tasks hand to its
classifying actors (`scale.run_ray`).

Kept apart from `scale.py` on purpose: Ray imports a task's module in every worker process
that runs it, and this one needs only soundfile, soxr and pyarrow. Importing `voxclass.scale`
pulls in torch and transformers, about 5 s of CPU per decode process on a 2-core machine.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .audio import AudioError, load_audio


def decode_chunk(batch: dict[str, np.ndarray], listing: str, rate: int, root: str) -> pa.Table:
    """Ray task: pending chunk `batch["group"]` (a row group of the `listing` Parquet file),
    decoded at `rate` and packed in one row: `samples` end to end, `lengths` (-1 for a bad
    file) and `errors` (its reason, else None). Relative sources are read from `root`, the
    driver's working folder."""
    group = int(batch["group"][0])
    sources = pq.ParquetFile(listing).read_row_group(group).column("source").to_pylist()
    waves, lengths, errors = [], [], []
    for source in sources:
        try:
            wave = load_audio(os.path.join(root, source), rate)
            waves.append(wave)
            lengths.append(len(wave))
            errors.append(None)
        except AudioError as err:
            lengths.append(-1)
            errors.append(err.reason)
    samples = np.concatenate(waves) if waves else np.zeros(0, np.float32)
    return pa.table(
        {
            "name": [str(batch["name"][0])],
            "sources": [sources],
            "samples": pa.ListArray.from_arrays([0, len(samples)], pa.array(samples)),
            "lengths": [lengths],
            "errors": [errors],
        }
    )


def unpack(chunks: pa.Table) -> list[tuple[dict, list[np.ndarray | None]]]:
    """Each packed row of `decode_chunk`'s output: its other columns, and its waves (None for
    a bad file)."""
    packed = chunks.column("samples").combine_chunks()
    unpacked = []
    for row, samples in zip(chunks.drop_columns(["samples"]).to_pylist(), packed, strict=True):
        samples = samples.values.to_numpy(zero_copy_only=False)
        ends = np.cumsum([max(n, 0) for n in row["lengths"]])
        waves = [
            samples[end - n : end] if n >= 0 else None
            for n, end in zip(row["lengths"], ends, strict=True)
        ]
        unpacked.append((row, waves))
    return unpacked
