"""Batch inference at scale: resumable Parquet shards, written by one process, by every rank of
`torchrun`, or by a Ray Data pipeline on a cluster.

The shard format is the contract that makes runs resumable and exactly-once:

- The input listing (`predict.iter_inputs`: files, folders, manifests, streamed) is cut into
  chunks of `chunk_size` inputs, in order. Chunk i becomes `part-{i:06d}-{key}.parquet`, where
  `key` hashes the chunk's sources and the settings that change results (model, top-k, window,
  hop, chunk size). One row per input: source, labels, scores, duration, error (null when it
  was classified; a bad file is a row with its reason and no labels).
- A shard is written to a hidden temp file and renamed: it exists complete or not at all. A
  rerun skips chunks whose shard exists; a retried task rewrites the same name with the same
  rows; so every input appears exactly once. A shard of the same chunk with another key means
  the listing or settings changed: that is refused, never mixed.
- When every shard exists, `_SUCCESS.json` (rows, errors, shard names) is written once. Parquet
  readers skip `_` and `.` files: `pandas.read_parquet(DIR)` gives the table.

The engines differ only in who classifies which pending chunk: `run_shards` takes chunk
pending[rank::world] (torchrun sets RANK/WORLD_SIZE; rank 0 finishes after a barrier), and
`run_ray` hands the pending chunks to a Ray Data pipeline: decoding as CPU tasks, then an
actor pool of `RayPredictor`s (model loaded once per actor) that write the shards.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .audio import AudioError
from .classifier import Classifier, Prediction
from .config import ConfigError, write_atomic
from .data import DataError
from .packing import decode_chunk, unpack
from .predict import iter_inputs, run

SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("labels", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float64())),
        ("duration", pa.float64()),
        ("error", pa.string()),
    ]
)
SUCCESS = "_SUCCESS.json"
LISTING = ".pending-listing.parquet"  # the Ray engine's spill of the pending chunks' sources
SHARD = re.compile(r"part-(\d{6})-([0-9a-f]{12})\.parquet")
TEMP = re.compile(r"\.(part-\d{6}-[0-9a-f]{12}\.parquet|_SUCCESS\.json)\.tmp-.*")
RAY_INSTALL = "pip install 'voxclass[ray]'"


@dataclass(frozen=True)
class ShardSettings:
    """What a shard's rows depend on (batch size and engine do not change them)."""

    model: str
    top_k: int = 5
    window: float | None = None
    hop: float | None = None
    chunk_size: int = 500

    def shard_name(self, index: int, sources: list[str]) -> str:
        digest = hashlib.sha1(json.dumps([self.__dict__, sources]).encode()).hexdigest()
        return f"part-{index:06d}-{digest[:12]}.parquet"


@dataclass(frozen=True)
class Summary:
    rows: int
    errors: int
    shards: int


# ---------------------------------------------------------------------- the shard format


def iter_chunks(inputs: list[str], chunk_size: int) -> Iterator[list[str]]:
    """The input listing in consecutive chunks of `chunk_size` sources (the last may be short)."""
    paths = iter_inputs(inputs)
    while chunk := list(islice(paths, chunk_size)):
        yield chunk


def results_table(results: list[Prediction | AudioError]) -> pa.Table:
    """One shard row per result: a Prediction's top labels, or an AudioError's reason."""
    rows = [
        {"source": r.name, "labels": None, "scores": None, "duration": None, "error": r.reason}
        if isinstance(r, AudioError)
        else {"source": r.source, "labels": r.labels, "scores": r.scores,
              "duration": r.duration, "error": None}
        for r in results
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_shard(out: Path, name: str, table: pa.Table) -> None:
    """Write to a hidden temp file in `out`, then rename: readers see all rows or no file."""
    temp = out / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, temp)
    temp.replace(out / name)


