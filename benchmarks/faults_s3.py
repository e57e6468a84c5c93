"""S3 under faults: ``isovol upsample`` writes to the moto server of the S3 tests through a small fault-injecting HTTP
proxy (all on 127.0.0.1) that answers some requests with 500 InternalError, some with 503 SlowDown (throttling) and
holds some until the client's read time-out; runs are also killed (kill -9 at seeded random times) and resumed
through the same proxy.  Every output must end bitwise exact.

    python benchmarks/faults_s3.py [--quick] [--seed N] [--out FILE] [--rate P]

The proxy answers a request with 500 or 503 with probability ``--rate`` each (default 0.03) and holds it 2 s with
a third of that (each costs the client its 1 s read time-out, set in its storage options), seeded.  Blocks of
16 x 64 x 64 (9 blocks and the pyramid: a few hundred requests a run).  Columns as in ``benchmarks/faults.py``;
"clear errors" counts trials whose failed runs (if any) ended with no traceback and the secret never echoed.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "faults"))
sys.path.insert(0, str(HERE.parent / "tests" / "workflows"))

import faultkit as fk  # noqa: E402
from faults_scenarios import Row, table  # noqa: E402
from motos3 import MotoS3, clean_env, free_port  # noqa: E402

BUCKET = "isovol-faults"
HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade", "te"}
ERRORS = {"500": (500, "InternalError", "We encountered an internal error. Please try again."),
          "503": (503, "SlowDown", "Please reduce your request rate.")}


class FaultPlan:
    """Which request gets which fault: seeded, thread-safe, counted."""

    def __init__(self, seed: int, rate: float, hold: float):
        self.rng, self.rate, self.hold, self.lock = random.Random(seed), rate, hold, threading.Lock()
        self.counts = {"requests": 0, "500": 0, "503": 0, "timeout": 0}

    def draw(self) -> str | None:
        """None (forward it), "500", "503" (each with the rate) or "timeout" (a third of the rate: each costs
        the client a read time-out)."""
        with self.lock:
            self.counts["requests"] += 1
            x, edge = self.rng.random(), 0.0
            for kind, share in (("500", 1.0), ("503", 1.0), ("timeout", 1 / 3)):
                edge += self.rate * share
                if x < edge:
                    self.counts[kind] += 1
                    return kind
            return None


class Proxy(BaseHTTPRequestHandler):
    """Forwards each request to moto unchanged (the Host header too, which the signature covers), or fails it."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    plan: FaultPlan

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if not size:
                    break
                data += chunk
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        body = self._body()
        fault = self.plan.draw()
        if fault == "timeout":  # hold it past the client's read time-out, then drop the connection
            time.sleep(self.plan.hold)
            self.close_connection = True
            return
        if fault:
            status, code, text = ERRORS[fault]
            xml = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{text}</Message>"
                   f"<RequestId>fault</RequestId></Error>").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


class QuietServer(ThreadingHTTPServer):
    """A client killed mid-request resets its connection: expected here, not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


def start_proxy(endpoint: str, plan: FaultPlan) -> tuple[ThreadingHTTPServer, str]:
    host, port = endpoint.rsplit("//", 1)[1].split(":")
    handler = type("FaultProxy", (Proxy,), {"upstream": (host, int(port)), "plan": plan})
    server = QuietServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def options(moto: MotoS3, endpoint: str) -> dict[str, Any]:
    """Storage options through ``endpoint`` (the proxy): the admin's keys, a 1 s read time-out."""
    key, secret = moto.admin
    return {"key": key, "secret": secret, "client_kwargs": {"endpoint_url": endpoint},
            "config_kwargs": {"read_timeout": 1, "connect_timeout": 1}}


def command(source: str, out: str, opts: dict[str, Any], threads: str, *extra: str) -> list[str]:
    return [fk.ISOVOL, "upsample", source, out, "--factor", str(fk.FACTOR), "--block-shape", "16,64,64",
            "--no-progress", "--cluster-config", threads, "--storage-options", json.dumps(opts), *extra]


def fetch(moto: MotoS3, out: str, local: Path) -> Path:
    """The output copied from moto (not through the proxy) to ``local``, to be judged by plain zarr."""
    shutil.rmtree(local, ignore_errors=True)
    moto.fs().get(out.removeprefix("s3://"), str(local), recursive=True)
    return local


def trial(moto: MotoS3, env: dict[str, Any], kill_after: float | None) -> tuple[bool, bool, int, str]:
    """One run through the proxy (killed after ``kill_after`` s if given), then resumes until it ends (at most 4):
    (exact, clear, voxels lost, note)."""
    out = f"s3://{BUCKET}/out-{time.monotonic_ns()}.ome.zarr"
    cmd = command(env["source"], out, env["opts"], env["threads"])
    run = fk.Launch(cmd, env=clean_env() | {"OMP_NUM_THREADS": "1"})
    if kill_after is not None:
        run.sleep(kill_after)
        run.kill()
    code, err = run.finish(300)
    clear, notes, secret = True, [], env["opts"]["secret"]
    for _ in range(4):
        if code == 0:
            break
        if code != -9:
            clear &= "Traceback" not in err and secret not in err
            notes.append(f"exit {code}: {(err.strip().splitlines() or [''])[-1][:120]}")
        run = fk.Launch(cmd + ["--resume"], env=clean_env() | {"OMP_NUM_THREADS": "1"})
        code, err = run.finish(300)
    clear &= secret not in err
    local = fetch(moto, out, env["work"] / "fetched")
    lost = fk.voxels_lost(local, env["expected"]) if code == 0 else env["expected"].size
    return code == 0 and fk.run_state(local) == "complete" and lost == 0, clear, lost, "; ".join(notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--rate", type=float, default=0.03)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="isovol-faults-s3-"))
    started, rng = time.monotonic(), random.Random(args.seed)
    moto = MotoS3(str(work))
    try:
        moto.fs().mkdir(BUCKET)
        low = fk.low_volume()
        source = f"s3://{BUCKET}/in.ome.zarr"
        from isovol.pipeline.io.omezarr import write_image

        write_image(source, low, (10.0 * fk.FACTOR, 10.0, 10.0), storage_options=moto.options())
        plan = FaultPlan(args.seed, args.rate, hold=2.0)
        server, endpoint = start_proxy(moto.endpoint, plan)
        (work / "threads.yaml").write_text(fk.THREADS)
        env = {"source": source, "opts": options(moto, endpoint), "threads": str(work / "threads.yaml"),
               "expected": fk.reference(low), "work": work}
        rows = []
        for name, kill in (("S3 through injected 5xx / SlowDown / timeouts", False),
                           ("S3 through faults, kill -9 at random times + --resume", True)):
            row = Row(name, clear=0)
            for _ in range(3 if args.quick else 10):
                ok, clear, lost, note = trial(moto, env, rng.uniform(1.0, 8.0) if kill else None)
                row.trials, row.exact, row.clear, row.lost = row.trials + 1, row.exact + ok, row.clear + clear, \
                    row.lost + lost
                if note:
                    row.notes.append(note)
            rows.append(row)
        server.shutdown()
    finally:
        moto.stop()
        shutil.rmtree(work, ignore_errors=True)
    counts = ", ".join(f"{k} {v}" for k, v in plan.counts.items())
    text = (f"`python benchmarks/faults_s3.py {' '.join(argv if argv is not None else sys.argv[1:])}` -- "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
            f"{os.cpu_count()} cores, {time.monotonic() - started:.0f} s; proxy: {counts}\n\n{table(rows)}\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(r.lost == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
