"""The model in a process of its own, for `voxclass serve`.

A server's Python work (HTTP parsing, decoding uploads, building answers) and a model's forward
(Python between torch kernels) take turns under one GIL when they share a process, so the
server uses about one core however many the machine has. `ModelProcess` loads the model in a
child process and sends it batches of waves over a pipe: HTTP and the model then run on
different cores. The price is a second copy of the model in memory when the server keeps one
too.
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

from .classifier import Classifier
from .model import ModelError

log = logging.getLogger(__name__)


class ModelProcessError(ModelError):
    """The model's process failed to start, or died while scoring."""


def score_pieces(clf: Classifier, pieces: list[np.ndarray]) -> list[np.ndarray | Exception]:
    """Probabilities of each wave in one forward, or the exception that this wave alone raises:
    when the batch fails, each wave is retried on its own, so one bad clip fails only itself."""
    try:
        return list(clf.probabilities(pieces, batch_size=len(pieces)))
    except Exception as err:
        if len(pieces) == 1:
            return [err]
    return [score_pieces(clf, [piece])[0] for piece in pieces]


def _run(path: str, device: str, conn: Connection) -> None:
    """The child: load the model, say so, then answer each list of waves with its rows (an
    error as its text) until the server closes its end of the pipe."""
    try:
        clf = Classifier.load(path, device)
    except Exception as err:
        conn.send(f"{type(err).__name__}: {err}")
        return
    conn.send(None)
    while True:
        try:
            pieces = conn.recv()
        except EOFError:
            return
        rows = score_pieces(clf, pieces)
        conn.send([f"{type(r).__name__}: {r}" if isinstance(r, Exception) else r for r in rows])


class ModelProcess:
    """A model directory loaded in a child process (spawned, so no torch state is forked);
    `score(pieces)` is `score_pieces` run there. One caller at a time: `serve.Batcher` runs
    one forward at a time. A child that dies fails its batch and is started again for the next
    one."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path, self.device = str(path), device
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_run, args=(self.path, self.device, child), name="voxclass-model", daemon=True
        )
        process.start()
        child.close()
        try:
            failure = parent.recv()
        except EOFError:
            process.join(5)
            failure = f"it exited with code {process.exitcode}"
        if failure is not None:
            parent.close()
            raise ModelProcessError(f"the model's process could not load {self.path}: {failure}")
        self.process, self.conn = process, parent

    def score(self, pieces: list[np.ndarray]) -> list[np.ndarray | Exception]:
        """Probabilities of each wave (at the model's rate), or the error of that wave alone;
        every wave gets a `ModelProcessError` when the process dies meanwhile."""
        try:
            if self.conn is None:
                self._start()
            assert self.conn is not None
            self.conn.send(pieces)
            rows = self.conn.recv()
        except (EOFError, OSError, ModelProcessError) as err:
            reason = self._lost(err)
            return [ModelProcessError(reason) for _ in pieces]
        return [RuntimeError(row) if isinstance(row, str) else row for row in rows]

    def _lost(self, err: Exception) -> str:
        """Forget a dead (or never started) child; the next `score` starts a new one."""
        if isinstance(err, ModelProcessError):
            return str(err)
        code = None
        if self.process is not None:
            self.process.join(5)
            code = self.process.exitcode
        self.close()
        reason = f"the model's process died (exit code {code}) while scoring this clip"
        log.error("%s; starting a new one for the next request", reason)
        return reason

    def close(self) -> None:
        """Stop the child: closing the pipe ends its loop."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.process is not None:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
            self.process = None
