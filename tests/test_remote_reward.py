"""The remote reward against a real `serve-reward` subprocess on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from drpo_bench.registry import REWARDS

from drpo_bench.errors import UserError
from drpo_bench.rewards.jpeg import JPEGCompressibility
from drpo_bench.rewards.remote import RemoteReward, decode_png, encode_png, quantize
from drpo_bench.serve import add_serve_reward_parser, make_server, run_serve_reward

PROMPTS = ["a photo of a red cat", "two dogs", "a blue bench", "a green car", "three apples"]


@contextmanager
def served(name: str, *extra: str):
    """`python -m drpo_bench.serve NAME --port 0 ...` in a subprocess; yields its loopback URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "drpo_bench.serve", name, "--port", "0", "--host", "127.0.0.1", *extra],
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
    local = REWARDS.build("pickscore-tiny")(quantize(images), PROMPTS)
    with served("pickscore-tiny") as url:
        remote = RemoteReward(RemoteReward.Config(url=url, batch_size=2))
        assert remote.remote_name == "pickscore-tiny" and remote.higher_is_better and not remote.differentiable
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
