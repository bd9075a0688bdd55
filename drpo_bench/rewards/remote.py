"""A reward served over HTTP: for models that need their own environment (HPSv3, ImageReward)
or their own machine. The server side is ``drpo_bench.serve`` (``drpo-bench serve-reward``).

Protocol (JSON over HTTP, standard library only):

    GET  /info   -> {"name", "differentiable", "higher_is_better", "scale"[, "definition"]}
    POST /score  {"images": [base64 PNG, ...], "prompts": [str, ...]} -> {"scores": [float, ...]}

Images travel as 8-bit PNG, so the remote model scores the 8-bit quantized image: a remote
reward is never differentiable. Transient failures (connection refused, timeouts, HTTP 429 and
5xx other than 500) are retried with exponential backoff; a 4xx or a 500 (the reward itself
failed) is reported at once with the server's message.

Definition and reporting scale: the served reward's ``describe()`` when ``/info`` carries it as
"definition" (with its "scale", the factor to the paper's tables); otherwise the registered class
of the served ``name`` (e.g. ``imagereward``: x10) with its default config; otherwise scale 1.
"""

from __future__ import annotations

import base64
import io
import json
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


def encode_png(images: torch.Tensor) -> list[str]:
    """(B, 3, H, W) in [0, 1] -> B base64 PNG strings (8-bit, rounded)."""
    out = []
    for array in to_uint8_hwc(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        out.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return out


def decode_png(items: Sequence[str]) -> torch.Tensor:
    """B base64 PNG strings -> (B, 3, H, W) float32 in [0, 1]."""
    arrays = [np.asarray(Image.open(io.BytesIO(base64.b64decode(item))).convert("RGB")) for item in items]
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


class RemoteRewardError(UserError):
    """The reward server is down, unreachable, or rejected the request."""


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
        self.info = self._request("GET", "/info")
        self.higher_is_better = bool(self.info.get("higher_is_better", True))  # type: ignore[misc]
        self.scale = str(self.info.get("scale", ""))  # type: ignore[misc]
        self.remote_name = str(self.info.get("name", "?"))
        self.definition, self.report_scale = served_definition(self.info, self.base_url)  # type: ignore[misc]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        scores: list[float] = []
        n = self.config.batch_size
        for start in range(0, images.shape[0], n):
            body = {"images": encode_png(images[start : start + n]), "prompts": list(prompts[start : start + n])}
            reply = self._request("POST", "/score", body)
            got = reply.get("scores")
            if not isinstance(got, list) or len(got) != len(body["prompts"]):
                raise RemoteRewardError(f"reward server at {self.base_url} sent a malformed reply: {str(reply)[:200]}")
            scores.extend(float(s) for s in got)
        return torch.tensor(scores, dtype=torch.float32)

    # ---- transport -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        last_error = "no attempt"
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(
                self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                    return json.loads(response.read().decode())
            except urllib.error.HTTPError as exc:
                message = _error_message(exc)
                if exc.code not in RETRYABLE_STATUS:
                    raise RemoteRewardError(
                        f"reward server at {self.base_url} rejected {method} {path} (HTTP {exc.code}): {message}"
                    ) from exc
                last_error = f"HTTP {exc.code}: {message}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last_error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        raise RemoteRewardError(
            f"reward server at {self.base_url} did not answer {method} {path} after {self.config.retries + 1} tries "
            f"(last: {last_error}). Is it running? Start it with `drpo-bench serve-reward NAME --port PORT` "
            "(in the environment that has the reward's dependencies) and set `url` to match."
        )


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


def _error_message(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read().decode()).get("error", ""))[:500]
    except Exception:  # noqa: BLE001 - any unreadable body
        return exc.reason if isinstance(exc.reason, str) else ""
