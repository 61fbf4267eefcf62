"""Batch inference at scale: the shard engines (one process, torchrun, Ray Data) give the same rows
as plain `predict`, resume after an interruption with every input exactly once, and turn bad
files into error rows."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import default_sigint, write_tone_folder

from voxclass import cli
from voxclass.classifier import Classifier
from voxclass.config import ConfigError
from voxclass.predict import expand_inputs, iter_inputs, run
from voxclass.scale import SUCCESS, actor_resources, run_engine

BIN = Path(sys.executable).parent
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """90 tone bursts in nested folders, plus a corrupt and an empty file."""
    root = write_tone_folder(tmp_path_factory.mktemp("scale") / "clips", per_class=30)
    (root / "low" / "corrupt.wav").write_bytes(b"RIFF\x00\x00not a wave file at all")
    (root / "mid" / "empty.wav").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def expected(trained_tone_model, clips) -> dict[str, dict]:
    """Plain `predict` on the same inputs, by source."""
    results = run(Classifier.load(trained_tone_model), expand_inputs([str(clips)]), top_k=2)
    rows = [
        {"source": r.name, "error": r.reason} if hasattr(r, "reason") else r.to_dict()
        for r in results
    ]
    return {row["source"]: row for row in rows}


def read_rows(out: Path) -> list[dict]:
    # a Parquet dataset skips _SUCCESS.json and hidden temp files, as any reader does
    return ds.dataset(out, format="parquet").to_table().to_pylist()


def assert_same_as_plain(out: Path, expected: dict[str, dict]) -> None:
    rows = read_rows(out)
    assert sorted(row["source"] for row in rows) == sorted(expected)  # every input exactly once
    for row in rows:
        want = expected[row["source"]]
        if "error" in want:
            assert row["error"] == want["error"] and row["labels"] is None
            continue
        assert row["error"] is None and row["labels"] == want["labels"]
        pairs = zip(row["scores"], want["scores"], strict=True)
        assert max(abs(a - b) for a, b in pairs) < 1e-6
        assert abs(row["duration"] - want["duration"]) < 1e-9
    summary = json.loads((out / SUCCESS).read_text())
    assert summary["rows"] == len(expected) and summary["errors"] == 2


def test_iter_inputs_streams_a_manifest_and_walks_folders_in_sorted_order(tmp_path):
    root = write_tone_folder(tmp_path / "t", per_class=2)
    (root / "low" / "deeper").mkdir()
    (root / "low" / "deeper" / "x.wav").write_bytes(b"")
    (root / "low.wav").write_bytes(b"")
    walked = [p for p in sorted(root.rglob("*")) if p.is_file()]
    assert list(iter_inputs([str(root)])) == [str(p) for p in walked]
    manifest = tmp_path / "big.jsonl"
    manifest.write_text('{"path": "a.wav"}\n{"path": "b.wav"}\nthis line is not json\n')
    paths = iter_inputs([str(manifest)])  # lazily read: the broken third line is not reached
    assert [next(paths), next(paths)] == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]


def test_ray_engine_without_ray_names_the_install(tmp_path, monkeypatch, trained_tone_model):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'voxclass\[ray\]'"):
        run_engine("ray", str(trained_tone_model), [str(tmp_path)], tmp_path / "out")


def test_shard_folder_refuses_foreign_files_and_plain_predict_refuses_a_folder(
    tmp_path, monkeypatch, capsys, trained_tone_model, clips
):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="notes.txt, which voxclass did not write"):
        run_engine("shards", str(trained_tone_model), [str(clips)], foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    monkeypatch.setattr(sys, "argv", ["voxclass", "predict", str(trained_tone_model),
                                      str(clips), "--out", str(foreign)])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2 and "--engine shards or ray" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupted_run_resumes_to_every_input_exactly_once(
    tmp_path, trained_tone_model, clips, expected
):
    out = tmp_path / "out"
    args = ["predict", str(trained_tone_model), str(clips), "--top-k", "2"]
    args += ["--engine", "shards", "--chunk-size", "4", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    job = subprocess.Popen(
        [sys.executable, "-m", "voxclass", *args], env=env, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")) and job.poll() is None:
        assert time.monotonic() < deadline, "no shard within 120 s"
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=60) != 0  # interrupted, not finished
    written = sorted(out.glob("part-*.parquet"))
    assert written and not (out / SUCCESS).exists()
    assert len(written) < 24  # 92 inputs in chunks of 4: most were still to do
    # A shard already there is skipped, not redone: mark one to see it survive the rerun.
    shard = pq.read_table(written[0])
    column = shard.schema.get_field_index("duration")
    pq.write_table(shard.set_column(column, "duration", pa.array([-1.0] * 4)), written[0])
    (out / f".{written[-1].name}.tmp-1-deadbeef").write_bytes(b"half a shard")

    rerun = subprocess.run([sys.executable, "-m", "voxclass", *args], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 1, rerun.stderr[-2000:]  # two error rows, as plain predict
    assert "92 rows (2 errors)" in rerun.stderr
    assert (pq.read_table(written[0]).column("duration").to_pylist() == [-1.0] * 4)
    pq.write_table(shard, written[0])  # back as it was, to compare every row below
    assert_same_as_plain(out, expected)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == [SUCCESS]

    with pytest.raises(ConfigError, match="written for other inputs or settings"):
        run_engine("shards", str(trained_tone_model), [str(clips)], out, top_k=3, chunk_size=4)


@pytest.mark.distributed
def test_torchrun_two_ranks_write_the_rows_of_one_process(
    tmp_path, trained_tone_model, clips, expected
):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "voxclass"]
    command += ["predict", str(trained_tone_model), str(clips), "--top-k", "2"]
    command += ["--chunk-size", "8", "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_as_plain(out, expected)
    assert len(list(out.glob("part-*.parquet"))) == 12  # 92 inputs in chunks of 8


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_engine_finishes_a_partial_run_with_the_rows_of_plain_predict(
    tmp_path, local_ray, trained_tone_model, clips, expected
):
    out = tmp_path / "out"
    model = str(trained_tone_model)
    run_engine("shards", model, [str(clips)], out, top_k=2, chunk_size=8)
    for shard in sorted(out.glob("part-*.parquet"))[::2]:
        shard.unlink()  # as if the earlier run had stopped half-way
    (out / SUCCESS).unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    summary = run_engine("ray", model, [str(clips)], out, top_k=2, chunk_size=8, workers=2)
    assert (summary.rows, summary.errors, summary.shards) == (92, 2, 12)
    assert {p: (out / p).stat().st_mtime_ns for p in kept} == kept  # done shards untouched
    assert_same_as_plain(out, expected)


@pytest.mark.slow
def test_ray_predictor_in_a_users_own_pipeline(local_ray, trained_tone_model, clips, expected):
    from voxclass import RayPredictor

    sources = sorted(expected)
    pipeline = local_ray.data.from_items([{"source": s} for s in sources]).map_batches(
        RayPredictor,
        fn_constructor_kwargs={"model": str(trained_tone_model), "top_k": 2},
        compute=local_ray.data.ActorPoolStrategy(size=2),
        batch_size=16,
    )
    rows = {row["source"]: row for row in pipeline.take_all()}
    assert sorted(rows) == sources
    for source, row in rows.items():
        want = expected[source]
        if "error" in want:
            assert row["error"] == want["error"]
        else:
            assert list(row["labels"]) == want["labels"] and row["error"] is None
            pairs = zip(row["scores"], want["scores"], strict=True)
            assert max(abs(a - b) for a, b in pairs) < 1e-6


def ray_processes() -> dict[int, str]:
    """Ray's worker processes by pid, with the titles Ray gives them (`ray::IDLE`, an actor's
    `ray::MapWorker(MapBatches(...)).submit`, ...)."""
    titles = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if title.startswith("ray::"):
            titles[int(cmdline.parent.name)] = title
    return titles


def actor_pids() -> set[int]:
    """Processes of Ray Data's actor pools."""
    return {pid for pid, title in ray_processes().items() if "MapWorker" in title}


