"""benchmarks.dag's sampler profiles real processes: CPU lands on the right role and job."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from benchmarks.dag import ProcessSampler

# Burns `BURN` CPU-seconds, then sleeps `NAP` seconds.  The extra argument names it like a
# Spark job's driver, which is how the sampler tells roles and jobs apart.
SCRIPT = ("import sys, time\nt = time.process_time()\n"
          "while time.process_time() - t < float(sys.argv[1]): pass\ntime.sleep(float(sys.argv[2]))")


def spawn(burn: float, nap: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(burn), str(nap), "spark_jobs/split.py"])


def sample(proc: subprocess.Popen) -> ProcessSampler:
    sampler = ProcessSampler(proc.pid, interval=0.05)
    sampler.start()
    proc.wait(timeout=60)
    sampler.stop()
    return sampler


def test_cpu_of_a_job_driver_is_counted_for_its_job_and_role():
    sampler = sample(spawn(burn=1.0, nap=0.3))
    cpu = sampler.cpu_by_job["split"]
    assert 0.8 <= cpu["python_driver"] <= 1.3
    assert cpu["python_workers"] == 0.0 and cpu["jvm"] == 0.0
    machine = sampler.machine_by_job["split"]
    # The machine was busy at least as long as the process was, and its time adds up.
    assert machine["busy"] >= cpu["python_driver"] - 0.1
    assert machine["wall"] > 1.0
    assert sampler.result()["by_job_peak_mb"]["split"]["driver"] > 0


def test_cpu_used_before_the_sampler_started_is_not_counted():
    proc = spawn(burn=1.0, nap=1.5)
    times = psutil.Process(proc.pid).cpu_times
    deadline = time.monotonic() + 30
    while sum(times()[:2]) < 1.0 and time.monotonic() < deadline:  # until it has burnt its second
        time.sleep(0.02)
    sampler = sample(proc)
    assert sampler.cpu_by_job.get("split", {}).get("python_driver", 0.0) < 0.2
