"""``python -m lit_mnist serve``: checkpoints side by side behind an HTTP API, and a draw-a-digit page.

The server is LitServe: one API whose inference workers hold every model and answer each
request with every model's label and probabilities (and, on request, each model's Integrated
Gradients map, ``lit_mnist.models.attribution``). Concurrent requests are batched by LitServe.
Every input check runs in ``PredictInput``, an ASGI middleware in front of LitServe, so a bad
request gets its own 4xx with ``{"error": "one sentence"}`` and never fails the batch it would
have joined; ``Page``, another, answers ``GET /`` with the page (``lit_mnist/static/index.html``).
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import litserve as ls
import numpy as np
import torch
from jsonargparse.typing import PositiveInt, restricted_number_type
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lit_mnist.checkpoint import SAVE_DIR, load_model, read_checkpoint, resolve_ckpt_path
from lit_mnist.cli import run_command
from lit_mnist.data.images import MAX_BYTES, SIZE, ImageError, read_digit
from lit_mnist.errors import LitMNISTError
from lit_mnist.models.attribution import N_STEPS, integrated_gradients
from lit_mnist.models.classifier import MNISTClassifier

#: The largest request body: an image of ``MAX_BYTES`` plus room for a multipart form's headers.
MAX_BODY = MAX_BYTES + 64 * 1024
#: A body over ``MAX_BODY`` is still read (and dropped) up to this size before the 413 answer.
DRAIN_LIMIT = 64 * 1024 * 1024
#: ``--accelerator`` values, as LitServe names them.
ACCELERATORS = {"auto": "auto", "cpu": "cpu", "gpu": "cuda"}
#: The query parameters of ``POST /predict``.
QUERY_KEYS = ("model", "explain")
#: ``explain`` values.
EXPLAIN = {"1": True, "true": True, "0": False, "false": False}

Port = restricted_number_type("Port", int, [(">=", 1024), ("<=", 65535)], docstring="TCP port, 1024 to 65535")
BatchTimeout = restricted_number_type(
    "BatchTimeout", float, [(">=", 0.0), ("<=", 10.0)], docstring="seconds, 0 to 10"
)


class BadRequest(Exception):
    """A request ``PredictInput`` refuses: an HTTP status and one sentence."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


