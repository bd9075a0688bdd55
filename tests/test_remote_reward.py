"""The remote reward against a real `serve-reward` subprocess on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import argparse
import base64
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from drpo_bench.errors import UserError
from drpo_bench.registry import REWARDS
from drpo_bench.rewards.jpeg import JPEGCompressibility
from drpo_bench.rewards.shapes_checker import ShapesChecker
from drpo_bench.rewards.remote import RemoteReward, decode_png, encode_png, quantize
from drpo_bench.commands.serve import add_serve_reward_parser, make_server, run_serve_reward, weights_checksum

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a red cat", "two dogs", "a blue bench", "a green car", "three apples"]


@contextmanager
def served(name: str, *extra: str):
    """`python -m drpo_bench.commands.serve NAME --port 0 ...` in a subprocess; yields its loopback URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "drpo_bench.commands.serve", name, "--port", "0", "--host", "127.0.0.1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    try:
        line = proc.stdout.readline()  # "serving NAME at http://127.0.0.1:PORT" once it accepts requests
        if not line.startswith("serving"):
            proc.kill()
            raise AssertionError(f"server did not start: {line!r} {proc.stderr.read()[-2000:]}")
        url = line.split(" at ")[1].strip()
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_png_roundtrip_is_8bit_quantization():
    images = torch.rand(3, 3, 16, 24)
    torch.testing.assert_close(decode_png(encode_png(images)), quantize(images))


def test_http_scores_equal_in_process_scores():
    images = torch.rand(len(PROMPTS), 3, 32, 32)
    local_reward = REWARDS.build("pickscore-tiny")
    local = local_reward(quantize(images), PROMPTS)
    with served("pickscore-tiny") as url:
        remote = RemoteReward(RemoteReward.Config(url=url, batch_size=2))
        assert remote.remote_name == "pickscore-tiny" and remote.higher_is_better and not remote.differentiable
        # the weights checksum is the same in another process (a restart) as in this one
        assert remote.identity()["weights"] == weights_checksum(local_reward)
        torch.testing.assert_close(remote(images, PROMPTS), local, rtol=1e-5, atol=1e-5)


def test_client_retries_through_a_flaky_server():
    images = torch.rand(6, 3, 32, 32)
    prompts = [f"p{i}" for i in range(6)]
    local = JPEGCompressibility()(images, prompts)
    with served("jpeg", "--fail-every", "2") as url:  # every second request answers HTTP 503
        remote = RemoteReward(RemoteReward.Config(url=url, batch_size=2, retries=3, backoff=0.01))
        torch.testing.assert_close(remote(images, prompts), local)


def test_server_down_is_a_clear_user_error():
    server = make_server(JPEGCompressibility(), "jpeg")  # bind a free port, then close it: nobody listens
    port = server.server_port
    server.server_close()
    with pytest.raises(UserError, match="serve-reward") as info:
        RemoteReward(RemoteReward.Config(url=f"http://127.0.0.1:{port}", retries=2, backoff=0.01, timeout=2))
    assert "after 3 tries" in str(info.value)


def test_bad_requests_are_rejected_not_retried():
    server = make_server(JPEGCompressibility(), "jpeg")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        request = urllib.request.Request(url + "/score", data=b"{not json", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 400 and "bad request" in json.loads(info.value.read())["error"]
        remote = RemoteReward(RemoteReward.Config(url=url, retries=5, backoff=5.0))
        with pytest.raises(UserError, match="HTTP 400"):  # 4xx: no retry (backoff 5 s would show)
            remote._request("POST", "/score", {"images": ["not base64 png"], "prompts": ["x"]})
    finally:
        server.shutdown()
        server.server_close()


def test_cli_parser_wiring():
    parser = argparse.ArgumentParser()
    add_serve_reward_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["serve-reward", "hpsv2", "--port", "8765", "--arg", "version=v2.0", "--arg", "device=cpu"])
    assert ns.func is run_serve_reward and ns.host == "127.0.0.1" and ns.port == 8765
    assert ns.arg == ["version=v2.0", "device=cpu"] and ns.fail_every == 0
    assert ns.token is None and ns.max_queue == 8 and ns.max_pixels is None
    ns = parser.parse_args(["serve-reward", "jpeg", "--port", "0", "--token", "t", "--max-queue", "2", "--max-pixels", "99"])
    assert (ns.token, ns.max_queue, ns.max_pixels) == ("t", 2, 99)


# ---- hardening: size caps, PNG only, identity, retries, queue, token ---------------------------