def open_out(out: Path) -> dict[int, str]:
    """Create `out` or reuse it when it holds only voxclass shards; the shards already written,
    by chunk index. A folder with anything else in it is refused (nothing the user owns is
    touched)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; shards need a folder (a new or earlier one)")
    out.mkdir(parents=True, exist_ok=True)
    done: dict[int, str] = {}
    for entry in os.scandir(out):
        if match := SHARD.fullmatch(entry.name):
            done[int(match[1])] = entry.name
        elif entry.name not in (SUCCESS, LISTING) and not TEMP.fullmatch(entry.name):
            raise ConfigError(
                f"--out {out}: holds {entry.name}, which voxclass did not write; "
                "give a new or empty folder"
            )
    return done


@dataclass
class Plan:
    names: list[str]
    """Shard name of every chunk, in order."""
    pending: list[int]
    """Chunks without a shard yet."""


def plan(inputs: list[str], out: Path, settings: ShardSettings, spill: Path | None = None) -> Plan:
    """Stream the listing once: name every chunk, check the shards already in `out` belong to
    this listing and these settings, and list what is left. With `spill`, the pending chunks'
    sources are written there, one Parquet row group per pending chunk, so that workers can
    read their chunk without any process holding the whole listing."""
    done = open_out(out)
    names, pending = [], []
    writer = pq.ParquetWriter(spill, pa.schema([("source", pa.string())])) if spill else None
    try:
        for index, sources in enumerate(iter_chunks(inputs, settings.chunk_size)):
            name = settings.shard_name(index, sources)
            names.append(name)
            if index in done and done[index] != name:
                raise ConfigError(_mixed(out, done[index]))
            if index not in done:
                pending.append(index)
                if writer:
                    writer.write_table(pa.table({"source": sources}))
    finally:
        if writer:
            writer.close()
    if stale := sorted(set(done) - set(range(len(names)))):
        raise ConfigError(_mixed(out, done[stale[0]]))
    return Plan(names, pending)


def _mixed(out: Path, name: str) -> str:
    return (
        f"--out {out}: {name} was written for other inputs or settings (model, top-k, window, "
        "hop, chunk size); rerun with the same ones, or give a new folder"
    )


def finish(out: Path, names: list[str]) -> Summary:
    """Check every shard is there, count rows and errors, and write `_SUCCESS.json` once."""
    rows = errors = 0
    for name in names:
        if not (out / name).is_file():
            raise DataError(f"{out / name}: missing after the run; rerun the same command")
        error = pq.read_table(out / name, columns=["error"]).column("error")
        rows += len(error)
        errors += len(error) - error.null_count
    summary = Summary(rows, errors, len(names))
    write_atomic(out / SUCCESS, json.dumps({**summary.__dict__, "files": names}, indent=1))
    for entry in os.scandir(out):  # leftovers of interrupted runs, all written by voxclass
        if entry.name == LISTING or TEMP.fullmatch(entry.name):
            os.remove(entry.path)
    return summary


# ---------------------------------------------------------------------- one process or torchrun


def run_shards(
    model: str,
    inputs: list[str],
    out: Path,
    settings: ShardSettings,
    batch_size: int = 16,
    rank: int = 0,
    world: int = 1,
    barrier: Any = None,
) -> Summary | None:
    """Classify chunks pending[rank::world] into shards; after `barrier()` (all ranks done),
    rank 0 writes `_SUCCESS.json` and returns the summary (other ranks return None)."""
    work = plan(inputs, out, settings)
    mine = set(work.pending[rank::world])
    clf = Classifier.load(model) if mine else None
    for index, sources in enumerate(iter_chunks(inputs, settings.chunk_size)):
        if index not in mine:
            continue
        if settings.shard_name(index, sources) != work.names[index]:
            raise DataError(f"the inputs changed while running (chunk {index}); rerun")
        results = run(clf, sources, settings.top_k, batch_size, settings.window, settings.hop)
        write_shard(out, work.names[index], results_table(results))
    if barrier is not None:
        barrier()
    return finish(out, work.names) if rank == 0 else None


def run_torchrun(model: str, inputs: list[str], out: Path, settings: ShardSettings,
                 batch_size: int = 16) -> Summary | None:  # fmt: skip
    """`run_shards` as rank RANK of WORLD_SIZE (set by torchrun); a gloo barrier joins them."""
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return run_shards(model, inputs, out, settings, batch_size)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        return run_shards(model, inputs, out, settings, batch_size, rank, world, dist.barrier)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------- Ray


class RayPredictor:
    """A Ray Data callable class: put voxclass into your own pipeline.

        ds = ray.data.from_items([{"source": p} for p in paths])
        ds = ds.map_batches(RayPredictor, fn_constructor_kwargs={"model": "model/"},
                            compute=ray.data.ActorPoolStrategy(size=4), batch_size=64)

    Each actor loads the model once (a model directory or an ONNX export), on CUDA when Ray
    gave the actor a GPU (`num_gpus=1` in `map_batches`), else on the CPU; `device` overrides
    that. A batch needs a `source` column of audio paths every worker can read; it comes back
    with `labels` and `scores` (top-k, best first), `duration` (seconds) and `error` (None,
    or why the file could not be used; its labels are then empty).
    """

    def __init__(self, model: str, top_k: int = 5, batch_size: int = 16,
                 window: float | None = None, hop: float | None = None,
                 device: str | None = None):  # fmt: skip
        if device is None:
            import ray

            device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.classifier = Classifier.load(model, device)
        self.options = {"top_k": top_k, "batch_size": batch_size, "window": window, "hop": hop}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sources = [str(s) for s in batch["source"]]
        results = run(self.classifier, sources, **self.options)
        columns = results_table(results).drop_columns(["source"]).to_pydict()
        return {**batch, **{k: _objects(v) for k, v in columns.items()}}

    def classify(self, sources: list[str], waves: list[np.ndarray | None],
                 errors: list[str | None]) -> list[Prediction | AudioError]:  # fmt: skip
        """Results for already-decoded inputs (a wave at the model's rate, or an error)."""
        good = [i for i, wave in enumerate(waves) if wave is not None]
        rate = self.classifier.sampling_rate
        predictions = self.classifier.predict_batch(
            [waves[i] for i in good], sampling_rate=rate, **self.options
        )
        results: list[Prediction | AudioError] = [
            AudioError(source, error or "") for source, error in zip(sources, errors, strict=True)
        ]
        for i, prediction in zip(good, predictions, strict=True):
            prediction.source = sources[i]
            results[i] = prediction
        return results


def _objects(values: list) -> np.ndarray:
    """A numpy object column (Ray Data's form for ragged and nullable values)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


class _ShardWriter:
    """Actor: classifies decoded chunks with a `RayPredictor` and writes their shards."""

    def __init__(self, out: str, **predictor: Any):
        self.out = Path(out)
        self.predictor = RayPredictor(**predictor)

    def __call__(self, chunks: pa.Table) -> dict[str, np.ndarray]:
        for row, waves in unpack(chunks):
            results = self.predictor.classify(row["sources"], waves, row["errors"])
            write_shard(self.out, row["name"], results_table(results))
        return {"name": np.asarray(chunks.column("name").to_pylist())}


def run_ray(
    model: str,
    inputs: list[str],
    out: Path,
    settings: ShardSettings,
    batch_size: int = 16,
    workers: int = 1,
    address: str | None = None,
) -> Summary:
    """The pending chunks through Ray Data on the cluster at `address` ("auto", "ray://HOST:
    PORT"; None starts a local instance, or uses the one this process already joined):
    `map_batches` decode tasks, then `workers` actors that classify and write the shards."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray: {RAY_INSTALL}") from None
    rate = Classifier.load(model).sampling_rate  # a bad model fails here, before any cluster
    spill = out / LISTING
    work = plan(inputs, out, settings, spill=spill)
    if work.pending:
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        try:
            _ray_pipeline(ray, work, spill, rate, model, out, settings, batch_size, workers)
        finally:
            if started:
                ray.shutdown()
    return finish(out, work.names)


def actor_resources(cluster: dict[str, float], workers: int, onnx: bool) -> dict[str, float]:
    """What each of the `workers` classifying actors asks Ray for, given the cluster's
    resources (`ray.cluster_resources()`). ¾ CPU: the decode tasks take the rest of a core.
    On a cluster with GPUs, a share of one GPU: a whole GPU each when there are as many GPUs as
    workers, else 1/k of one so that k actors share each GPU and all `workers` fit. An ONNX
    export runs on the CPU, so it asks for none."""
    gpus = 0 if onnx else int(cluster.get("GPU", 0))
    if not gpus:
        return {"num_cpus": 0.75}
    return {"num_cpus": 0.75, "num_gpus": 1 / math.ceil(workers / gpus)}


def _ray_pipeline(ray, work: Plan, spill: Path, rate: int, model: str, out: Path,
                  settings: ShardSettings, batch_size: int, workers: int) -> None:  # fmt: skip
    items = [{"group": g, "name": work.names[i]} for g, i in enumerate(work.pending)]
    # A row is a chunk: a shard is written by the one actor that classified all of its rows.
    # Decoding takes a quarter CPU and an actor the rest of one, so `workers` actors and their
    # decoders fit on `workers` cores.
    chunks = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        decode_chunk,
        fn_kwargs={"listing": str(spill.resolve()), "rate": rate, "root": os.getcwd()},
        batch_size=1,
        num_cpus=0.25,
        batch_format="numpy",
    )
    written = chunks.map_batches(
        _ShardWriter,
        fn_constructor_kwargs={
            "out": str(out.resolve()),
            "model": model,
            "top_k": settings.top_k,
            "batch_size": batch_size,
            "window": settings.window,
            "hop": settings.hop,
        },
        batch_size=1,
        batch_format="pyarrow",
        # A killed actor is restarted and its unfinished chunks retried, without limit: Ray
        # Data's defaults for an actor pool (max_restarts and max_task_retries -1); a retried
        # chunk rewrites the same shard.
        compute=ray.data.ActorPoolStrategy(size=workers),
        **actor_resources(ray.cluster_resources(), workers, (Path(model) / "model.onnx").is_file()),
    )
    for _ in written.iter_batches(batch_size=None):
        pass  # the shards are the output; this drives the pipeline


def run_engine(
    engine: str,
    model: str,
    inputs: list[str],
    out: Path | None,
    top_k: int = 5,
    batch_size: int = 16,
    chunk_size: int = 500,
    window: float | None = None,
    hop: float | None = None,
    workers: int = 1,
    address: str | None = None,
) -> Summary | None:
    """`voxclass predict --engine shards|ray --out DIR`: the summary, or None on a torchrun rank
    other than 0."""
    if out is None:
        raise ConfigError(f"--engine {engine} writes Parquet shards: give --out DIR")
    if chunk_size < 1 or workers < 1:
        raise ConfigError("--chunk-size and --workers must be at least 1")
    if Path(model).exists():  # workers may run in another folder
        model = str(Path(model).resolve())
    settings = ShardSettings(model, top_k, window, hop, chunk_size)
    if engine == "ray":
        return run_ray(model, inputs, out, settings, batch_size, workers, address)
    return run_torchrun(model, inputs, out, settings, batch_size)