class PredictInput:
    """ASGI middleware: checks each ``POST`` to ``path`` and hands LitServe JSON it cannot refuse.

    Images are decoded here (in a thread), JSON pixels and the query checked here, so LitServe's
    workers only see ``{"pixels": 28 × 28 numbers in 0…255, "models": [served names],
    "explain": bool}``. Other paths pass through untouched.

    Args:
        app: The ASGI app behind (LitServe's FastAPI app).
        models: The served models' names, in order.
        path: The prediction endpoint.
    """

    def __init__(self, app: ASGIApp, models: Sequence[str], path: str = "/predict") -> None:
        self.app, self.models, self.path = app, list(models), path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        try:
            models, explain = self._query(scope)
            pixels = await self._pixels(scope, receive)
        except BadRequest as err:
            response = JSONResponse({"error": str(err)}, status_code=err.status, headers=err.headers)
            await response(scope, receive, send)
            return
        body = json.dumps({"pixels": pixels, "models": models, "explain": explain}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.app({**scope, "headers": headers}, _replay(body, receive), send)

    def _query(self, scope: Scope) -> tuple[list[str], bool]:
        """The models asked for (all by default) and whether to explain, from the query string."""
        if scope["method"] != "POST":
            raise BadRequest(405, f"Use POST for {self.path}, not {scope['method']}.", {"Allow": "POST"})
        try:
            pairs = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest(400, "The query string cannot be read.") from None
        asked, explain = [], False
        for key, value in pairs:
            if key == "model":
                if value not in self.models:
                    served = ", ".join(self.models)
                    raise BadRequest(400, f"There is no model {value[:40]!r} here: this server has {served}.")
                asked.append(value)
            elif key == "explain":
                if value.lower() not in EXPLAIN:
                    raise BadRequest(400, f"explain must be 1, 0, true or false, got {value[:40]!r}.")
                explain = EXPLAIN[value.lower()]
            else:
                raise BadRequest(400, f"Unknown query parameter {key[:40]!r}: use model and explain.")
        return [m for m in self.models if m in asked] or self.models, explain

    async def _pixels(self, scope: Scope, receive: Receive) -> list[list[float]]:
        request = Request(scope)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > DRAIN_LIMIT:
            raise BadRequest(413, f"The request body is {int(declared):,} bytes; the limit is {MAX_BODY:,}.")
        body = await _read_body(receive)
        if not body:
            raise BadRequest(400, "The request body is empty: send a PNG or JPEG image or JSON pixels.")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            return _json_pixels(body)
        if content_type == "multipart/form-data":
            data = await _form_image(Request(scope, _replay(body, receive)))
        elif content_type.startswith("image/"):
            data = body
        else:
            raise BadRequest(
                415,
                f"Unsupported content type {content_type or '(none)'}: send a PNG or JPEG image "
                '(form field image, or an image/* body) or application/json {"pixels": …}.',
            )
        if len(data) > MAX_BYTES:
            raise BadRequest(413, f"The image is {len(data):,} bytes; the limit is {MAX_BYTES:,}.")
        try:
            digit = await run_in_threadpool(read_digit, data)
        except ImageError as err:
            raise BadRequest(422, str(err)) from None
        return digit.tolist()


class Page:
    """ASGI middleware: ``GET /`` is the draw-a-digit page; everything else passes through.

    Args:
        app: The ASGI app behind (LitServe's FastAPI app, whose own ``GET /`` it stands in front of).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.html = resources.files("lit_mnist").joinpath("static", "index.html").read_text("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            await HTMLResponse(self.html)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` once, then whatever the client sends next (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _read_body(receive: Receive) -> bytes:
    """The whole body; one over ``MAX_BODY`` is read to its end (up to ``DRAIN_LIMIT``) and refused.

    Reading it first lets a client that sends the whole body before it reads (most do) see the
    413 answer, instead of a connection reset.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise BadRequest(400, "The client disconnected before sending the whole body.")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= MAX_BODY:
            chunks.append(chunk)
        more = message.get("more_body", False)
        if size > MAX_BODY and (not more or size > DRAIN_LIMIT):
            raise BadRequest(413, f"The request body is over the limit of {MAX_BODY:,} bytes.")
        if not more:
            return b"".join(chunks)


async def _form_image(request: Request) -> bytes:
    try:
        async with request.form(max_files=1, max_fields=10) as form:
            field = form.get("image")
            if not isinstance(field, UploadFile):
                raise BadRequest(400, "The form has no file field named image.")
            return await field.read()
    except BadRequest:
        raise
    except Exception:
        raise BadRequest(400, "The multipart form cannot be parsed.") from None


def _json_pixels(body: bytes) -> list[list[float]]:
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(400, "The body is not valid JSON.") from None
    except RecursionError:
        raise BadRequest(400, "The JSON is nested too deeply to read.") from None
    if not isinstance(value, dict) or "pixels" not in value:
        raise BadRequest(422, 'The JSON must be an object {"pixels": [[…], …]}.')
    rows = value["pixels"]
    if not (
        isinstance(rows, list)
        and len(rows) == SIZE
        and all(isinstance(r, list) and len(r) == SIZE for r in rows)
    ):
        raise BadRequest(422, f"pixels must be {SIZE} lists of {SIZE} numbers.")
    for row in rows:
        for v in row:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v <= 255):
                raise BadRequest(422, f"pixels must be numbers from 0 to 255, got {json.dumps(v)[:40]}.")
    return rows


@dataclass
class DigitRequest:
    """One checked request as a worker holds it: uint8 pixels ``[28, 28]``, the models asked, explain."""

    pixels: torch.Tensor
    models: list[str]
    explain: bool


