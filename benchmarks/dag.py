"""``superres_daily`` end to end at two batch sizes (``dag``), and peak memory during those
runs (``dag_memory``).

Each run is ``airflow dags test superres_daily <ds>`` in upscale mode on N
generated 512x512 photos, served by the offline Picsum source from a folder the
bench writes (the bundled catalogue has fewer than 64 photos), with the
project's embedded defaults otherwise: the Spark tasks on one local Spark Connect
server (``make run``'s default) or, with ``spark="submit"``, a Spark application per
task; the notifier; local storage.  Everything lives under the bench's work directory
(its own AIRFLOW_HOME, storage, staging, pid files) and on free loopback ports,
so it never touches ``make run``'s state.

Per-task durations come from Airflow's task_instance rows; the stage's own
time inside its Spark job (without JVM start) from ``run.json``.  A sampler
thread walks the process tree every ``interval`` seconds and sums RSS by role:
the spark-submit JVM, the Python driver of the job, the Python workers
(``pyspark.daemon`` and its forks), and Airflow itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import make_images, two_point_line

STAGES = ("fetch", "split", "inference", "reconstruct", "quality", "evaluate", "notify")
ROLES = ("jvm", "python_driver", "python_workers", "airflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_photos(folder: Path, n: int, size: int) -> None:
    """``n`` distinct photos (crops/flips of the bundled ones), larger than the request."""
    from PIL import Image as PILImage

    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.png"))
    if len(existing) >= n and (folder / ".size").exists() and (folder / ".size").read_text() == str(size):
        return
    for p in existing:
        p.unlink()
    meta = {}
    for i, img in enumerate(make_images(n, size, "photos", seed=1)):
        name = f"{i:04d}.png"
        PILImage.fromarray(img.rgb).save(folder / name)
        meta[name] = {"id": str(1000 + i), "author": "bench", "url": img.image_id}
    (folder / "photos.json").write_text(json.dumps(meta))
    (folder / ".size").write_text(str(size))


def classify(proc) -> str:
    try:
        name = proc.name()
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - the process may be gone
        return ""
    if name.startswith("java"):
        return "jvm"
    if "pyspark.daemon" in cmd or "pyspark/daemon" in cmd or "pyspark.worker" in cmd:
        return "python_workers"
    if "spark_jobs/" in cmd:
        return "python_driver"
    return "airflow"


class ProcessSampler(threading.Thread):
    """Peak RSS and CPU-seconds, by role and by Spark job, over the life of a process tree.

    CPU is what profiles the marginal cost: each sample adds every process's CPU
    time since the last sample (user + system, children excluded so nothing counts
    twice) to the role it plays and the Spark job whose driver is running at that
    moment (``other`` between jobs: Airflow, fetch, notify).  The machine's own
    busy, idle and steal time (``/proc/stat``) is kept per job too, so a stage's
    wall time splits into work by role, idle cores, and time the hypervisor took.
    A process that ends between two samples loses at most one interval of CPU.
    """

    def __init__(self, pid: int, interval: float = 0.25, also: tuple[int, ...] = ()) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        # Trees outside the run's own (the Spark Connect server: its JVM and Python workers).
        self.also = [psutil.Process(p) for p in also]
        self.interval = interval
        self.peak = dict.fromkeys(ROLES, 0)
        self.peak_spark = 0  # JVM + Python driver + workers at the same instant
        self.peak_by_job: dict[str, dict[str, int]] = {}
        self.cpu_by_job: dict[str, dict[str, float]] = {}  # job -> role -> CPU-s
        self.machine_by_job: dict[str, dict[str, float]] = {}  # job -> busy/idle/steal/wall s
        self._cpu_seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU-s so far
        self.samples = 0
        self._halt = threading.Event()

    @staticmethod
    def _machine() -> dict[str, float]:
        import psutil

        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        steal = getattr(t, "steal", 0.0)
        return {"busy": sum(t) - idle - steal - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0),
                "idle": idle, "steal": steal, "wall": time.monotonic()}

    def _add(self, table: dict[str, dict[str, float]], job: str, key: str, value: float) -> None:
        row = table.setdefault(job, {})
        row[key] = row.get(key, 0.0) + value

    @staticmethod
    def _cpu_used(p: Any) -> tuple[tuple[int, float], float]:
        """(pid, start time), the key that survives pid reuse, and the process's own CPU-s so far."""
        times = p.cpu_times()
        return (p.pid, p.create_time()), times.user + times.system

    def _procs(self) -> list[Any]:
        import psutil

        procs = [self.root, *self.root.children(recursive=True)]
        for extra in self.also:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs += [extra, *extra.children(recursive=True)]
        return procs

    def run(self) -> None:
        import psutil

        # What a long-lived server used before this run is not this run's.
        with contextlib.suppress(psutil.NoSuchProcess):
            for p in self._procs():
                with contextlib.suppress(psutil.Error):
                    key, used = self._cpu_used(p)
                    self._cpu_seen[key] = used
        last = self._machine()
        while not self._halt.is_set():
            sums = dict.fromkeys(ROLES, 0)
            cpu = dict.fromkeys(ROLES, 0.0)
            job = None
            try:
                procs = self._procs()
            except psutil.NoSuchProcess:
                break
            for p in procs:
                role = classify(p)
                if not role:
                    continue
                with contextlib.suppress(psutil.Error):
                    sums[role] += p.memory_info().rss
                    key, used = self._cpu_used(p)
                    cpu[role] += used - self._cpu_seen.get(key, 0.0)
                    self._cpu_seen[key] = used
                    if role == "python_driver":
                        job = next((Path(a).stem for a in p.cmdline() if "spark_jobs/" in a), job)
            now = self._machine()
            window = job or "other"
            for role, v in cpu.items():
                self._add(self.cpu_by_job, window, role, v)
            for k in now:
                self._add(self.machine_by_job, window, k, now[k] - last[k])
            last = now
            self.samples += 1
            for role, v in sums.items():
                self.peak[role] = max(self.peak[role], v)
            spark = sums["jvm"] + sums["python_driver"] + sums["python_workers"]
            self.peak_spark = max(self.peak_spark, spark)
            if job:
                cur = self.peak_by_job.setdefault(job, {"driver": 0, "workers": 0, "spark": 0})
                cur["driver"] = max(cur["driver"], sums["jvm"] + sums["python_driver"])
                cur["workers"] = max(cur["workers"], sums["python_workers"])
                cur["spark"] = max(cur["spark"], spark)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def result(self) -> dict[str, Any]:
        mb = 2**20
        return {
            "driver_peak_mb": round(max(j["driver"] for j in self.peak_by_job.values()) / mb, 1)
            if self.peak_by_job else None,
            "workers_peak_mb": round(self.peak["python_workers"] / mb, 1),
            "spark_peak_mb": round(self.peak_spark / mb, 1),
            "by_role_peak_mb": {k: round(v / mb, 1) for k, v in self.peak.items()},
            "by_job_peak_mb": {j: {k: round(v / mb, 1) for k, v in d.items()}
                               for j, d in self.peak_by_job.items()},
            "samples": self.samples,
        }

    def cpu_result(self) -> dict[str, Any]:
        """CPU-seconds by job and role, and the machine's busy/idle/steal seconds by job."""
        return {
            "cpu_s": {j: {k: round(v, 2) for k, v in d.items()} for j, d in self.cpu_by_job.items()},
            "machine_s": {j: {k: round(v, 2) for k, v in d.items()} for j, d in self.machine_by_job.items()},
        }


