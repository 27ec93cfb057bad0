"""``python -m lit_mnist serve`` as a real server on 127.0.0.1: every good input, every bad one, the page."""

from __future__ import annotations

import io
import json
import struct
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import REPO, run_cli
from PIL import Image

from lit_mnist import MLP
from lit_mnist.__main__ import main
from lit_mnist.data.images import mnist_digit
from lit_mnist.data.mnist import load_mnist
from lit_mnist.serve import running

#: MNIST test digits the requests send.
COUNT = 12


@pytest.fixture(scope="module")
def server(mnist_mlp_checkpoint: Path) -> Any:
    with running(mnist_mlp_checkpoint, "--max_batch_size", "8", "--batch_timeout", "0.01") as url:
        yield url


@pytest.fixture(scope="module")
def model(mnist_mlp_checkpoint: Path) -> MLP:
    return MLP.load_from_checkpoint(mnist_mlp_checkpoint, map_location="cpu").eval()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_mnist(REPO / "data", train=False)
    return images[:COUNT].numpy(), labels[:COUNT].numpy()


def probs_of(model: MLP, pixels: np.ndarray) -> np.ndarray:
    """The model's probabilities for uint8 [N, 28, 28] MNIST-like pixels, computed here with torch alone."""
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32)).unsqueeze(1) / 255
    with torch.no_grad():
        return torch.softmax(model(x), dim=-1).numpy()


def post(url: str, body: bytes, content_type: str | None, method: str = "POST") -> tuple[int, dict]:
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(f"{url}/predict", data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def multipart(field: str, data: bytes, filename: str = "digit.png") -> tuple[bytes, str]:
    boundary = "lit-mnist-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` × ``height`` pixels but holds a few bytes of data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def paper(digit: np.ndarray, size: int, mode: str) -> Image.Image:
    """The MNIST digit as dark ink on light paper, enlarged to ``size`` px, in ``mode`` (RGB, L)."""
    return Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BICUBIC).convert(mode)


def good_requests(digits: tuple[np.ndarray, np.ndarray]) -> list[tuple[str, bytes, str, np.ndarray]]:
    """(kind, body, content type, the 28 × 28 the model should receive) for each kind of good input."""
    images, _ = digits
    out = []
    for i, digit in enumerate(images):
        kind = ("png", "jpeg", "form", "pixels")[i % 4]
        if kind == "pixels":
            out.append((kind, json.dumps({"pixels": digit.tolist()}).encode(), "application/json", digit))
            continue
        image = paper(digit, 112, "RGB" if kind == "jpeg" else "L")
        data = encode(image, "JPEG" if kind == "jpeg" else "PNG")
        # what predict_dir would make of this file (tested in test_monitoring)
        expected = mnist_digit(Image.open(io.BytesIO(data)))
        if kind == "form":
            body, content_type = multipart("image", data)
            out.append((kind, body, content_type, expected))
        else:
            out.append((kind, data, f"image/{kind}", expected))
    return out


def check_answer(answer: dict, expected_input: np.ndarray, model: MLP) -> None:
    assert set(answer) == {"label", "probs", "input"}
    probs = np.asarray(answer["probs"])
    assert probs.shape == (10,) and abs(probs.sum() - 1) < 1e-5
    np.testing.assert_array_equal(np.asarray(answer["input"]), expected_input)
    expected = probs_of(model, expected_input[None])[0]
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert answer["label"] == int(expected.argmax())


def test_every_good_input_gets_the_models_answer(server, model, digits):
    requests = good_requests(digits)
    for kind, body, content_type, expected in requests:
        status, answer = post(server, body, content_type)
        assert status == 200, (kind, answer)
        check_answer(answer, expected, model)
    # the model is good enough that on the raw test digits it mostly gives the true label
    _, labels = digits
    raw = [
        post(server, json.dumps({"pixels": d.tolist()}).encode(), "application/json")[1]["label"]
        for d in digits[0]
    ]
    assert sum(int(a == b) for a, b in zip(raw, labels, strict=True)) >= COUNT * 2 // 3


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, model, digits):
    requests = good_requests(digits) * 2
    bad = [(b"not an image", "image/png"), (b'{"pixels": 3}', "application/json"), (b"x", "text/plain")]
    jobs = [("good", r) for r in requests] + [("bad", b) for b in bad * 4]
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda job: post(server, *job[1][1:3]) if job[0] == "good" else post(server, *job[1]), jobs
            )
        )
    for (what, job), (status, answer) in zip(jobs, results, strict=True):
        if what == "good":
            assert status == 200, answer
            check_answer(answer, job[3], model)
        else:
            assert 400 <= status < 500 and answer["error"], answer


BIG = 6_000_000  # over the 5 MB image limit


