"""The model in a process of its own, for `voxclass serve`.

A server's Python work (HTTP parsing, decoding uploads, building answers) and a model's forward
(Python between torch kernels) take turns under one GIL when they share a process, so the
server uses about one core however many the machine has. `ModelProcess` loads the model in a
child process and sends it batches of waves over a pipe: HTTP and the model then run on
different cores. The server keeps only the model's settings (config and feature extractor, sent
back by the child): its `Classifier` runs on a `ProcessBackend`, so the weights are in memory
once.
"""

from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from .classifier import Classifier
from .config import ConfigError
from .model import ModelError

log = logging.getLogger(__name__)


class ModelProcessError(ModelError):
    """The model's process failed to load the model, or died while scoring."""


def score_pieces(clf: Classifier, pieces: list[np.ndarray]) -> list[np.ndarray | Exception]:
    """Probabilities of each wave in one forward, or the exception that this wave alone raises:
    when the batch fails, each wave is retried on its own, so one bad clip fails only itself."""
    try:
        return list(clf.probabilities(pieces, batch_size=len(pieces)))
    except Exception as err:
        if len(pieces) == 1:
            return [err]
    return [score_pieces(clf, [piece])[0] for piece in pieces]


def _described(err: Exception) -> str:
    """A library error's own one-line message; anything else with its type."""
    own = isinstance(err, (ModelError, ConfigError))
    return str(err) if own else f"{type(err).__name__}: {err}"


def _run(path: str, device: str, conn: Connection) -> None:
    """The child: load the model, send back its settings (or why it could not), then answer
    each ("score", waves) or ("logits", features) request with ("ok", result) or ("error",
    text) until the server closes its end of the pipe. A score's failed waves come back as
    text in their rows."""
    try:
        clf = Classifier.load(path, device)
    except Exception as err:
        conn.send(("error", _described(err)))
        return
    runtime = clf.runtime
    conn.send(("ok", (runtime.name, runtime.config, runtime.extractor, runtime.device)))
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        try:
            if kind == "score":
                rows = score_pieces(clf, payload)
                result: Any = [_described(r) if isinstance(r, Exception) else r for r in rows]
            else:
                result = runtime.logits(payload)
        except Exception as err:
            conn.send(("error", _described(err)))
            continue
        conn.send(("ok", result))


class ModelProcess:
    """A model directory loaded in a child process (spawned, so no torch state is forked).
    `score(pieces)` is `score_pieces` run there; `classifier` is a `Classifier` whose forwards
    run there. One caller at a time: `serve.Batcher` runs one forward at a time. A child that
    dies fails what it was doing and is started again for the next request."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        self.path, self.device = str(path), device
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None
        name, config, extractor, model_device = self._start()
        self.classifier = Classifier(ProcessBackend(self, name, config, extractor, model_device))

    def _start(self) -> tuple[str, Any, Any, str]:
        """Start the child; its backend's name, config, extractor and device."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(
            target=_run, args=(self.path, self.device, child), name="voxclass-model", daemon=True
        )
        process.start()
        child.close()
        try:
            status, payload = parent.recv()
        except EOFError:
            process.join(5)
            status = "error"
            payload = (
                f"the model's process exited with code {process.exitcode} before loading it "
                "(a script that starts a ModelProcess needs the `if __name__ == '__main__':` "
                "guard: the process is spawned and imports the script again)"
            )
        if status != "ok":
            parent.close()
            named = payload if self.path in payload else f"{self.path}: {payload}"
            raise ModelProcessError(named)
        self.process, self.conn = process, parent
        return payload

    def request(self, kind: str, payload: Any) -> Any:
        """Send one request to the child and return its result; its error is a RuntimeError,
        a dead (or unstartable) child a `ModelProcessError`."""
        try:
            if self.conn is None:
                self._start()
            assert self.conn is not None
            self.conn.send((kind, payload))
            status, result = self.conn.recv()
        except (EOFError, OSError) as err:
            raise ModelProcessError(self._lost(err)) from None
        if status != "ok":
            raise RuntimeError(result)
        return result

    def score(self, pieces: list[np.ndarray]) -> list[np.ndarray | Exception]:
        """Probabilities of each wave (at the model's rate), or the error of that wave alone;
        every wave gets the `ModelProcessError` when the child dies meanwhile."""
        try:
            rows = self.request("score", pieces)
        except ModelProcessError as err:
            return [err for _ in pieces]
        return [RuntimeError(row) if isinstance(row, str) else row for row in rows]

    def _lost(self, err: Exception) -> str:
        """Forget a dead child; the next request starts a new one."""
        code = None
        if self.process is not None:
            self.process.join(5)
            code = self.process.exitcode
        self.close()
        reason = f"the model's process died (exit code {code}) while scoring this clip"
        log.error("%s (%s); starting a new one for the next request", reason, err)
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


class ProcessBackend:
    """A `runtime.Backend` whose model lives in a `ModelProcess`: the settings here, the
    forwards there."""

    def __init__(self, process: ModelProcess, name: str, config: Any, extractor: Any, device: str):
        self.process = process
        self.name, self.config, self.extractor, self.device = name, config, extractor, device

    def logits(self, features: list[np.ndarray]) -> np.ndarray:
        return self.process.request("logits", features)
