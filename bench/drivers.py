"""What a driver costs a build: submit to `passed` for one job running `true`.

In one run, rounds interleaved (A/B/C...), against two `kiln serve` processes on
SQLite (one confining its local jobs, one started `--local-driver-unconfined`):

- local, unconfined: the floor of Kiln's own work (queue, workspace, output, settle);
- local, confined: the same plus a bubblewrap sandbox per command;
- docker: the same build with `driver: {type: docker, image: ...}`;
- and the baselines, run from here: a bare `sh -c true` and a bare
  `docker run --rm IMAGE true`.

    uv run python -m bench.drivers [--rounds 15]

Targets (issue 11): confinement adds under 50 ms per job over unconfined local (the
difference of the medians), and the docker driver is within 1.3x of the bare
`docker run` (the ratio of the medians).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests import docker_engine
from tests.docker_engine import BUSYBOX_IMAGE as TEST_IMAGE
from tests.processes import KilnServe, kiln_env

TARGET_CONFINEMENT_MS = 50.0
TARGET_DOCKER_RATIO = 1.3
LOCAL = 'driver: {type: local}\nstages: [a]\njobs:\n- stage: a\n  commands: ["true"]\n'
DOCKER = LOCAL.replace("{type: local}", f"{{type: docker, image: {TEST_IMAGE}}}")
ENV = {
    # The in-process worker is nudged by each submission, so the default poll interval
    # adds nothing; a short one would only make the other loops poll the database.
    "KILN_RATE_LIMIT": "1000000/hour",
    "KILN_WORKER_NICE": "0",
    "KILN_DRIVERS": "local,docker",
}


def build_seconds(client: httpx.Client, token: str, manifest: str, poll: float) -> float:
    """Seconds from the submission to the first answer that says `passed`, asking every
    `poll` seconds."""
    auth = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    submitted = client.post("/api/v1/builds", json={"manifest": manifest}, headers=auth)
    submitted.raise_for_status()
    href = f"/api/v1/builds/{submitted.json()['id']}"
    while True:
        status = client.get(href, headers=auth).json()["status"]
        if status not in ("queued", "running"):
            if status != "passed":
                raise SystemExit(f"a benchmark build ended {status}")
            return time.perf_counter() - started
        time.sleep(poll)


def command_seconds(argv: list[str]) -> Callable[[], float]:
    def run() -> float:
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-drivers-") as top:
        docker_engine.ready(Path(top))
        confined_env = kiln_env(**ENV)
        unconfined_env = kiln_env(**ENV, KILN_LOCAL_DRIVER_UNCONFINED="true")
        with (
            KilnServe(Path(top) / "confined", env=confined_env) as confined,
            KilnServe(Path(top) / "unconfined", env=unconfined_env) as unconfined,
            confined.client() as c_client,
            unconfined.client() as u_client,
        ):
            c_token, u_token = confined.admin_token(), unconfined.admin_token()
            variants: dict[str, Callable[[], float]] = {
                # Local builds take a tenth of a second: polled finely, or the poll's
                # granularity would be all one sees. A docker build is polled less
                # often, since each GET takes CPU the container's start needs; that
                # adds half a poll (25 ms) on average to its figure, against it.
                "local, unconfined": lambda: build_seconds(u_client, u_token, LOCAL, 0.005),
                "local, confined": lambda: build_seconds(c_client, c_token, LOCAL, 0.005),
                "docker driver": lambda: build_seconds(c_client, c_token, DOCKER, 0.05),
                "bare sh -c true": command_seconds(["sh", "-c", "true"]),
                "bare docker run": command_seconds(["docker", "run", "--rm", TEST_IMAGE, "true"]),
            }
            for run in variants.values():  # warm up: images, caches, first connections
                run()
            timings: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, run in variants.items():
                    timings[name].append(run())
    report(timings)


def report(timings: dict[str, list[float]]) -> None:
    rounds = len(timings["bare sh -c true"])
    print(f"{'':20} {'median ms':>10} {'min':>8} {'max':>8}   ({rounds} rounds)")
    medians = {}
    for name, values in timings.items():
        medians[name] = statistics.median(values) * 1000
        print(
            f"{name:20} {medians[name]:10.1f} {min(values) * 1000:8.1f} {max(values) * 1000:8.1f}"
        )
    added = medians["local, confined"] - medians["local, unconfined"]
    ratio = medians["docker driver"] / medians["bare docker run"]
    confinement = "met" if added < TARGET_CONFINEMENT_MS else "MISSED"
    docker = "met" if ratio <= TARGET_DOCKER_RATIO else "MISSED"
    print(f"\nconfinement adds {added:.1f} ms per build of one command", end=" ")
    print(f"(target < {TARGET_CONFINEMENT_MS:.0f}): {confinement}")
    print(f"docker driver / bare docker run = {ratio:.2f}x", end=" ")
    print(f"(target <= {TARGET_DOCKER_RATIO}): {docker}")


if __name__ == "__main__":
    main()
