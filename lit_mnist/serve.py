"""``python -m lit_mnist serve``: a checkpoint behind an HTTP API on LitServe, and a draw-a-digit page.

``POST /predict`` takes one digit: PNG or JPEG bytes (a multipart form field ``image``, or a raw
body with an ``image/*`` content type), prepared by ``read_digit`` exactly as ``--data.predict_dir``
prepares files, or JSON ``{"pixels": [[28 rows of 28 numbers in 0…255]]}`` (an MNIST-like image,
light digit on black, used as it is). It answers ``{"label": int, "probs": [10 floats],
"input": [[28 × 28 ints]]}``, ``input`` being the image the model received. Concurrent requests
are batched by LitServe. Every input check runs in ``PredictInput``, an ASGI middleware in front
of LitServe, so a bad request gets its own 4xx with ``{"error": "one sentence"}`` and never fails
the batch it would have joined. ``GET /`` is the page (``lit_mnist/static/index.html``),
``GET /health`` LitServe's own health check.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
import torch
import yaml
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lit_mnist.checkpoint import check_model_class, find_last, load_model, read_checkpoint
from lit_mnist.data.images import MAX_BYTES, SIZE, ImageError, read_digit
from lit_mnist.errors import ArgumentParser, LitMNISTError

#: The largest request body: an image of ``MAX_BYTES`` plus room for a multipart form's headers.
MAX_BODY = MAX_BYTES + 64 * 1024
#: A body over ``MAX_BODY`` is still read (and dropped) up to this size before the 413 answer.
DRAIN_LIMIT = 64 * 1024 * 1024
#: ``--accelerator`` values, as LitServe names them.
ACCELERATORS = {"auto": "auto", "cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}
#: The hosts LitServe binds to.
HOSTS = ("127.0.0.1", "0.0.0.0", "::")


class BadRequest(Exception):
    """A request ``PredictInput`` refuses: an HTTP status and one sentence."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers


class PredictInput:
    """ASGI middleware: checks each ``POST`` to ``path`` and hands LitServe JSON ``{"pixels": …}``.

    Images are decoded here (in a thread), JSON pixels checked here, so LitServe's workers only
    ever see valid 28 × 28 inputs. Other paths pass through untouched.

    Args:
        app: the ASGI app behind (LitServe's FastAPI app).
        path: the prediction endpoint.
    """

    def __init__(self, app: ASGIApp, path: str = "/predict") -> None:
        self.app, self.path = app, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        try:
            pixels = await self._pixels(scope, receive)
        except BadRequest as err:
            response = JSONResponse({"error": str(err)}, status_code=err.status, headers=err.headers)
            await response(scope, receive, send)
            return
        body = json.dumps({"pixels": pixels}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.app({**scope, "headers": headers}, _replay(body, receive), send)

    async def _pixels(self, scope: Scope, receive: Receive) -> list[list[float]]:
        if scope["method"] != "POST":
            raise BadRequest(405, f"Use POST for {self.path}, not {scope['method']}.", {"Allow": "POST"})
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


class DigitAPI(ls.LitAPI):
    """The LitServe API of one checkpoint: 28 × 28 pixels in, the label and ten probabilities out.

    Args:
        ckpt_path: a checkpoint written by ``python -m lit_mnist fit``, loaded in ``setup``.
        max_batch_size: the most requests LitServe puts in one batch.
        batch_timeout: seconds LitServe waits to fill a batch.
    """

    def __init__(self, ckpt_path: str | Path, max_batch_size: int = 64, batch_timeout: float = 0.005) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.ckpt_path = str(ckpt_path)

    def setup(self, device: str) -> None:
        if device == "cpu":
            # One thread per inference worker (scale with --workers): these batches are too small for
            # intra-op threads, whose spinning only takes CPU from the HTTP side.
            torch.set_num_threads(1)
        checkpoint = read_checkpoint(self.ckpt_path)
        self.model = load_model(self.ckpt_path, checkpoint).to(device)
        self.device = device

    def decode_request(self, request):  # unannotated: an annotation makes FastAPI validate it
        return torch.from_numpy(np.asarray(request["pixels"], dtype=np.float32))

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> Any:
        single = x.ndim == 2
        images = x.unsqueeze(0) if single else x
        received = images.round().to(torch.uint8)
        with torch.inference_mode():
            probs = self.model.probabilities(self.model(received.unsqueeze(1).to(self.device))).float().cpu()
        pairs = list(zip(probs, received, strict=True))
        return pairs[0] if single else pairs

    def unbatch(self, output: Any) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> dict[str, Any]:
        probs, image = output
        return {"label": int(probs.argmax()), "probs": probs.tolist(), "input": image.tolist()}


async def _page(request: Request) -> HTMLResponse:
    return HTMLResponse(resources.files("lit_mnist").joinpath("static", "index.html").read_text("utf-8"))


def build_server(api: DigitAPI, accelerator: str = "auto", workers: int = 1) -> ls.LitServer:
    """The LitServer of ``api`` with ``PredictInput`` in front and the page at ``GET /``.

    Args:
        api: the ``DigitAPI``.
        accelerator: ``auto``, ``cpu`` or ``gpu``.
        workers: inference worker processes per device.
    """
    server = ls.LitServer(
        api,
        accelerator=ACCELERATORS[accelerator],
        workers_per_device=workers,
        middlewares=[PredictInput],
        fast_queue=True,  # ZeroMQ between the API process and the workers: faster than multiprocessing queues
    )
    # LitServe answers GET / with "litserve running"; the page replaces that route.
    server.app.router.routes = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]
    server.app.add_api_route("/", _page, methods=["GET"], response_class=HTMLResponse)
    return server