@contextmanager
def in_process(reward=None, name="jpeg", port=0, **kwargs):
    """make_server on 127.0.0.1 in a thread; yields (url, server); shut down on exit."""
    server = make_server(reward if reward is not None else JPEGCompressibility(), name, "127.0.0.1", port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def raw_exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send raw request bytes, keep the socket open (no body beyond `body`), read the reply until EOF or 5 s."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return data
            data += chunk
        raise AssertionError(f"server did not answer and close within 5 s; got {data[:300]!r}")


def png_body(items) -> bytes:
    return json.dumps({"images": items, "prompts": ["x"] * len(items)}).encode()


def post(url: str, data: bytes, headers: dict | None = None, timeout: float = 10):
    request = urllib.request.Request(url + "/score", data=data, method="POST", headers=headers or {})
    return urllib.request.urlopen(request, timeout=timeout)


@pytest.mark.parametrize("header, status", [
    (b"Content-Length: -1\r\n", 400), (b"", 411), (b"Content-Length: 12abc\r\n", 400),
    (b"Content-Length: 1000000000000\r\n", 413),
])
def test_content_length_is_checked_before_reading(header, status):
    with in_process(max_body_bytes=1 << 20) as (url, server):
        # the "body" that follows would be a second request if the server read on past its reply
        reply = raw_exchange(server.server_port, b"POST /score HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n",
                             b"GET /info HTTP/1.1\r\nHost: x\r\n\r\n")
    first_line = reply.split(b"\r\n", 1)[0]
    assert first_line.startswith(f"HTTP/1.1 {status}".encode()), reply[:300]
    assert b"Connection: close" in reply and reply.count(b"HTTP/1.1") == 1  # nothing smuggled after the refusal


def test_body_over_the_cap_is_refused():
    with in_process(max_body_bytes=1000) as (url, _):
        with pytest.raises(urllib.error.HTTPError) as info:
            post(url, png_body(encode_png(torch.rand(2, 3, 32, 32))))
    assert info.value.code == 413 and "batch_size" in json.loads(info.value.read())["error"]


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "GIF"])
def test_only_png_is_accepted(fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, format=fmt)
    with in_process() as (url, _):
        with pytest.raises(urllib.error.HTTPError) as info:
            post(url, png_body([base64.b64encode(buffer.getvalue()).decode()]))
    assert info.value.code == 400 and "only PNG" in json.loads(info.value.read())["error"]


def bomb_png(side: int = 6000) -> bytes:
    """A real grayscale PNG of side x side zero pixels (~36 MB decoded, ~35 KB on disk)."""
    compressor, row, raw = zlib.compressobj(9), b"\x00" * (side + 1), []
    for _ in range(side):
        raw.append(compressor.compress(row))
    raw.append(compressor.flush())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(raw)) + chunk(b"IEND", b"")