def task_durations(airflow_home: Path, dag_id: str) -> tuple[str, dict[str, float], dict[str, str]]:
    with contextlib.closing(sqlite3.connect(airflow_home / "airflow.db")) as db:
        run_id = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                            (dag_id,)).fetchone()[0]
        rows = db.execute("SELECT task_id, duration, state FROM task_instance "
                          "WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)).fetchall()
    return run_id, {t: round(d or 0.0, 3) for t, d, _ in rows}, {t: s for t, _, s in rows}


class DagBench:
    """The embedded stack for the bench: env, DB, notifier and photo source, set up once."""

    def __init__(self, workdir: Path, photos: int, size: int, spark: str = "connect") -> None:
        from superres.orchestration import localrun

        self.workdir = workdir
        self.spark = spark
        self.size = size
        self.photos_dir = workdir / "photos"
        write_photos(self.photos_dir, photos, max(size, 640))
        overrides = {
            "AIRFLOW_HOME": str(workdir / "airflow"),
            "SUPERRES_STORAGE_URI": str(workdir / "data"),
            "SUPERRES_STAGING_URI": str(workdir / "data" / "_staging"),
            "SUPERRES_RUN_DIR": str(workdir / "run"),
            "SUPERRES_NOTIFIER_URL": f"http://127.0.0.1:{free_port()}",
            "SUPERRES_PICSUM_URL": f"http://127.0.0.1:{free_port()}",
            # connect: make run's default, one Spark Connect server for every task; submit: a
            # Spark application per task.
            "SUPERRES_SPARK_REMOTE": f"sc://127.0.0.1:{free_port()}" if spark == "connect" else "",
        }
        self._saved = {k: os.environ.get(k) for k in overrides}
        os.environ.update(overrides)  # services.* read the run dir from os.environ
        for k in ("AIRFLOW_CONN_NOTIFIER_DEFAULT", "NOTIFIER_STORAGE_URI", "NOTIFIER_DB"):
            os.environ.pop(k, None)
        self.env = localrun.airflow_env()
        from superres.config import Settings

        self.settings = Settings.from_env(self.env)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> DagBench:
        from superres.orchestration import localrun, services
        from superres.picsum_server import serve

        t0 = time.time()
        localrun.ensure_db(self.env)
        self.migrate_s = round(time.time() - t0, 1)
        url = self.settings.notifier_url
        services.start("notifier", services.notifier_cmd(url), url, self.env)
        self._stack.callback(services.stop, "notifier")
        port = int(self.settings.picsum_url.rsplit(":", 1)[1])
        self._stack.enter_context(serve(host="127.0.0.1", port=port, photos_dir=self.photos_dir))
        self.server_start_s = None
        self.server_pid = None
        remote = self.env["SUPERRES_SPARK_REMOTE"]
        if remote:
            t0 = time.time()
            services.ensure_spark_connect(remote, self.env)
            self.server_start_s = round(time.time() - t0, 1)
            self._stack.callback(services.stop, "spark-connect")
            self.server_pid = int(services.pid_file("spark-connect").read_text())
            print(f"  dag Spark Connect server on {remote} started in {self.server_start_s}s", flush=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def run(self, n: int, ds: str, interval: float = 0.25, timeout_s: float = 3600) -> dict[str, Any]:
        from superres.orchestration.localrun import DAG_ID

        conf = {"num_images": n, "mode": "upscale", "scale": 2, "image_width": self.size,
                "image_height": self.size}
        log_path = self.workdir / f"dags-test-{ds}.log"
        cmd = [sys.executable, "-m", "airflow", "dags", "test", DAG_ID, ds, "-c", json.dumps(conf)]
        print(f"  dag running {DAG_ID} N={n} ds={ds} (log: {log_path})", flush=True)
        t0 = time.perf_counter()
        with log_path.open("w") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            sampler = ProcessSampler(proc.pid, interval, also=(self.server_pid,) if self.server_pid else ())
            sampler.start()
            try:
                rc = proc.wait(timeout=timeout_s)
            finally:
                if proc.poll() is None:
                    proc.kill()
                sampler.stop()
        wall = time.perf_counter() - t0
        text = log_path.read_text(errors="replace")
        ok = rc == 0 and "state=success" in text.split("DagRun Finished")[-1]
        run_id, durations, states = task_durations(Path(self.env["AIRFLOW_HOME"]), DAG_ID)
        report = {}
        with contextlib.suppress(OSError, ValueError):
            report = json.loads((Path(self.settings.storage_uri) / "reports" / f"ds={ds}" / "run.json")
                                .read_text())
        result = {
            "n": n, "ds": ds, "ok": ok, "rc": rc, "wall_s": round(wall, 2), "run_id": run_id,
            "megapixels": n * self.size * self.size / 1e6,
            "task_s": durations, "task_states": states,
            "stage_compute_s": report.get("timings", {}), "counts": report.get("counts"),
            "memory": sampler.result(), "cpu": sampler.cpu_result(), "log": str(log_path),
        }
        print(f"  dag N={n}: {'ok' if ok else 'FAILED'} in {wall:.0f}s; tasks "
              + ", ".join(f"{k} {durations.get(k, 0):.0f}" for k in STAGES)
              + f"; peak RSS spark {result['memory']['spark_peak_mb']} MB", flush=True)
        if not ok:
            print("\n".join(text.splitlines()[-30:]), flush=True)
        return result


def fitted_runs(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The runs the fit uses: the least wall time at the smallest and at the largest N.

    Interference (another process, the JIT, the page cache, a GC) only ever adds time,
    so of repeated runs the fastest is the best estimate of what the pipeline itself
    costs, as ``timeit`` reasons.  With one run per N, one disturbed run moved the marginal
    ratio between 1.5 and 3.6 on the same code (benchmarks/README.md, *Reading the figures*).
    """
    grouped = by_n(runs)
    if len(grouped) < 2:
        raise ValueError(f"the fit needs runs at two batch sizes, got N = {list(grouped)}")

    def best(group: list[dict[str, Any]]) -> dict[str, Any]:
        return min(group, key=lambda r: (not r["ok"], r["wall_s"]))

    groups = list(grouped.values())
    return best(groups[0]), best(groups[-1])


def by_n(runs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """The runs of each batch size, smallest N first, each N's in the order they ran."""
    out: dict[int, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r["n"]):
        out.setdefault(r["n"], []).append(r)
    return out


def fit(runs: list[dict[str, Any]], fast_mp_s: float, cores: int = 0) -> dict[str, Any]:
    """Fixed overhead (intercept, s) and marginal cost (slope, s/MP) from :func:`fitted_runs`."""
    small, large = fitted_runs(runs)
    d_mp = large["megapixels"] - small["megapixels"]

    def line(a: float, b: float) -> tuple[float, float]:
        return two_point_line(small["megapixels"], a, large["megapixels"], b)

    fixed, slope = line(small["wall_s"], large["wall_s"])
    stages = {}
    for st in STAGES:
        if st in small["task_s"] and st in large["task_s"]:
            f, s = line(small["task_s"][st], large["task_s"][st])
            stages[st] = {"fixed_s": round(f, 2), "marginal_s_per_mp": round(s, 3),
                          f"n{small['n']}_s": small["task_s"][st], f"n{large['n']}_s": large["task_s"][st]}
    compute = {}
    for st in small["stage_compute_s"]:
        if st in large["stage_compute_s"]:
            f, s = line(small["stage_compute_s"][st], large["stage_compute_s"][st])
            compute[st] = {"fixed_s": round(f, 2), "marginal_s_per_mp": round(s, 3)}
    inference_s_per_mp = 1.0 / fast_mp_s
    walls = {str(n): [r["wall_s"] for r in group] for n, group in by_n(runs).items()}
    return {
        "fixed_overhead_s": fixed, "marginal_s_per_mp": slope,
        "fitted_ds": [small["ds"], large["ds"]], "walls_by_n": walls,
        "pure_inference_s_per_mp": inference_s_per_mp,
        "marginal_cost_ratio": slope / inference_s_per_mp,
        "stages": stages, "stage_compute_in_job": compute,
        "cpu_profile": cpu_profile(small, large, d_mp, cores, fast_mp_s) if cores else None,
    }


def cpu_profile(small: dict[str, Any], large: dict[str, Any], d_mp: float, cores: int,
                fast_mp_s: float) -> dict[str, Any] | None:
    """Marginal CPU-seconds per LR megapixel by Spark job and role, beside the model's own.

    ``model_cpu_s_per_mp`` is what the engine's backend spends on the model alone (it keeps
    every core busy, so cores / throughput); the rest of the workers' marginal CPU
    is their other per-image work (decoding, stitching, bicubic, PNG encoding, Arrow).
    ``idle`` is core-seconds nobody used, ``steal`` what the hypervisor took.
    """
    a, b = small.get("cpu"), large.get("cpu")
    if not a or not b:
        return None

    def per_mp(table: str) -> dict[str, dict[str, float]]:
        jobs = sorted(set(a[table]) | set(b[table]))
        out = {}
        for job in jobs:
            keys = set(a[table].get(job, {})) | set(b[table].get(job, {}))
            out[job] = {k: round((b[table].get(job, {}).get(k, 0.0) - a[table].get(job, {}).get(k, 0.0))
                                 / d_mp, 3) for k in sorted(keys)}
        out["total"] = {k: round(sum(row.get(k, 0.0) for row in out.values()), 3)
                        for k in sorted({k for row in out.values() for k in row})}
        return out

    return {"cores": cores, "model_cpu_s_per_mp": round(cores / fast_mp_s, 3),
            "cpu_s_per_mp": per_mp("cpu_s"), "machine_s_per_mp": per_mp("machine_s")}


def memory_ratio(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS at the largest N over the smallest, each the highest of that N's runs."""
    groups = list(by_n(runs).values())
    out = {}
    for key in ("spark_peak_mb", "driver_peak_mb", "workers_peak_mb"):
        a, b = (max(r["memory"][key] or 0 for r in group) for group in (groups[0], groups[-1]))
        out[key.replace("_peak_mb", "_ratio")] = (b / a) if a and b else None
    out["ratio"] = out["spark_ratio"]
    return out
