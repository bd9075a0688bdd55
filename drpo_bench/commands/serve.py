"""Serve any registered reward over HTTP (standard library only): the server of ``rewards/remote.py``.

    drpo-bench serve-reward hpsv3 --port 8765 --arg checkpoint=/models/HPSv3.safetensors

Binds 127.0.0.1 by default; binding any other address requires a shared token (``--token`` or
the environment variable ``DRPO_BENCH_REWARD_TOKEN``), checked on every request
(``Authorization: Bearer TOKEN``, else 401). Connections are accepted concurrently (several
cells, e.g. ``drpo-bench run --jobs N``, may share one server); one scoring thread runs the
model, so a GPU reward is never run from two threads at once. Requests that wait while it is
busy are merged into one reward call (``Batcher``: up to ``max_batch`` images of one size, in
arrival order; each client gets its own scores back), unless the reward sets
``merge_requests = False`` (a score that depends on the rest of its batch). A merged call can
round floats differently from separate ones (another batch size in the model's matrix products).
At most ``max_queue`` requests wait behind the one being scored (more get 503 with Retry-After,
which clients retry).

Hardening: a POST needs a plain non-negative ``Content-Length`` of at most ``max_body_bytes``
(else 411/400/413 before reading any of the body, and the connection is closed); exactly that
many bytes are read. Images must be PNG (signature checked, PIL restricted to PNG), and each
PNG's header is checked against ``max_pixels`` before anything is decoded (413).

Identity: ``GET /info`` reports the reward's name, config, drpo-bench version and a checksum of
its weights (``weights_checksum``), plus a ``fingerprint`` of all four; a request carrying
another fingerprint (header ``X-Reward-Fingerprint``) gets 409, so a client never mixes two
rewards' scores. ``fail_every`` (tests only) answers every n-th request with HTTP 503.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from drpo_bench import __version__
from drpo_bench.errors import UserError
from drpo_bench.registry import REWARDS

MAX_BODY_BYTES = 256 * 1024 * 1024  # 16 SDXL-size PNGs are ~50 MB as base64; refuse absurd bodies
MAX_QUEUE = 8  # requests waiting behind the one being scored; more get 503 + Retry-After
RETRY_AFTER_S = 1  # what a 503 from a full queue tells clients to wait
SOCKET_TIMEOUT_S = 120.0  # a client silent this long mid-request is dropped (frees its queue slot)
MAX_BATCH = 64  # images per merged reward call: four clients' default batches (remote batch_size 16)


def build_reward(name: str, args: dict[str, Any] | None) -> Any:
    entry = REWARDS.get(name)
    try:
        config = entry.parse_config(args or {})
    except Exception as exc:  # pydantic ValidationError
        raise UserError(f"reward {name!r}: bad arguments {args}: {exc}") from exc
    return entry.cls(config)


def _modules(obj: Any, prefix: str, depth: int, seen: set[int], out: list[tuple[str, Any]]) -> None:
    """Collect (attribute path, nn.Module) reachable from ``obj`` through attributes, lists and dicts."""
    import torch

    if id(obj) in seen or depth < 0:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        out.append((prefix, obj))
        return
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        items = list(vars(obj).items())
    else:
        return
    if len(items) > 10_000:  # a vocabulary or a cache, not a holder of models
        return
    for key, value in sorted(items, key=lambda kv: kv[0]):
        if isinstance(value, (str, bytes, int, float, bool, type(None))):
            continue
        _modules(value, f"{prefix}.{key}" if prefix else key, depth - 1, seen, out)


def weights_checksum(reward: Any) -> dict[str, Any]:
    """{"checksum", "method"}: sha256 over the state dicts of the nn.Modules the reward holds.

    Each tensor contributes its name, dtype, shape and raw bytes, in attribute and state-dict
    order, so the same weights give the same checksum in every process, on any device (one pass
    over the weights at start: a few seconds per GB). A reward without modules (a program such as
    ``jpeg``) has checksum None. A reward may define ``weights_checksum() -> dict`` to override.
    """
    import torch

    own = getattr(reward, "weights_checksum", None)
    if callable(own):
        return dict(own())
    found: list[tuple[str, Any]] = []
    _modules(reward, "", 4, set(), found)
    if not found:
        return {"checksum": None, "method": "none: the reward holds no torch modules"}
    digest = hashlib.sha256()
    count, shapes_only = 0, False
    for path, module in found:
        for key, tensor in module.state_dict().items():
            digest.update(f"{path}.{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
            if tensor.is_meta:
                shapes_only = True
                continue
            flat = tensor.detach().reshape(-1).contiguous().cpu()
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
            count += 1
    method = f"sha256 of the state-dict tensors (name, dtype, shape, bytes) of {len(found)} torch module(s)"
    if shapes_only:
        method += "; tensors on the meta device contribute name, dtype and shape only"
    return {"checksum": "sha256:" + digest.hexdigest(), "method": method}


def reward_identity(reward: Any, name: str) -> dict[str, Any]:
    """What ``GET /info`` reports: name, config, version, weights checksum, and their fingerprint."""
    config = getattr(reward, "config", None)
    try:
        config_json = config.model_dump(mode="json") if config is not None else None
    except AttributeError:
        config_json = str(config)
    identity = {
        "name": name,
        "config": config_json,
        "drpo_bench_version": __version__,
        "weights": weights_checksum(reward),
    }
    identity["fingerprint"] = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return identity


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or "": may resolve beyond this machine


def check_bind(host: str, token: str | None) -> None:
    """UserError unless ``host`` is loopback or a token guards the server."""
    if not is_loopback(host) and not token:
        raise UserError(
            f"refusing to serve on {host!r} without a token: anyone who reaches it could use the reward. "
            "Set --token (or DRPO_BENCH_REWARD_TOKEN) and the same `token` in the remote reward, or bind 127.0.0.1"
        )


@dataclass
class _Request:
    """One POST /score waiting for the scoring thread; ``reply`` = (HTTP status, JSON payload)."""

    items: list[str]  # base64 PNGs
    prompts: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    reply: tuple[int, dict[str, Any]] = (500, {"error": "not scored"})


class Batcher:
    """The one thread that runs the reward. Requests that arrived while it was busy are scored
    together: in arrival order, up to ``max_batch`` images, grouped by image size; each request's
    PNGs are decoded only when its batch is scored, so memory holds one batch, not the queue.
    ``merge=False`` (the reward's ``merge_requests``) scores each request alone. ``calls``: the
    number of requests in each reward call so far (what the tests and logs look at)."""

    def __init__(self, reward: Any, name: str, fingerprint: str, max_batch: int, max_pixels: int, merge: bool) -> None:
        self.reward, self.name, self.fingerprint = reward, name, fingerprint
        self.max_batch, self.max_pixels, self.merge = max(1, max_batch), max_pixels, merge
        self.calls: list[int] = []
        self._queue: queue.Queue[_Request] = queue.Queue()
        threading.Thread(target=self._loop, name=f"score-{name}", daemon=True).start()

    def waiting(self) -> int:
        return self._queue.qsize()

    def score(self, items: list[str], prompts: list[str]) -> tuple[int, dict[str, Any]]:
        """Queue a request and wait for its (status, payload)."""
        request = _Request(items, prompts)
        self._queue.put(request)
        request.done.wait()
        return request.reply

    def _loop(self) -> None:
        carry: _Request | None = None
        while True:
            group = [carry or self._queue.get()]
            carry, size = None, len(group[0].items)
            while self.merge and size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if size + len(nxt.items) > self.max_batch:
                    carry = nxt  # first in the next call: arrival order is kept
                    break
                group.append(nxt)
                size += len(nxt.items)
            try:
                self._score_group(group)
            finally:
                for request in group:
                    request.done.set()

    def _score_group(self, group: list[_Request]) -> None:
        from drpo_bench.rewards.remote import ImageRejected, decode_png

        by_size: dict[tuple[int, ...], list[tuple[_Request, Any]]] = {}
        for request in group:
            try:
                images = decode_png(request.items, max_pixels=self.max_pixels)
            except ImageRejected as exc:
                request.reply = (exc.status, {"error": f"image rejected: {exc}"})
                continue
            except Exception as exc:  # noqa: BLE001 - a broken PNG
                request.reply = (400, {"error": f"bad request: {type(exc).__name__}: {exc}"})
                continue
            by_size.setdefault(tuple(images.shape[1:]), []).append((request, images))
        for batch in by_size.values():
            self._score_batch(batch)

    def _score_batch(self, batch: list[tuple[_Request, Any]]) -> None:
        import torch

        try:
            scores = self.reward(torch.cat([images for _, images in batch]), [p for r, _ in batch for p in r.prompts])
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            if len(batch) > 1:  # whose request broke it? score each alone, so the others still get theirs
                for one in batch:
                    self._score_batch([one])
                return
            batch[0][0].reply = (500, {"error": f"{self.name} failed: {type(exc).__name__}: {exc}"})
            return
        self.calls.append(len(batch))
        values = [float(s) for s in scores.detach().float().cpu().tolist()]
        start = 0
        for request, images in batch:
            request.reply = (200, {"scores": values[start:start + images.shape[0]], "fingerprint": self.fingerprint})
            start += images.shape[0]


def make_server(reward: Any, name: str, host: str = "127.0.0.1", port: int = 0, fail_every: int = 0, *,
                token: str | None = None, max_queue: int = MAX_QUEUE, max_body_bytes: int = MAX_BODY_BYTES,
                max_pixels: int | None = None, max_batch: int = MAX_BATCH) -> ThreadingHTTPServer:
    """An HTTP server scoring with ``reward``; ``port=0`` picks a free port (see ``server.server_port``).

    Refuses (UserError, before binding) a non-loopback ``host`` without a ``token``. The server's
    ``batcher`` (``Batcher``) runs the reward, merging waiting requests up to ``max_batch`` images.
    """
    from drpo_bench.rewards.remote import FINGERPRINT_HEADER, MAX_PIXELS

    check_bind(host, token)
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    state_lock = threading.Lock()
    state = {"n": 0, "pending": 0}
    identity = reward_identity(reward, name)
    fingerprint = identity["fingerprint"]
    info = {
        **identity,
        "differentiable": False,  # images travel as 8-bit PNG: no gradient crosses the wire
        "higher_is_better": bool(reward.higher_is_better),
        "scale": str(reward.scale),
        "definition": reward.describe(),  # model / version / formula / reporting scale, config taken into account
        "merge_requests": bool(getattr(reward, "merge_requests", True)),  # waiting requests scored in one call
        "max_batch": max_batch,  # images per merged call
    }
    batcher = Batcher(reward, name, fingerprint, max_batch, max_pixels, merge=info["merge_requests"])
    expected_auth = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = SOCKET_TIMEOUT_S

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # quiet: one line per request would drown the training logs

        def _reply(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None,
                   close: bool = False) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if close:  # the request body was not read: the connection cannot carry another request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def _refused(self, close: bool) -> bool:
            """Answer auth failures, identity mismatches and injected failures; True if answered."""
            if expected_auth is not None:
                got = (self.headers.get("Authorization") or "").encode()
                if not hmac.compare_digest(got, expected_auth):
                    self._reply(401, {"error": "missing or wrong token (Authorization: Bearer TOKEN)"},
                                {"WWW-Authenticate": "Bearer"}, close=close)
                    return True
            expected = self.headers.get(FINGERPRINT_HEADER)
            if expected and expected != fingerprint:
                self._reply(409, {"error": f"this server serves another reward than fingerprint {expected}",
                                  "identity": identity}, close=close)
                return True
            with state_lock:
                state["n"] += 1
                n = state["n"]
            if fail_every and n % fail_every == 0:
                self._reply(503, {"error": f"injected failure (request {n}, fail_every={fail_every})"}, close=close)
                return True
            return False

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            close = bool(self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding"))
            if self._refused(close):
                return
            if self.path.rstrip("/") == "/info":
                self._reply(200, info, close=close)
            else:
                self._reply(404, {"error": f"no route {self.path}; use GET /info or POST /score"}, close=close)

        def _body_length(self) -> int | None:
            """The body's length from a plain Content-Length; else answer 4xx (closing) and None."""
            if self.headers.get("Transfer-Encoding"):
                self._reply(411, {"error": "Transfer-Encoding is not supported: send a Content-Length"}, close=True)
                return None
            values = self.headers.get_all("Content-Length") or []
            if not values:
                self._reply(411, {"error": "a Content-Length header is required"}, close=True)
                return None
            raw = values[0].strip()
            if len(values) > 1 or not (raw.isascii() and raw.isdigit()):
                self._reply(400, {"error": f"bad Content-Length {values!r}: one non-negative integer"}, close=True)
                return None
            length = int(raw)
            if length > max_body_bytes:
                self._reply(413, {"error": f"body of {length} bytes is over {max_body_bytes}: lower the remote "
                                           "reward's batch_size"}, close=True)
                return None
            return length

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = self._body_length()
            if length is None or self._refused(close=True):
                return
            if self.path.rstrip("/") != "/score":
                self._reply(404, {"error": f"no route {self.path}; use GET /info or POST /score"}, close=True)
                return
            with state_lock:
                if state["pending"] > max_queue:  # one scoring + max_queue waiting
                    full = True
                else:
                    full = False
                    state["pending"] += 1
            if full:
                self._reply(503, {"error": f"busy: {max_queue} requests already wait; retry later"},
                            {"Retry-After": str(RETRY_AFTER_S)}, close=True)
                return
            try:
                self._score(length)
            finally:
                with state_lock:
                    state["pending"] -= 1

        def _score(self, length: int) -> None:
            body = self.rfile.read(length)  # buffered: returns `length` bytes unless the client hung up
            if len(body) != length:
                self._reply(400, {"error": f"body ended after {len(body)} of {length} bytes"}, close=True)
                return
            try:
                request = json.loads(body)
                items, prompts = request["images"], [str(p) for p in request["prompts"]]
            except Exception as exc:  # noqa: BLE001 - any malformed request
                self._reply(400, {"error": f"bad request: {type(exc).__name__}: {exc}"})
                return
            if not isinstance(items, list) or len(items) != len(prompts):
                self._reply(400, {"error": f"bad request: {len(items) if isinstance(items, list) else 'no list of'} "
                                           f"images but {len(prompts)} prompts"})
                return
            self._reply(*batcher.score(items, prompts))

    server = ThreadingHTTPServer((host, port), Handler)
    server.batcher = batcher  # type: ignore[attr-defined]
    return server


def serve_reward(name: str, args: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 8765,
                 fail_every: int = 0, token: str | None = None, max_queue: int = MAX_QUEUE,
                 max_pixels: int | None = None, max_batch: int = MAX_BATCH) -> None:
    """Build reward ``name`` with ``args`` and serve it until interrupted.

    Prints one line ``serving NAME at http://HOST:PORT`` (flushed) once it accepts requests.
    ``token`` defaults to the environment variable DRPO_BENCH_REWARD_TOKEN.
    """
    from PIL import Image

    from drpo_bench.rewards.remote import MAX_PIXELS, TOKEN_ENV

    token = token or os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)  # before loading the model
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL's own bomb guard, behind the header check (this process serves only)
    reward = build_reward(name, args)
    server = make_server(reward, name, host, port, fail_every, token=token, max_queue=max_queue, max_pixels=max_pixels,
                         max_batch=max_batch)
    print(f"serving {name} at http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---- command line -------------------------------------------------------------------------------


def _parse_arg(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--arg expects KEY=VALUE, got {item!r}")
    return key, yaml.safe_load(value)


def add_serve_reward_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``serve-reward NAME --port P [--host H] [--token T] [--arg K=V ...]``; the handler is ``run_serve_reward``."""
    parser = subparsers.add_parser(
        "serve-reward",
        help="serve a registered reward over HTTP (for the `remote` reward)",
        description="Serve a registered reward over HTTP; point a `remote` reward's url at it.",
    )
    parser.add_argument("name", help="registered reward name (see `drpo-bench ls rewards`)")
    parser.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port, printed at start)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    parser.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                        help="reward config value, YAML-parsed (repeatable)")
    parser.add_argument("--token", default=None,
                        help="shared secret clients must send (default: env DRPO_BENCH_REWARD_TOKEN; required off loopback)")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE, help="requests waiting beyond this get 503")
    parser.add_argument("--max-pixels", type=int, default=None, help="pixels per image (default 2048*2048)")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH,
                        help="images per reward call when waiting requests are merged (1: no merging; default %(default)s)")
    parser.add_argument("--fail-every", type=int, default=0, help=argparse.SUPPRESS)  # tests: 503 every n-th request
    parser.set_defaults(func=run_serve_reward)
    return parser


def run_serve_reward(ns: argparse.Namespace) -> int:
    args = dict(_parse_arg(item) for item in ns.arg)
    serve_reward(ns.name, args, host=ns.host, port=ns.port, fail_every=ns.fail_every, token=ns.token,
                 max_queue=ns.max_queue, max_pixels=ns.max_pixels, max_batch=ns.max_batch)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m drpo_bench.commands.serve NAME --port P``: the same as ``drpo-bench serve-reward``."""
    parser = argparse.ArgumentParser(prog="python -m drpo_bench.commands.serve")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_reward_parser(subparsers)
    ns = parser.parse_args(["serve-reward", *(sys.argv[1:] if argv is None else argv)])
    try:
        return ns.func(ns)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