def resolve_ckpt_path(ckpt_path: str, config: str | None, save_dir: str = "lightning_logs") -> Path:
    """``ckpt_path`` as a file; ``last`` is the newest ``last.ckpt`` of the ``--config`` run.

    Args:
        ckpt_path: a checkpoint file, or ``last``.
        config: the run's config file, whose name is the run name (as ``fit`` names runs).
        save_dir: the folder the runs are logged under (``fit``'s default).
    """
    if ckpt_path != "last":
        return Path(ckpt_path)
    if config is None:
        raise LitMNISTError("serve: --ckpt_path last needs --config to know the run (its file name).")
    run_dir = Path(save_dir) / Path(config).stem
    last = find_last(run_dir)
    if last is None:
        raise LitMNISTError(f"--ckpt_path last: no last.ckpt under {run_dir}/version_*/checkpoints/.")
    return last


def _config_model_class(config: str | None) -> str | None:
    if config is None:
        return None
    try:
        content = yaml.safe_load(Path(config).read_text())
    except OSError as err:
        raise LitMNISTError(f"Cannot read --config {config}: {err.strerror}.") from None
    except yaml.YAMLError:
        raise LitMNISTError(f"--config {config} is not a readable YAML file.") from None
    model = content.get("model") if isinstance(content, dict) else None
    return model.get("class_path") if isinstance(model, dict) else None


def build_parser() -> ArgumentParser:
    """The ``serve`` command's options."""
    parser = ArgumentParser(
        prog="lit_mnist serve",
        description="Serve a checkpoint over HTTP (POST /predict) with a draw-a-digit page at /.",
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint file, or last")
    parser.add_argument("--config", default=None, help="the run's config")
    parser.add_argument("--host", default="127.0.0.1", choices=HOSTS, help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="port, 1024…65535 (default 8000)")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"), help="default auto")
    parser.add_argument("--max_batch_size", type=int, default=64, help="most requests per batch (default 64)")
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="seconds to fill a batch (0.005)")
    parser.add_argument("--workers", type=int, default=1, help="inference processes per device (default 1)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``serve --ckpt_path CKPT|last [--config …] [--host …] [--port …] …``: run the server until stopped.

    The checkpoint is read and its model built here first (``weights_only``, model-class check
    against ``--config``), so a bad checkpoint is one sentence before any server starts.
    """
    args = build_parser().parse_args(argv)
    if not 1024 <= args.port <= 65535:
        raise LitMNISTError(f"serve: --port must be from 1024 to 65535, got {args.port}.")
    if args.max_batch_size < 1 or args.workers < 1:
        raise LitMNISTError("serve: --max_batch_size and --workers must be at least 1.")
    if not (args.batch_timeout >= 0 and math.isfinite(args.batch_timeout)):
        raise LitMNISTError(f"serve: --batch_timeout must be 0 or more seconds, got {args.batch_timeout}.")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise LitMNISTError("serve: --accelerator gpu, but PyTorch finds no CUDA device here.")
    ckpt_path = resolve_ckpt_path(args.ckpt_path, args.config)
    checkpoint = read_checkpoint(ckpt_path)
    check_model_class(checkpoint, ckpt_path, _config_model_class(args.config))
    model = load_model(ckpt_path, checkpoint)
    if tuple(model.example_input_array.shape[1:]) != (1, SIZE, SIZE):
        raise LitMNISTError(
            f"{ckpt_path} is a {type(model).__name__} of non-image inputs: serve needs an MNIST model."
        )
    del model
    api = DigitAPI(ckpt_path, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout)
    server = build_server(api, accelerator=args.accelerator, workers=args.workers)
    print(f"Serving {ckpt_path} on http://{args.host}:{args.port}/ (POST /predict, GET /health)", flush=True)
    server.run(host=args.host, port=args.port, generate_client_file=False, log_level="warning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(ckpt_path: str | Path, *options: str, timeout: float = 120) -> Iterator[str]:
    """``python -m lit_mnist serve`` in a child process on a free port of 127.0.0.1, for tests and benchmarks.

    Yields the base URL (``http://127.0.0.1:<port>``) once ``/health`` answers, and stops the server
    and its LitServe workers (its own process group) on exit.

    Args:
        ckpt_path: The checkpoint to serve.
        *options: More ``serve`` options, e.g. ``"--max_batch_size", "1"``.
        timeout: Seconds to wait for ``/health``.

    Raises:
        RuntimeError: The server exited or did not answer in time; the message ends with its output.
    """
    port = _free_port()
    command = [sys.executable, "-m", "lit_mnist", "serve", "--ckpt_path", str(ckpt_path), "--port", str(port)]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [*command, *options], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"serve exited with {process.returncode}:\n{log.read()[-3000:]}")
                with suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not answer {url}/health within {timeout} s")
                time.sleep(0.3)
            yield url
        finally:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
            with suppress(ProcessLookupError):  # a worker left behind by the server
                os.killpg(process.pid, signal.SIGKILL)
