"""The build queue on PostgreSQL: `kiln serve --workers 0` and two `kiln worker`
processes, in one run.

1. Idle GET: p99 of `GET /api/v1/builds/{id}` at concurrency 4 with no build running.
2. Submit-to-start with idle workers: builds of one job running `true`, each
   submitted once the one before has started; latency from the 202 to the first
   answer that is no longer `queued`.
3. Throughput: the rest of the builds submitted at once; builds/s from the first
   submission to the last build settled, and the GET p99 measured meanwhile.

    uv run python -m bench.queue [--builds 200] [--database-url postgresql+psycopg://...]

Targets: p95 submit-to-start under 1 s, and the busy GET p99 within 1.5x the idle one.
The database named in --database-url is emptied first (its public schema is recreated).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.loadgen import Result, drive, get
from bench.servers import serving
from tests.processes import kiln_env, run_kiln
from tests.support import free_port

MANIFEST = 'driver: {type: local}\nstages: [a]\njobs:\n- stage: a\n  commands: ["true"]\n'
TARGET_P95_START = 1.0
TARGET_BUSY_RATIO = 1.5
GET_CONCURRENCY = 4


def empty_database(url: str) -> None:
    """Create the database if it is missing, and recreate its public schema."""
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}
        ).first()
        if exists is None:
            conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--builds", type=int, default=200)
    parser.add_argument("--latency-builds", type=int, default=40)
    parser.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/kiln_bench"
    )
    parser.add_argument("--get-seconds", type=float, default=5.0)
    args = parser.parse_args()
    empty_database(args.database_url)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        data_dir = Path(tmp)
        env = kiln_env(
            KILN_DATA_DIR=str(data_dir),
            KILN_DATABASE_URL=args.database_url,
            KILN_RATE_LIMIT="1000000000/hour",
            KILN_LOG_LEVEL="warning",
        )
        assert run_kiln("users", "create", "bench", stdin="bench-pw\n", env=env).returncode == 0
        minted = run_kiln(
            "tokens", "create", "--user", "bench", "--scope", "build:read,write", env=env
        )
        auth = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        port = free_port()
        serve = [sys.executable, "-m", "kiln", "serve", "--port", str(port), "--workers", "0"]
        worker = [sys.executable, "-m", "kiln", "worker"]
        cert = data_dir / "cert.pem"
        base = f"https://127.0.0.1:{port}"
        with (
            serving(serve, env, f"{base}/healthz", cert),
            serving(worker, env, f"{base}/healthz", cert),
            serving(worker, env, f"{base}/healthz", cert),
        ):
            context = ssl.create_default_context(cafile=cert)
            with httpx.Client(base_url=base, verify=context, headers=auth, timeout=30) as c:
                figures = measure(c, port, context, auth, args)
    report(figures, args)


def submit(client: httpx.Client) -> tuple[int, float]:
    response = client.post("/api/v1/builds", json={"manifest": MANIFEST})
    assert response.status_code == 202, response.text
    return int(response.json()["id"]), time.perf_counter()


def status(client: httpx.Client, build_id: int) -> str:
    value: str = client.get(f"/api/v1/builds/{build_id}").json()["status"]
    return value


def measure(
    client: httpx.Client,
    port: int,
    context: ssl.SSLContext,
    auth: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    probe_id, _ = submit(client)
    while status(client, probe_id) in ("queued", "running"):
        time.sleep(0.02)
    read = get(f"/api/v1/builds/{probe_id}", "127.0.0.1", auth)

    def load(seconds: float) -> Result:
        return asyncio.run(
            drive(
                "127.0.0.1",
                port,
                context,
                lambda _: read,
                concurrency=GET_CONCURRENCY,
                duration=seconds,
            )
        )

    load(1.0)  # warm up
    idle = load(args.get_seconds)

    starts = []
    for _ in range(args.latency_builds):
        build_id, submitted = submit(client)
        while status(client, build_id) == "queued":
            time.sleep(0.005)
        starts.append(time.perf_counter() - submitted)
        while status(client, build_id) == "running":
            time.sleep(0.01)

    busy: list[Result] = []
    rest = args.builds - args.latency_builds - 1
    began = time.perf_counter()
    submitted_ids = []
    loader = threading.Thread(target=lambda: busy.append(load(args.get_seconds)))
    loader.start()
    for _ in range(rest):
        submitted_ids.append(submit(client)[0])
    pending = set(submitted_ids)
    while pending:
        pending = {b for b in pending if status(client, b) in ("queued", "running")}
        time.sleep(0.05)
    elapsed = time.perf_counter() - began
    loader.join()
    statuses = statistics.mode(status(client, b) for b in submitted_ids)
    return {
        "idle": idle,
        "busy": busy[0],
        "starts": starts,
        "throughput": rest / elapsed,
        "rest": rest,
        "elapsed": elapsed,
        "usual_status": statuses,
    }


def report(f: dict[str, Any], args: argparse.Namespace) -> None:
    starts = f["starts"]
    p50, p95 = statistics.median(starts), percentile(starts, 95)
    idle, busy = f["idle"], f["busy"]
    ratio = busy.p99_ms / idle.p99_ms
    print("PostgreSQL, kiln serve --workers 0 and two kiln worker processes, TLS, 2 cores")
    print(
        f"throughput: {f['rest']} builds of `true` submitted at once, all settled in"
        f" {f['elapsed']:.1f} s: {f['throughput']:.1f} builds/s (most {f['usual_status']})"
    )
    print(
        f"submit-to-start with idle workers ({len(starts)} builds): p50 {p50 * 1000:.0f} ms,"
        f" p95 {p95 * 1000:.0f} ms"
    )
    print(
        f"GET /builds/{{id}} at concurrency {GET_CONCURRENCY}: idle p99 {idle.p99_ms:.1f} ms"
        f" ({idle.rate:.0f} req/s), while builds run p99 {busy.p99_ms:.1f} ms"
        f" ({busy.rate:.0f} req/s): {ratio:.2f}x"
    )
    met = "met" if p95 < TARGET_P95_START else "MISSED"
    print(f"target: p95 submit-to-start < {TARGET_P95_START:.0f} s: {met} ({p95 * 1000:.0f} ms)")
    met = "met" if ratio <= TARGET_BUSY_RATIO else "MISSED"
    print(f"target: busy GET p99 <= {TARGET_BUSY_RATIO}x idle: {met} ({ratio:.2f}x)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
