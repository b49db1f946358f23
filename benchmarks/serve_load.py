"""Load and fault test of `visionkit serve` on a loopback port: throughput and p50/p99 latency with
micro-batching on and off, every good request checked while bad uploads are sent, and the server's memory.

For each `--max-batch` setting a server process is started on 127.0.0.1, `--clients` threads send
`--requests` images in all (keep-alive connections), and, with `--faults`, another thread sends bad uploads
(empty, text, truncated, oversized, a decompression bomb) the whole time. Reported per setting: requests/s,
p50 and p99 latency, failed good requests, bad uploads answered 4xx, and the server's RSS before and after.

    python benchmarks/serve_load.py RUN_OR_CKPT [--requests 2000] [--clients 8] [--batches 1,8] [--faults]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def png(array: np.ndarray) -> bytes:
    """PNG bytes of an HWC uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def bad_uploads() -> list[tuple[str, bytes, int]]:
    """(name, body, expected status) of the uploads the server must refuse."""
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, format="PNG")  # 64 M pixels (the limit is 40 M) in a few KB
    noise = png(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return [("empty", b"", 400), ("text", b"not an image at all", 415), ("truncated", noise[:300], 415),
            ("bomb", bomb.getvalue(), 413)]  # fmt: skip


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(
    model: str, max_batch: int, env: dict[str, str] | None = None, extra: list[str] | None = None
) -> tuple[subprocess.Popen, int]:
    """A `visionkit serve` process (with `extra` arguments) on a free loopback port, once /health answers."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "tools" / "serve.py"), model, "--port", str(port), "--max-batch", str(max_batch)]
    cmd += extra or []
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})})  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return server, port
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}") from None
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit("the server did not answer /health in 180 s") from None
            time.sleep(0.3)


def run_load(
    model: str, max_batch: int, requests: int, clients: int, image: bytes, faults: bool, env: dict | None = None
) -> dict[str, Any]:
    """One setting's figures (see the module's docstring)."""
    server, port = start_server(model, max_batch, env)
    try:
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(3):
            warm.request("POST", "/predict", body=image, headers={"Content-Type": "image/png"})
            warm.getresponse().read()
        before = rss_mb(server.pid)
        latencies: list[float] = []
        failures: list[str] = []
        refused = {"ok": 0, "wrong": []}
        lock, stop = threading.Lock(), threading.Event()
        counter = iter(range(requests))

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in iter(lambda: next(counter, None), None):
                start = time.perf_counter()
                try:
                    connection.request("POST", "/predict", body=image, headers={"Content-Type": "image/png"})
                    answer = connection.getresponse()
                    body = answer.read()
                    ok = answer.status == 200 and json.loads(body)["predictions"]
                except (OSError, ValueError, http.client.HTTPException) as exc:
                    ok, body = False, str(exc).encode()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if not ok:
                        failures.append(body[:200].decode(errors="replace"))

        cases = bad_uploads()  # built before the clock starts

        def faulty() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            k = 0
            while not stop.is_set() or k < len(cases):  # every kind at least once
                name, body, status = cases[k % len(cases)]
                k += 1
                try:
                    connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
                    answer = connection.getresponse()
                    answer.read()
                    if answer.status == status:
                        refused["ok"] += 1
                    else:
                        refused["wrong"].append((name, answer.status))
                except (OSError, http.client.HTTPException):
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                time.sleep(0.01)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        fault_thread = threading.Thread(target=faulty) if faults else None
        start = time.perf_counter()
        for t in threads + ([fault_thread] if fault_thread else []):
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        stop.set()
        if fault_thread:
            fault_thread.join()
        after = rss_mb(server.pid)
        ordered = sorted(latencies)
        return {
            "max_batch": max_batch, "requests": requests, "clients": clients, "seconds": round(seconds, 2),
            "requests_per_s": round(requests / seconds, 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
            "failed_good": len(failures), "failures": failures[:3], "bad_refused": refused["ok"],
            "bad_wrong": refused["wrong"][:3], "rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1),
        }  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    """Run each setting and print a table (and the JSON with --out)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="run folder, checkpoint or model.onnx to serve")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batches", default="1,8", help="--max-batch settings to compare (1: no batching)")
    p.add_argument("--size", type=int, default=64, help="the test image's side in pixels")
    p.add_argument("--faults", action="store_true", help="send bad uploads all along")
    p.add_argument("--out", help="write the figures to this JSON file")
    args = p.parse_args()
    image = png(np.random.default_rng(0).integers(0, 255, (args.size, args.size, 3), dtype=np.uint8))
    rows = [
        run_load(args.model, int(b), args.requests, args.clients, image, args.faults) for b in args.batches.split(",")
    ]
    print(f"{'max_batch':>9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6} {'bad 4xx':>7} {'RSS MB':>15}")
    for r in rows:
        rss = f"{r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f}"
        print(f"{r['max_batch']:>9} {r['requests_per_s']:>7} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['failed_good']:>6} "
              f"{r['bad_refused']:>7} {rss:>15}")  # fmt: skip
    if len(rows) > 1:
        print(f"speed-up of max_batch {rows[-1]['max_batch']} over {rows[0]['max_batch']}: "
              f"{rows[-1]['requests_per_s'] / rows[0]['requests_per_s']:.2f}x")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