@pytest.mark.slow
def test_a_classifying_actor_killed_mid_run_is_restarted_and_every_input_is_written_once(
    tmp_path, local_ray, trained_tone_model, clips, expected
):
    out = tmp_path / "out"
    killed: dict[str, object] = {}
    earlier = actor_pids()  # of earlier tests' pipelines, maybe not yet gone

    def kill_the_actor_after_its_first_shard() -> None:
        deadline = time.monotonic() + 240
        while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.005)
        killed["pids"] = actor_pids() - earlier
        killed["processes"] = ray_processes()
        for pid in killed["pids"]:
            os.kill(pid, signal.SIGKILL)
        killed["shards"] = len(list(out.glob("part-*.parquet")))

    killer = threading.Thread(target=kill_the_actor_after_its_first_shard)
    killer.start()
    # 92 inputs in chunks of 2: 46 shards, written one by one by the only actor
    summary = run_engine("ray", str(trained_tone_model), [str(clips)], out, top_k=2,
                         chunk_size=2, workers=1)  # fmt: skip
    killer.join()
    assert len(killed["pids"]) == 1, killed  # the one actor was found and killed...
    assert 1 <= killed["shards"] < 46  # ...mid-run, and the run still finished
    assert (summary.rows, summary.errors, summary.shards) == (92, 2, 46)
    assert_same_as_plain(out, expected)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("part-")) == [SUCCESS]


def test_actors_ask_for_gpus_where_the_cluster_has_them():
    cpu_only = {"CPU": 64.0, "memory": 1e11}
    assert actor_resources(cpu_only, workers=8, onnx=False) == {"num_cpus": 0.75}
    eight_gpus = {"CPU": 64.0, "GPU": 8.0}
    assert actor_resources(eight_gpus, workers=8, onnx=False) == {"num_cpus": 0.75, "num_gpus": 1}
    assert actor_resources(eight_gpus, workers=2, onnx=False)["num_gpus"] == 1
    # 3 GPUs for 8 actors: 3 per GPU, so that all 8 fit (a half each would leave 2 unplaced)
    assert actor_resources({"GPU": 3.0}, workers=8, onnx=False)["num_gpus"] == 1 / 3
    assert actor_resources(eight_gpus, workers=8, onnx=True) == {"num_cpus": 0.75}


def test_a_device_the_machine_or_the_model_cannot_use_is_refused_in_one_line(
    tmp_path, trained_tone_model
):
    assert Classifier.load(trained_tone_model, "cpu").device == "cpu"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device cuda: torch sees no CUDA GPU here"):
            Classifier.load(trained_tone_model, "cuda")
    onnx = tmp_path / "exported"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"")  # refused before it is read
    with pytest.raises(ConfigError, match="an ONNX export runs on the CPU"):
        Classifier.load(onnx, "cuda")