@pytest.mark.parametrize(
    ("body", "content_type", "method", "status", "words"),
    [
        (b"", "image/png", "POST", 400, "empty"),
        (b"these are words, not pixels", "image/png", "POST", 422, "not a readable PNG or JPEG"),
        (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", "POST", 422, "not a readable PNG or JPEG"),
        (png_header(20_000, 20_000), "image/png", "POST", 422, "too large"),
        (png_header(5_000, 5_000), "image/png", "POST", 422, "5000 × 5000 pixels"),
        (b"\x89PNG" + bytes(BIG), "image/png", "POST", 413, "limit"),
        (b"", None, "GET", 405, "Use POST"),
        (b"", None, "PUT", 405, "Use POST"),
        (b"hello", "text/plain", "POST", 415, "Unsupported content type text/plain"),
        (b"hello", None, "POST", 415, "Unsupported content type"),
        (b'{"pixels": [[0, 1]', "application/json", "POST", 400, "not valid JSON"),
        (b"[1, 2, 3]", "application/json", "POST", 422, "object"),
        (json.dumps({"pixels": [[0] * 28] * 27}).encode(), "application/json", "POST", 422, "28 lists of 28"),
        (json.dumps({"pixels": [[0] * 27] * 28}).encode(), "application/json", "POST", 422, "28 lists of 28"),
        (json.dumps({"pixels": [["7"] * 28] * 28}).encode(), "application/json", "POST", 422, "numbers from 0 to 255"),
        (json.dumps({"pixels": [[True] * 28] * 28}).encode(), "application/json", "POST", 422, "numbers from 0 to 255"),
        (json.dumps({"pixels": [[300] * 28] * 28}).encode(), "application/json", "POST", 422, "numbers from 0 to 255"),
        (json.dumps({"pixels": [[float("nan")] * 28] * 28}).encode(), "application/json", "POST", 422, "got NaN"),
        (multipart("picture", b"data")[0], multipart("picture", b"")[1], "POST", 400, "no file field named image"),
        (b"--nope\r\n", "multipart/form-data; boundary=lit", "POST", 400, "form"),
    ],
    ids=[
        "empty", "not-an-image", "gif", "bomb-20000px", "over-4000x4000", "over-5MB", "GET", "PUT",
        "text-plain", "no-content-type", "broken-json", "json-list", "27-rows", "27-columns", "strings",
        "booleans", "over-255", "nan", "form-without-image", "broken-form",
    ],
)  # fmt: skip
def test_bad_input_gets_a_4xx_sentence_and_the_next_request_works(
    server, model, digits, body, content_type, method, status, words
):
    got, answer = post(server, body, content_type, method)
    assert got == status, answer
    assert set(answer) == {"error"} and words in answer["error"]
    assert answer["error"].endswith(".") and "\n" not in answer["error"]
    digit = digits[0][0]
    got, answer = post(server, json.dumps({"pixels": digit.tolist()}).encode(), "application/json")
    assert got == 200
    check_answer(answer, digit, model)


def test_page_and_health(server):
    with urllib.request.urlopen(f"{server}/", timeout=10) as response:
        assert response.status == 200 and response.headers["content-type"].startswith("text/html")
        page = response.read().decode()
    assert "<canvas" in page and 'id="clear"' in page and "fetch(" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside
    with urllib.request.urlopen(f"{server}/health", timeout=10) as response:
        assert response.status == 200 and response.read() == b"ok"


def test_missing_checkpoint_is_one_sentence(tmp_path):
    result = run_cli("serve", "--ckpt_path", str(tmp_path / "nothing.ckpt"), timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: Checkpoint file {tmp_path / 'nothing.ckpt'} does not exist."
    ]


def _main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """The CLI in this process: its exit code and standard error."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ckpt_path", "last"), "--ckpt_path last needs --config"),
        (("--ckpt_path", "last", "--config", str(REPO / "configs/cnn.yaml")), "no last.ckpt under lightning_logs/cnn/"),
        (("--ckpt_path", "x.ckpt", "--port", "80"), "--port must be from 1024 to 65535"),
        (("--ckpt_path", "x.ckpt", "--host", "example.com"), "invalid choice"),
        (("--ckpt_path", "x.ckpt", "--max_batch_size", "0"), "at least 1"),
        (("--port", "8000",), "the following arguments are required: --ckpt_path"),
        pytest.param(("--ckpt_path", "x.ckpt", "--accelerator", "gpu"), "finds no CUDA device",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")),
    ],
)  # fmt: skip
def test_bad_options_are_one_sentence(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stderr = _main(capsys, "serve", *args)
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), stderr


def test_model_class_is_checked_against_the_config(mnist_mlp_checkpoint, capsys):
    code, stderr = _main(
        capsys, "serve", "--ckpt_path", str(mnist_mlp_checkpoint), "--config", str(REPO / "configs/cnn.yaml")
    )
    assert code == 1
    assert "was saved from a lit_mnist.MLP model but the config asks for lit_mnist.CNN" in stderr