def test_png_bomb_is_rejected_from_its_header_before_decoding(monkeypatch):
    import drpo_bench.rewards.remote as remote_module

    opened = []
    real_open = remote_module.Image.open
    monkeypatch.setattr(remote_module.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    body = png_body([base64.b64encode(bomb_png()).decode()])
    with in_process() as (url, _):
        tracemalloc.start()
        try:
            with pytest.raises(urllib.error.HTTPError) as info:
                post(url, body)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    error = json.loads(info.value.read())["error"]
    assert info.value.code == 413 and "6000x6000" in error and "pixels" in error
    assert not opened, "PIL opened the bomb: the header check must come first"
    assert peak < 8 * 1024 * 1024, peak  # the work is bounded by the bytes held: 36 MB decoded would show


def test_identity_is_reported_and_stable(monkeypatch):
    a, b = REWARDS.build("pickscore-tiny"), REWARDS.build("pickscore-tiny")
    with in_process(a, "pickscore-tiny") as (url, _):
        remote = RemoteReward(RemoteReward.Config(url=url))
        first = remote.identity()
    with in_process(b, "pickscore-tiny") as (url, _):
        assert RemoteReward(RemoteReward.Config(url=url)).identity()["fingerprint"] == first["fingerprint"]
    assert first["name"] == "pickscore-tiny" and first["config"]["pretrained"] == "tiny:clip" and first["config"]["dtype"] == "fp32"
    assert first["weights"]["checksum"].startswith("sha256:") and "state-dict" in first["weights"]["method"]
    with torch.no_grad():
        next(b.clip.model.parameters()).add_(1e-3)  # other weights, same name and config
    with in_process(b, "pickscore-tiny") as (url, _):
        with pytest.raises(UserError, match="expected_checksum"):
            RemoteReward(RemoteReward.Config(url=url, expected_checksum=first["weights"]["checksum"]))
        with pytest.raises(UserError, match="not expected_name 'hpsv2'"):
            RemoteReward(RemoteReward.Config(url=url, expected_name="hpsv2"))


def test_swapped_reward_on_the_same_port_is_refused():
    images, prompts = torch.rand(2, 3, 16, 16), ["a", "b"]
    with in_process(JPEGCompressibility(), "jpeg") as (url, server):
        port = server.server_port
        remote = RemoteReward(RemoteReward.Config(url=url, retries=2, backoff=0.01))
        expected = remote(images, prompts)
    with in_process(JPEGCompressibility(), "jpeg", port=port):  # the same reward restarted: fine
        torch.testing.assert_close(remote(images, prompts), expected)
    incompressible = JPEGCompressibility(JPEGCompressibility.Config(mode="incompressibility"))
    with in_process(incompressible, "jpeg", port=port):  # same name, other config
        with pytest.raises(UserError, match="changed identity") as info:
            remote(images, prompts)
    assert "compressibility" in str(info.value) and "incompressibility" in str(info.value)
    with in_process(ShapesChecker(), "shapes-checker", port=port):
        with pytest.raises(UserError, match="changed identity.*'jpeg'.*'shapes-checker'"):
            remote(images, prompts)


@contextmanager
def cutting_proxy(upstream_port: int, modes: list[str]):
    """A one-request-per-connection TCP proxy; per connection, mode "pass", "cut" (half the reply) or "garble"."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    queue = list(modes)

    def serve_one(conn: socket.socket, mode: str) -> None:
        with conn, socket.create_connection(("127.0.0.1", upstream_port), timeout=10) as up:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            up.sendall(head + b"\r\n\r\n" + body)
            reply = b""
            while chunk := up.recv(65536):  # the client sent Connection: close, so the server closes
                reply += chunk
            reply_head, _, reply_body = reply.partition(b"\r\n\r\n")
            if mode == "cut":
                reply = reply_head + b"\r\n\r\n" + reply_body[: len(reply_body) // 2]
            elif mode == "garble":
                reply = reply_head + b"\r\n\r\n" + b"\xff" * len(reply_body)
            conn.sendall(reply)

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            serve_one(conn, queue.pop(0) if queue else "pass")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


def test_truncated_and_garbled_replies_are_retried():
    images, prompts = torch.rand(3, 3, 16, 16), ["a", "b", "c"]
    local = JPEGCompressibility()(images, prompts)
    with in_process() as (_, server):
        with cutting_proxy(server.server_port, ["cut", "pass", "cut", "garble", "pass"]) as url:
            remote = RemoteReward(RemoteReward.Config(url=url, retries=2, backoff=0.01))  # /info: cut, then ok
            torch.testing.assert_close(remote(images, prompts), local)  # /score: cut, garbled, then ok
        with cutting_proxy(server.server_port, ["pass"] + ["cut"] * 10) as url:
            remote = RemoteReward(RemoteReward.Config(url=url, retries=2, backoff=0.01))
            with pytest.raises(UserError, match=f"{url}.*after 3 tries.*IncompleteRead"):
                remote(images, prompts)


class BlockingReward(JPEGCompressibility):
    """Scores only once `release` is set, so a test can fill the server's queue."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def score(self, images, prompts):
        self.entered.set()
        assert self.release.wait(timeout=20)
        return super().score(images, prompts)


def test_full_queue_answers_503_and_the_client_retries():
    reward = BlockingReward()
    images, prompts = torch.rand(1, 3, 16, 16), ["a"]
    with in_process(reward, max_queue=0) as (url, _):
        busy = threading.Thread(target=lambda: post(url, png_body(encode_png(images)), timeout=30).read(), daemon=True)
        busy.start()
        assert reward.entered.wait(timeout=10)
        with pytest.raises(urllib.error.HTTPError) as info:  # one being scored, none may wait
            post(url, png_body(encode_png(images)))
        assert info.value.code == 503 and info.value.headers["Retry-After"] == "1"
        remote = RemoteReward(RemoteReward.Config(url=url, retries=4, backoff=0.01, timeout=30))
        threading.Timer(0.3, reward.release.set).start()
        torch.testing.assert_close(remote(images, prompts), JPEGCompressibility()(images, prompts))
        busy.join(timeout=20)


def test_token_authentication(monkeypatch):
    monkeypatch.delenv("DRPO_BENCH_REWARD_TOKEN", raising=False)
    images, prompts = torch.rand(2, 3, 16, 16), ["a", "b"]
    with in_process(token="s3cret") as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(urllib.request.Request(url + "/info", headers=headers), timeout=10)
            assert info.value.code == 401
        with pytest.raises(UserError, match="HTTP 401.*token"):
            RemoteReward(RemoteReward.Config(url=url, retries=0))
        remote = RemoteReward(RemoteReward.Config(url=url, token="s3cret"))
        torch.testing.assert_close(remote(images, prompts), JPEGCompressibility()(images, prompts))
        monkeypatch.setenv("DRPO_BENCH_REWARD_TOKEN", "s3cret")
        assert RemoteReward(RemoteReward.Config(url=url)).identity()["name"] == "jpeg"
        assert "s3cret" not in json.dumps(remote.identity())


def test_non_loopback_bind_needs_a_token(monkeypatch):
    monkeypatch.delenv("DRPO_BENCH_REWARD_TOKEN", raising=False)
    for host in ("0.0.0.0", "", "192.168.1.7", "example.org"):
        with pytest.raises(UserError, match="without a token"):
            make_server(JPEGCompressibility(), "jpeg", host=host)  # refused before binding
    parser = argparse.ArgumentParser()
    add_serve_reward_parser(parser.add_subparsers(dest="command"))
    ns = parser.parse_args(["serve-reward", "jpeg", "--port", "0", "--host", "0.0.0.0"])
    with pytest.raises(UserError, match="without a token"):
        run_serve_reward(ns)


def test_a_served_training_reward_is_recorded_and_its_token_is_not(tmp_path, monkeypatch):
    """The cell records which reward answered (/info identity); a suite's token never reaches results."""
    import json as _json

    from drpo_bench.suite.config import load_suite
    from drpo_bench.run.runner import run_suite

    with in_process(token="s3cret-token") as (url, _):
        toy = Path(__file__).resolve().parents[1] / "suites" / "toy" / "harness.yaml"
        suite = load_suite(toy, ["seeds=[0]", "budget.steps=1", f"rewards={{served: {{name: remote, args: {{url: '{url}', token: s3cret-token}}}}}}",
                                 "train_rewards=[served]", "methods=[{id: raft, method: raft}]", "eval.metrics=[served]"])
        out = tmp_path / "run"
        assert not run_suite(suite, out, quiet=True).failures
    cell = _json.loads((out / "toy--raft--served--s0" / "cell.json").read_text())
    assert cell["train_reward_identity"]["name"] == "jpeg" and cell["train_reward_identity"]["fingerprint"]
    everything = "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".md"))
    assert "s3cret-token" not in everything and "<redacted>" in everything


def test_a_checkpoint_is_not_resumed_against_another_served_reward(tmp_path):
    """A cell trained against a served reward is interrupted (its server fails after the first
    checkpoint); rerun against a server serving another reward on the same address, the cell is
    refused, not resumed; rerun against the original reward, it resumes."""
    from drpo_bench.toy import ToyRedness, ToyRednessBlackBox

    out = tmp_path / "out"
    pointer = out / "toy--raft--served--s0" / "checkpoint.json"

    class FailsAfterCheckpoint(ToyRedness):  # the server "goes down" once the cell has checkpointed
        def score(self, images, prompts):
            if pointer.exists():
                raise RuntimeError("server going down")
            return super().score(images, prompts)

    def run_toy(url: str) -> subprocess.CompletedProcess:
        served = f"rewards.served={{name: remote, args: {{url: '{url}', retries: 1, backoff: 0.01}}}}"
        return subprocess.run(
            [sys.executable, "-m", "drpo_bench", "run", "suites/toy/harness.yaml", served, "seeds=[0]",
             "methods=[{id: raft, method: raft, reward: served}]", "eval.metrics=[redness]", "budget.steps=6",
             "--output", str(out), "--quiet"],
            cwd=REPO, capture_output=True, text=True, timeout=600)

    with in_process(FailsAfterCheckpoint(ToyRedness.Config()), "toy-redness") as (url, server):
        port = server.server_port
        first = run_toy(url)
    assert first.returncode != 0 and pointer.exists(), first.stderr
    step = json.loads(pointer.read_text())["step"]
    log = (pointer.parent / "train.jsonl").read_text()
    assert json.loads(pointer.read_text())["reward_identity"]["name"] == "toy-redness"

    with in_process(ToyRednessBlackBox(ToyRednessBlackBox.Config()), "toy-redness-blackbox", port=port) as (url, _):
        swapped = run_toy(url)
    message = " ".join(swapped.stderr.split())
    assert swapped.returncode == 2, swapped.stderr
    assert "not resumed" in message and "'toy-redness'" in message and "'toy-redness-blackbox'" in message
    assert "Traceback" not in swapped.stderr
    assert not (pointer.parent / "cell.json").exists() and json.loads(pointer.read_text())["step"] == step
    assert (pointer.parent / "train.jsonl").read_text() == log, "no update ran against the other reward"

    with in_process(ToyRedness(ToyRedness.Config()), "toy-redness", port=port) as (url, _):
        resumed = run_toy(url)
    assert resumed.returncode == 0 and "1 resumed" in resumed.stderr, resumed.stderr
    assert json.loads((pointer.parent / "cell.json").read_text())["resumed_from_step"] == step
