"""A reward served over HTTP: for models that need their own environment (HPSv3, ImageReward)
or their own machine. The server side is ``drpo_bench.commands.serve`` (``drpo-bench serve-reward``).

Protocol (JSON over HTTP, standard library only):

    GET  /info   -> {"name", "config", "drpo_bench_version", "weights": {"checksum", "method"},
                     "fingerprint", "differentiable", "higher_is_better", "scale"[, "definition"]}
    POST /score  {"images": [base64 PNG, ...], "prompts": [str, ...]} -> {"scores": [float, ...], "fingerprint"}

Images travel as 8-bit PNG (nothing else is accepted), so the remote model scores the 8-bit
quantized image: a remote reward is never differentiable.

Identity: the client reads ``/info`` at start, sends the fingerprint it saw with every request
(header ``X-Reward-Fingerprint``) and checks the one in every reply, so a server restarted on the
same port with another reward, another config or other weights is refused with both identities
named, never silently used. ``identity()`` gives what to record next to results.

Transient failures (connection refused or reset, timeouts, a reply cut short or garbled, HTTP 429
and 5xx other than 500) are retried with exponential backoff (at least the server's Retry-After);
a 4xx or a 500 (the reward itself failed) is reported at once with the server's message.
Authentication: a shared token sent as ``Authorization: Bearer TOKEN`` (config ``token``, or the
environment variable ``DRPO_BENCH_REWARD_TOKEN``, which keeps it out of recorded configs).

Definition and reporting scale: the served reward's ``describe()`` when ``/info`` carries it as
"definition" (with its "scale", the factor to the paper's tables); otherwise the registered class
of the served ``name`` (e.g. ``imagereward``: x10) with its default config; otherwise scale 1.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import json
import os
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from drpo_bench.errors import UserError
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward
from drpo_bench.rewards.jpeg import to_uint8_hwc

RETRYABLE_STATUS = {429, 502, 503, 504}
TOKEN_ENV = "DRPO_BENCH_REWARD_TOKEN"
FINGERPRINT_HEADER = "X-Reward-Fingerprint"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 2048 * 2048  # per image: 4x an SDXL image; a PNG bomb past this is refused from its header
MAX_REQUEST_PIXELS = 64 * 1024 * 1024  # per request (64 SDXL images, ~0.8 GB as float RGB): bounds decoded memory
MAX_RETRY_AFTER = 30.0  # seconds: a server's Retry-After is honoured up to this


class ImageRejected(ValueError):
    """An image that is not a PNG, or whose header declares too many pixels."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def encode_png(images: torch.Tensor) -> list[str]:
    """(B, 3, H, W) in [0, 1] -> B base64 PNG strings (8-bit, rounded)."""
    out = []
    for array in to_uint8_hwc(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, without decoding; ImageRejected if not a PNG."""
    if not data.startswith(PNG_SIGNATURE):
        raise ImageRejected(f"not a PNG (starts with {data[:8]!r}); only PNG images are accepted")
    if len(data) < 33 or data[12:16] != b"IHDR" or struct.unpack(">I", data[8:12])[0] != 13:
        raise ImageRejected("malformed PNG: the first chunk is not a 13-byte IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def decode_png(items: Sequence[str], max_pixels: int = MAX_PIXELS, max_total_pixels: int = MAX_REQUEST_PIXELS) -> torch.Tensor:
    """B base64 PNG strings -> (B, 3, H, W) float32 in [0, 1].

    Every header is checked before any image is decoded: a non-PNG, or an image over ``max_pixels``
    (or a batch over ``max_total_pixels``), raises ImageRejected without decoding anything.
    """
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ImageRejected("`images` must be a list of base64 PNG strings")
    blobs, total = [], 0
    for i, item in enumerate(items):
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageRejected(f"image {i}: not base64: {exc}") from exc
        width, height = png_size(data)
        if width * height > max_pixels:
            raise ImageRejected(
                f"image {i}: PNG header says {width}x{height} = {width * height} pixels, over the server's cap of "
                f"{max_pixels} (serve-reward --max-pixels)", status=413,
            )
        total += width * height
        if total > max_total_pixels:
            raise ImageRejected(
                f"request over {max_total_pixels} pixels in all: lower the remote reward's batch_size", status=413
            )
        blobs.append(data)
    arrays = []
    for i, data in enumerate(blobs):
        image = Image.open(io.BytesIO(data), formats=["PNG"])  # the header only: pixels are decoded by convert
        if image.width * image.height > max_pixels:  # PIL's own reading of the header, before decoding
            raise ImageRejected(f"image {i}: {image.width}x{image.height} pixels is over {max_pixels}", status=413)
        arrays.append(np.asarray(image.convert("RGB")))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What the server sees: images rounded to 8 bits, as float in [0, 1]."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255.0


class RemoteConfig(StrictConfig):
    url: str = "http://127.0.0.1:8765"  # where `drpo-bench serve-reward NAME --port 8765` listens (loopback)
    timeout: float = 300.0  # seconds per request: a 7B reward model on a batch can take minutes on first call
    retries: int = 5  # transient failures tolerated per request before giving up
    backoff: float = 1.0  # seconds before the first retry; doubles each retry (1, 2, 4, 8, 16)
    batch_size: int = 16  # images per request: bounds request size (~0.5 MB per 512 px PNG)
    token: str | None = None  # shared secret for a server started with --token; None = env DRPO_BENCH_REWARD_TOKEN
    expected_name: str | None = None  # refuse a server serving another reward; None = accept what /info says
    expected_checksum: str | None = None  # refuse other weights (the `weights.checksum` of /info); None = any


class RemoteRewardError(UserError):
    """The reward server is down, unreachable, rejected the request, or changed identity."""


class _Retryable(Exception):
    """A reply that was cut short or garbled: worth another try."""


def describe_identity(info: dict[str, Any]) -> str:
    weights = info.get("weights") or {}
    return (
        f"{info.get('name')!r} config={json.dumps(info.get('config'), sort_keys=True)} "
        f"weights={weights.get('checksum')} drpo-bench={info.get('drpo_bench_version')}"
    )


@REWARDS.register("remote")
class RemoteReward(Reward):
    """A reward served by `drpo-bench serve-reward` over HTTP; never differentiable."""

    Config: ClassVar[type[StrictConfig]] = RemoteConfig
    differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True  # replaced per instance by what the server reports
    scale: ClassVar[str] = "whatever the served reward reports (see /info)"
    definition: ClassVar[dict[str, str]] = {
        "model": "the reward served at `url` (replaced by the server's definition)",
        "version": "remote",
        "formula": "the served reward's score, 8-bit PNG images over HTTP",
    }

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.base_url = config.url.rstrip("/")
        self.token = config.token or os.environ.get(TOKEN_ENV) or None
        self.fingerprint: str | None = None  # set below, then required to match on every request
        info = self._request("GET", "/info")
        if not info.get("fingerprint"):
            raise RemoteRewardError(
                f"reward server at {self.base_url} does not report an identity (/info has no fingerprint): "
                "it runs an older drpo-bench; upgrade it"
            )
        if config.expected_name is not None and info.get("name") != config.expected_name:
            raise RemoteRewardError(
                f"reward server at {self.base_url} serves {describe_identity(info)}, "
                f"not expected_name {config.expected_name!r}"
            )
        got_checksum = (info.get("weights") or {}).get("checksum")
        if config.expected_checksum is not None and got_checksum != config.expected_checksum:
            raise RemoteRewardError(
                f"reward server at {self.base_url} serves {describe_identity(info)}: weights checksum {got_checksum} "
                f"is not expected_checksum {config.expected_checksum}"
            )
        self.info = info
        self.fingerprint = str(info["fingerprint"])
        self.higher_is_better = bool(self.info.get("higher_is_better", True))  # type: ignore[misc]
        self.scale = str(self.info.get("scale", ""))  # type: ignore[misc]
        self.remote_name = str(self.info.get("name", "?"))
        self.definition, self.report_scale = served_definition(self.info, self.base_url)  # type: ignore[misc]

    def identity(self) -> dict[str, Any]:
        """What to record with results: the served reward's name, config, weights checksum, version."""
        return {
            "url": self.base_url,
            "name": self.info.get("name"),
            "config": self.info.get("config"),
            "drpo_bench_version": self.info.get("drpo_bench_version"),
            "weights": self.info.get("weights"),
            "fingerprint": self.fingerprint,
        }

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores: list[float] = []
        n = self.config.batch_size
        for start in range(0, images.shape[0], n):
            body = {"images": encode_png(images[start : start + n]), "prompts": list(prompts[start : start + n])}
            count = len(body["prompts"])

            def check(reply: dict[str, Any], count: int = count) -> None:
                got = reply.get("scores")
                if not isinstance(got, list) or len(got) != count:
                    raise _Retryable(f"malformed reply: {str(reply)[:200]}")

            reply = self._request("POST", "/score", body, check=check)
            scores.extend(float(s) for s in reply["scores"])
        return torch.tensor(scores, dtype=torch.float32)

    # ---- transport -----------------------------------------------------------------------------
    def _changed(self, info: Any) -> RemoteRewardError:
        now = describe_identity(info) if isinstance(info, dict) else f"an unknown reward ({str(info)[:200]})"
        return RemoteRewardError(
            f"reward server at {self.base_url} changed identity: it served {describe_identity(self.info)} "
            f"and now serves {now}. Refusing to mix two rewards' scores in one run: restart the original "
            "reward server (same name, config and weights) or start a new run."
        )

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 check: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.fingerprint:
            headers[FINGERPRINT_HEADER] = self.fingerprint
        last_error = "no attempt"
        wait = 0.0
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(max(wait, self.config.backoff * 2 ** (attempt - 1)))
            wait = 0.0
            request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                    raw = response.read()
                try:
                    reply = json.loads(raw.decode())
                except (UnicodeDecodeError, ValueError) as exc:
                    raise _Retryable(f"garbled reply ({len(raw)} bytes): {exc}") from exc
                if not isinstance(reply, dict):
                    raise _Retryable(f"garbled reply: {str(reply)[:200]}")
                if self.fingerprint and reply.get("fingerprint") != self.fingerprint:
                    raise self._changed(reply if path == "/info" else self._peek_info())
                if check is not None:
                    check(reply)
                return reply
            except urllib.error.HTTPError as exc:
                payload = _error_body(exc)
                message = str(payload.get("error", ""))[:500] or (exc.reason if isinstance(exc.reason, str) else "")
                if exc.code == 409 and self.fingerprint:
                    raise self._changed(payload.get("identity") or message) from exc
                if exc.code not in RETRYABLE_STATUS:
                    hint = " (set the remote reward's `token`, or DRPO_BENCH_REWARD_TOKEN)" if exc.code == 401 else ""
                    raise RemoteRewardError(
                        f"reward server at {self.base_url} rejected {method} {path} (HTTP {exc.code}): {message}{hint}"
                    ) from exc
                wait = _retry_after(exc)
                last_error = f"HTTP {exc.code}: {message}"
            except (_Retryable, http.client.HTTPException) as exc:  # IncompleteRead, BadStatusLine, ...
                last_error = f"{type(exc).__name__}: {exc}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        raise RemoteRewardError(
            f"reward server at {self.base_url} did not answer {method} {path} after {self.config.retries + 1} tries "
            f"(last: {last_error}). Is it running? Start it with `drpo-bench serve-reward NAME --port PORT` "
            "(in the environment that has the reward's dependencies) and set `url` to match."
        )

    def _peek_info(self) -> Any:
        """The server's /info now, for an error message (no retries, no checks)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            request = urllib.request.Request(self.base_url + "/info", headers=headers)
            with urllib.request.urlopen(request, timeout=min(self.config.timeout, 30.0)) as response:
                return json.loads(response.read().decode())
        except Exception as exc:  # noqa: BLE001 - only for the message
            return f"/info unreadable: {type(exc).__name__}: {exc}"


def served_definition(info: dict[str, Any], url: str) -> tuple[dict[str, str], float]:
    """(definition, report_scale) of the reward behind ``/info``: its own, else its registered class's."""
    where = f"served at {url} as {info.get('name', '?')!r}"
    sent = info.get("definition")
    if isinstance(sent, dict) and sent:
        record = {str(k): str(v) for k, v in sent.items() if k not in ("scale", "range")}
        return {**record, "served": where}, float(sent.get("scale", 1.0))
    from drpo_bench.registry import REWARDS

    name = str(info.get("name", ""))
    if name in REWARDS.names():  # a built-in name only: never import a module a server names
        cls = REWARDS.get(name).cls
        return {**cls.definition, "served": f"{where} (its class defaults: /info sent no definition)"}, float(cls.report_scale)
    return {**RemoteReward.definition, "served": where}, 1.0

def _error_body(exc: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        payload = json.loads(exc.read().decode())
        return payload if isinstance(payload, dict) else {}
    except Exception:  # noqa: BLE001 - any unreadable body
        return {}


def _retry_after(exc: urllib.error.HTTPError) -> float:
    try:
        return min(float(exc.headers.get("Retry-After", 0)), MAX_RETRY_AFTER)
    except (TypeError, ValueError):
        return 0.0
