"""The build queue on PostgreSQL: `kiln serve --workers 0` and two `kiln worker`
processes, in one run.

1. Idle GET: p99 of `GET /api/v1/builds/{id}` at concurrency 4 with no build running.
2. Submit-to-start with idle workers: builds of one job running `true`, each
   submitted once the one before has started; latency from the 202 to the first
   answer that is no longer `queued`.
3. Throughput: the rest of the builds submitted at once (8 at a time); builds/s from
   the first submission to the last build settled. The busy GET p99 is measured from
   the last submission until the workers have drained the queue: while builds run,
   and without the submissions' own load on the API.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.loadgen import Result, drive, get, percentile
from bench.servers import serving
from tests.processes import kiln_env, run_kiln
from tests.support import free_port

MANIFEST = 'driver: {type: local}\nstages: [a]\njobs:\n- stage: a\n  commands: ["true"]\n'
TARGET_P95_START = 1.0
TARGET_BUSY_RATIO = 1.5
GET_CONCURRENCY = 4
SUBMITTERS = 8


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


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


class CpuMeter:
    """CPU seconds used by the named processes, and by PostgreSQL, between start and stop."""

    def __init__(self, named: dict[str, int]) -> None:
        self.named = named
        self.used: dict[str, float] = {}

    def _sample(self) -> dict[str, float]:
        figures = {name: cpu_seconds(pid) for name, pid in self.named.items()}
        figures["postgres"] = sum(cpu_seconds(pid) for pid in postgres_pids())
        figures["this bench"] = cpu_seconds(os.getpid())
        return figures

    def start(self) -> None:
        self._started = self._sample()

    def stop(self) -> None:
        self.used = {k: v - self._started.get(k, 0.0) for k, v in self._sample().items()}


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
    parser.add_argument(
        "--worker-nice", type=int, default=10, help="KILN_WORKER_NICE for the workers"
    )
    args = parser.parse_args()
    empty_database(args.database_url)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        data_dir = Path(tmp)
        env = kiln_env(
            KILN_DATA_DIR=str(data_dir),
            KILN_DATABASE_URL=args.database_url,
            KILN_RATE_LIMIT="1000000000/hour",
            KILN_LOG_LEVEL="warning",
            KILN_WORKER_NICE=str(args.worker_nice),
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
            serving(serve, env, f"{base}/healthz", cert) as api,
            serving(worker, env, f"{base}/healthz", cert) as one,
            serving(worker, env, f"{base}/healthz", cert) as two,
        ):
            meter = CpuMeter({"kiln serve": api.pid, "worker 1": one.pid, "worker 2": two.pid})
            context = ssl.create_default_context(cafile=cert)
            with httpx.Client(base_url=base, verify=context, headers=auth, timeout=30) as c:
                figures = measure(c, port, context, auth, args, meter)
    report(figures, args)


def submit(client: httpx.Client) -> tuple[int, float]:
    response = client.post("/api/v1/builds", json={"manifest": MANIFEST})
    assert response.status_code == 202, response.text
    return int(response.json()["id"]), time.perf_counter()


def status(client: httpx.Client, build_id: int) -> str:
    value: str = client.get(f"/api/v1/builds/{build_id}").json()["status"]
    return value


def unsettled(client: httpx.Client) -> bool:
    """Whether any build is still queued or running (two cheap listings, not one GET each)."""
    return any(
        client.get("/api/v1/builds", params={"status": s, "limit": 1}).json()["_embedded"]["builds"]
        for s in ("queued", "running")
    )


def measure(
    client: httpx.Client,
    port: int,
    context: ssl.SSLContext,
    auth: dict[str, str],
    args: argparse.Namespace,
    meter: CpuMeter,
) -> dict[str, Any]:
    probe_id, _ = submit(client)
    while status(client, probe_id) in ("queued", "running"):
        time.sleep(0.02)
    read = get(f"/api/v1/builds/{probe_id}", "127.0.0.1", auth)

    def load(seconds: float, stop: threading.Event | None = None) -> Result:
        return asyncio.run(
            drive(
                "127.0.0.1",
                port,
                context,
                lambda _: read,
                concurrency=GET_CONCURRENCY,
                duration=seconds,
                stop=stop,
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

    rest = args.builds - args.latency_builds - 1
    began = time.perf_counter()
    with ThreadPoolExecutor(SUBMITTERS) as pool:
        submitted_ids = [i for i, _ in pool.map(lambda _: submit(client), range(rest))]
    submitted = time.perf_counter()
    drained = threading.Event()
    busy: list[Result] = []
    loader = threading.Thread(target=lambda: busy.append(load(600, drained)))
    meter.start()
    loader.start()
    while unsettled(client):
        time.sleep(0.05)
    settled = time.perf_counter()
    meter.stop()
    drained.set()
    loader.join()
    statuses = statistics.mode(status(client, b) for b in submitted_ids)
    return {
        "idle": idle,
        "busy": busy[0],
        "starts": starts,
        "throughput": rest / (settled - began),
        "rest": rest,
        "elapsed": settled - began,
        "submitting": submitted - began,
        "draining": settled - submitted,
        "usual_status": statuses,
        "cpu": meter.used,
    }


def report(f: dict[str, Any], args: argparse.Namespace) -> None:
    starts = f["starts"]
    p50, p95 = statistics.median(starts), percentile(starts, 95)
    idle, busy = f["idle"], f["busy"]
    ratio = busy.p99_ms / idle.p99_ms
    print(
        "PostgreSQL, kiln serve --workers 0 and two kiln worker processes"
        f" (niceness {args.worker_nice}), TLS, 2 cores"
    )
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
        f" ({idle.rate:.0f} req/s), while the {f['rest']} builds run p99 {busy.p99_ms:.1f} ms"
        f" ({busy.rate:.0f} req/s): {ratio:.2f}x"
    )
    cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in f["cpu"].items())
    print(
        f"CPU seconds while the queue drained ({f['draining']:.1f} s on 2 cores; submitting"
        f" took {f['submitting']:.1f} s): {cpu}"
    )
    met = "met" if p95 < TARGET_P95_START else "MISSED"
    print(f"target: p95 submit-to-start < {TARGET_P95_START:.0f} s: {met} ({p95 * 1000:.0f} ms)")
    met = "met" if ratio <= TARGET_BUSY_RATIO else "MISSED"
    print(f"target: busy GET p99 <= {TARGET_BUSY_RATIO}x idle: {met} ({ratio:.2f}x)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
