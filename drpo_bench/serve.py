"""Serve any registered reward over HTTP (standard library only): the server of ``rewards/remote.py``.

    drpo-bench serve-reward hpsv3 --port 8765 --arg checkpoint=/models/HPSv3.safetensors

Binds 127.0.0.1 by default. Requests are scored one at a time (a lock around the model), so a
GPU reward is never run from two threads at once; connections are still accepted concurrently.
``fail_every`` (tests only) answers every n-th request with HTTP 503, to exercise clients' retries.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

from drpo_bench.errors import UserError
from drpo_bench.registry import REWARDS

MAX_BODY_BYTES = 512 * 1024 * 1024  # a batch of 512 px PNGs is a few MB; refuse absurd bodies


def build_reward(name: str, args: dict[str, Any] | None) -> Any:
    entry = REWARDS.get(name)
    try:
        config = entry.parse_config(args or {})
    except Exception as exc:  # pydantic ValidationError
        raise UserError(f"reward {name!r}: bad arguments {args}: {exc}") from exc
    return entry.cls(config)


def make_server(reward: Any, name: str, host: str = "127.0.0.1", port: int = 0, fail_every: int = 0) -> ThreadingHTTPServer:
    """An HTTP server scoring with ``reward``; ``port=0`` picks a free port (see ``server.server_port``)."""
    from drpo_bench.rewards.remote import decode_png

    lock = threading.Lock()
    counter = {"n": 0}
    info = {
        "name": name,
        "differentiable": False,  # images travel as 8-bit PNG: no gradient crosses the wire
        "higher_is_better": bool(reward.higher_is_better),
        "scale": str(reward.scale),
    }

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # quiet: one line per request would drown the training logs

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _injected_failure(self) -> bool:
            with lock:
                counter["n"] += 1
                n = counter["n"]
            if fail_every and n % fail_every == 0:
                self._reply(503, {"error": f"injected failure (request {n}, fail_every={fail_every})"})
                return True
            return False

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if self._injected_failure():
                return
            if self.path.rstrip("/") == "/info":
                self._reply(200, info)
            else:
                self._reply(404, {"error": f"no route {self.path}; use GET /info or POST /score"})

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(413, {"error": f"body of {length} bytes is over {MAX_BODY_BYTES}"})
                return
            body = self.rfile.read(length)
            if self._injected_failure():
                return
            if self.path.rstrip("/") != "/score":
                self._reply(404, {"error": f"no route {self.path}; use GET /info or POST /score"})
                return
            try:
                request = json.loads(body)
                images, prompts = decode_png(request["images"]), [str(p) for p in request["prompts"]]
            except Exception as exc:  # noqa: BLE001 - any malformed request
                self._reply(400, {"error": f"bad request: {type(exc).__name__}: {exc}"})
                return
            try:
                with lock:
                    scores = reward(images, prompts)
            except Exception as exc:  # noqa: BLE001 - report, keep serving
                self._reply(500, {"error": f"{name} failed: {type(exc).__name__}: {exc}"})
                return
            self._reply(200, {"scores": [float(s) for s in scores.detach().float().cpu().tolist()]})

    return ThreadingHTTPServer((host, port), Handler)


def serve_reward(name: str, args: dict[str, Any] | None = None, host: str = "127.0.0.1", port: int = 8765,
                 fail_every: int = 0) -> None:
    """Build reward ``name`` with ``args`` and serve it until interrupted.

    Prints one line ``serving NAME at http://HOST:PORT`` (flushed) once it accepts requests.
    """
    reward = build_reward(name, args)
    server = make_server(reward, name, host, port, fail_every)
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
    """Add ``serve-reward NAME --port P [--host H] [--arg K=V ...]``; the handler is ``run_serve_reward``."""
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
    parser.add_argument("--fail-every", type=int, default=0, help=argparse.SUPPRESS)  # tests: 503 every n-th request
    parser.set_defaults(func=run_serve_reward)
    return parser


def run_serve_reward(ns: argparse.Namespace) -> int:
    args = dict(_parse_arg(item) for item in ns.arg)
    serve_reward(ns.name, args, host=ns.host, port=ns.port, fail_every=ns.fail_every)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m drpo_bench.serve NAME --port P``: the same as ``drpo-bench serve-reward``."""
    parser = argparse.ArgumentParser(prog="python -m drpo_bench.serve")
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