class DigitAPI(ls.LitAPI):
    """The LitServe API of several models: 28 × 28 pixels in; each model's label and probabilities out.

    The models are built once, before the server starts, and reach each inference worker with
    this object. Every model gets the same uint8 pixels ``[B, 1, 28, 28]`` and prepares them itself.

    Args:
        models: Name → model, in the order the answers list them.
        max_batch_size: The most requests LitServe puts in one batch.
        batch_timeout: Seconds LitServe waits to fill a batch.
        attribution_steps: Integrated Gradients' steps per map (``integrated_gradients``).
    """

    def __init__(
        self,
        models: dict[str, MNISTClassifier],
        max_batch_size: int = 64,
        batch_timeout: float = 0.005,
        attribution_steps: int = N_STEPS,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.models = models
        self.attribution_steps = attribution_steps

    def setup(self, device: str) -> None:
        if device == "cpu":
            # One thread per inference worker (scale with --workers): these batches are too small for
            # intra-op threads, whose spinning only takes CPU from the HTTP side.
            torch.set_num_threads(1)
        self.models = {name: model.to(device).eval() for name, model in self.models.items()}
        self.device = device

    def decode_request(self, request):  # unannotated: an annotation makes FastAPI validate it
        pixels = torch.from_numpy(np.asarray(request["pixels"], dtype=np.float32)).round().to(torch.uint8)
        return DigitRequest(pixels, request["models"], request["explain"])

    def predict(self, x: DigitRequest | list[DigitRequest]) -> Any:
        """The answer to a request, or to each of a batch (LitServe's own ``batch`` lists them)."""
        requests = x if isinstance(x, list) else [x]
        images = torch.stack([r.pixels for r in requests]).unsqueeze(1).to(self.device)
        answers: list[list[dict[str, Any]]] = [[] for _ in requests]
        for name, model in self.models.items():
            asked = [i for i, r in enumerate(requests) if name in r.models]
            if not asked:
                continue
            with torch.inference_mode():
                probs = model.probabilities(model(images[asked])).float()
            labels = probs.argmax(dim=-1)
            explained = [j for j, i in enumerate(asked) if requests[i].explain]
            maps: dict[int, torch.Tensor] = {}
            if explained:
                found = integrated_gradients(
                    model, images[asked][explained], labels[explained], self.attribution_steps
                )
                maps = dict(zip(explained, found[:, 0].float().cpu(), strict=True))
            probs, labels = probs.cpu(), labels.cpu()
            for j, i in enumerate(asked):
                answer = {"name": name, "label": int(labels[j]), "probs": probs[j].tolist()}
                if j in maps:
                    answer["attribution"] = maps[j].tolist()
                answers[i].append(answer)
        outputs = [{"input": r.pixels.tolist(), "models": a} for r, a in zip(requests, answers, strict=True)]
        return outputs if isinstance(x, list) else outputs[0]


def build_server(api: DigitAPI, accelerator: str = "auto", workers: int = 1) -> ls.LitServer:
    """The LitServer of ``api`` with ``PredictInput`` and ``Page`` in front.

    Args:
        api: The ``DigitAPI``.
        accelerator: ``auto``, ``cpu`` or ``gpu``.
        workers: Inference worker processes per device.
    """
    return ls.LitServer(
        api,
        accelerator=ACCELERATORS[accelerator],
        workers_per_device=workers,
        middlewares=[(PredictInput, {"models": list(api.models)}), Page],
        fast_queue=True,  # ZeroMQ between the API process and the workers: faster than multiprocessing queues
    )


def checkpoint_name(path: Path) -> str:
    """The name a checkpoint is served under by default: its run, ``<save_dir>/<run>/version_N/checkpoints/``.

    A file outside that layout is named after the file (``mlp.ckpt`` → ``mlp``).
    """
    if path.parent.name == "checkpoints" and path.parent.parent.name.startswith("version_"):
        return path.parents[2].name
    return path.stem


def parse_checkpoints(ckpt_path: str | Sequence[str], save_dir: str | Path) -> dict[str, Path]:
    """``serve --ckpt_path`` entries as name → checkpoint file; see ``serve``.

    Args:
        ckpt_path: One entry or several: ``PATH``, ``NAME=PATH`` or ``RUN=last``.
        save_dir: The folder runs are logged under, where ``RUN=last`` looks.
    """
    entries = [ckpt_path] if isinstance(ckpt_path, str) else list(ckpt_path)
    if not entries:
        raise LitMNISTError("serve: --ckpt_path names no checkpoint.")
    found: dict[str, Path] = {}
    for entry in entries:
        name, sep, rest = entry.partition("=")
        if not (sep and name and "/" not in name and not Path(entry).is_file()):
            name, rest = "", entry
        if rest == "last":
            if not name:
                raise LitMNISTError(
                    "serve: --ckpt_path last needs the run's name, as RUN=last (e.g. mlp=last): "
                    f"the newest last.ckpt under {save_dir}/RUN/."
                )
            path = resolve_ckpt_path("last", Path(save_dir) / name)
        else:
            path = Path(rest)
        name = name or checkpoint_name(path)
        if name in found:
            raise LitMNISTError(
                f"serve: two checkpoints are named {name} ({found[name]} and {path}): "
                "name them, as NAME=PATH."
            )
        found[name] = path
    return found


def load_models(paths: dict[str, Path]) -> dict[str, MNISTClassifier]:
    """Each checkpoint's model, read once (``read_checkpoint``: ``weights_only``); only MNIST image models."""
    models = {}
    for name, path in paths.items():
        model = load_model(path, read_checkpoint(path))
        if tuple(model.example_input_array.shape[1:]) != (1, SIZE, SIZE):
            raise LitMNISTError(
                f"{path} is a {type(model).__name__} of non-image inputs: serve needs an MNIST model."
            )
        models[name] = model
    return models


def check_port(host: str, port: int) -> None:
    """Refuse, in one sentence, a port that cannot be listened on (bound as uvicorn binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise LitMNISTError(
                    f"Port {port} on {host} is in use: stop what listens there, "
                    "or choose another with --port."
                ) from None
            raise LitMNISTError(f"Cannot listen on port {port} of {host}: {err.strerror}.") from None


def serve(
    ckpt_path: str | list[str],
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1",
    port: Port = 8000,
    accelerator: Literal["auto", "cpu", "gpu"] = "auto",
    max_batch_size: PositiveInt = 64,
    batch_timeout: BatchTimeout = 0.005,
    workers: PositiveInt = 1,
    attribution_steps: PositiveInt = N_STEPS,
    save_dir: str = SAVE_DIR,
) -> None:
    """Serve checkpoints side by side over HTTP, with a draw-a-digit page at /.

    POST /predict takes one digit: PNG or JPEG bytes (a multipart form field image, or a raw body
    with an image/* content type), prepared as predict's --data.predict_dir prepares files, or
    JSON {"pixels": 28 rows of 28 numbers in 0…255} (an MNIST-like image, light digit on black,
    used as it is). It answers {"input": the 28 × 28 image the models received, "models": [{"name",
    "label", "probs": 10 floats}, …]}, one entry per model. Query parameters: model=NAME (repeatable)
    asks only those models; explain=1 adds each model's "attribution", 28 × 28 Integrated Gradients
    of its answer's score against a blank image. Bad input gets a 4xx and {"error": "one
    sentence"}. GET / is the page, GET /health LitServe's health check. Every checkpoint is read
    (weights_only) and its model built before anything listens, so a bad one is one sentence.

    Args:
        ckpt_path: The checkpoints, one or a list ("[a.ckpt, b.ckpt]", or --ckpt_path+ to add
            one): each a file written by fit, served under its run's name (lightning_logs/RUN/
            version_N/checkpoints/x.ckpt → RUN); NAME=PATH names it; RUN=last is the newest
            last.ckpt of that run under --save_dir.
        host: The address to listen on: 127.0.0.1 accepts only this machine; 0.0.0.0 (or ::, for
            IPv6 too) every network the machine is on, with no authentication and no encryption.
        port: The TCP port to listen on, 1024 to 65535.
        accelerator: Where the models run: auto (a GPU if there is one), cpu or gpu.
        max_batch_size: The most requests LitServe answers in one batch.
        batch_timeout: Seconds LitServe waits for more requests to fill a batch, 0 to 10.
        workers: Inference processes per device, each holding every model.
        attribution_steps: Integrated Gradients' steps per map: more are more exact (closer to
            summing to the score's difference from the blank image) and slower.
        save_dir: The folder runs are logged under, where RUN=last looks.
    """
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise LitMNISTError("serve: --accelerator gpu, but PyTorch finds no CUDA device here.")
    paths = parse_checkpoints(ckpt_path, save_dir)
    models = load_models(paths)
    api = DigitAPI(models, max_batch_size, batch_timeout, attribution_steps)
    server = build_server(api, accelerator=accelerator, workers=workers)
    check_port(host, port)
    address = f"[{host}]" if ":" in host else host
    served = ", ".join(f"{name} ({path})" for name, path in paths.items())
    print(f"Serving {served} on http://{address}:{port}/ (POST /predict, GET /health)", flush=True)
    server.run(host=host, port=port, generate_client_file=False, log_level="warning")


def main(args: Sequence[str]) -> None:
    """``python -m lit_mnist serve ARGS`` (``serve``'s options)."""
    run_command(serve, args, "serve")
