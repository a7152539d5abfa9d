"""Telemetry: a background sampler of power, energy, utilization and memory alongside training.

With NVML (`pynvml`) it reads, per GPU: power, the total-energy counter, utilization, memory used,
temperature, SM clock and throttle reasons. It always reads the CPU side with `psutil`: system and
process CPU %, RSS of the measured process and its children, and RAPL package energy where Linux
exposes it. NVML missing or failing, at start or mid-run, never stops training: the sampler keeps
the CPU readings and records why (`nvml_error`). Each sample is one JSON line, flushed at once, so a
killed run keeps everything up to its last second.

    with TelemetrySampler("runs/x/telemetry.jsonl", pid=trainer.pid) as tel:
        tel.mark("timed_start"); ...; tel.mark("timed_end")
    samples = read_samples("runs/x/telemetry.jsonl")
    m = marks(samples)
    summary = summarize(samples, m["timed_start"], m["timed_end"], price_per_gpu_hour=2.0, gpu_count=8)

`python -m harness.telemetry [SECONDS]` samples this machine for a few seconds and prints the static info,
the last sample and the summary: a quick look at what NVML (or the CPU fallback) reads here.

Lines are {"kind": "info" | "sample" | "mark" | "error", "t": s since the sampler started (monotonic),
"wall": unix time, ...}. The file is opened for append: a resumed run should write a new file.
"""

import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import psutil
import pynvml

RAPL_ROOT = Path("/sys/class/powercap")
# Bit k of nvmlClocksEventReasons (nvml.h; the same bits as the older ClocksThrottleReasons).
THROTTLE_REASONS = "gpu_idle applications_clocks sw_power_cap hw_slowdown sync_boost sw_thermal hw_thermal".split()
THROTTLE_REASONS += ["hw_power_brake", "display_clocks"]
# An idle GPU or one held at chosen application clocks is slow by choice, not held back by a limit.
NOT_THROTTLING = 0x1 | 0x2


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)  # older pynvml returns bytes


class _Nvml:
    """Per-GPU readings through NVML. Raises (ImportError, pynvml.NVMLError, ...) when NVML is unusable."""

    def __init__(self, gpus: Sequence[int] | None):
        self.nv = nv = pynvml
        nv.nvmlInit()
        try:
            count = nv.nvmlDeviceGetCount()
            self.indices = list(range(count)) if gpus is None else list(gpus)
            if not self.indices:
                raise RuntimeError("NVML sees no GPUs")
            self.handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in self.indices]
            self.reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
            self.reasons = self.reasons or nv.nvmlDeviceGetCurrentClocksThrottleReasons  # pre-12.x name
            self.info = {
                "driver_version": _text(nv.nvmlSystemGetDriverVersion()),
                "count": count,
                "gpus": [
                    {
                        "index": i,
                        "name": _text(nv.nvmlDeviceGetName(h)),
                        "power_limit_w": self._scaled(nv.nvmlDeviceGetEnforcedPowerLimit, h, scale=1e-3),
                        "memory_total_bytes": nv.nvmlDeviceGetMemoryInfo(h).total,
                    }
                    for i, h in zip(self.indices, self.handles, strict=True)
                ],
            }
        except BaseException:
            self.close()
            raise

    def _read(self, fn, *args):
        try:
            return fn(*args)
        except self.nv.NVMLError_NotSupported:  # e.g. no energy counter before Volta: that field is null
            return None

    def _scaled(self, fn, *args, scale: float):
        v = self._read(fn, *args)
        return None if v is None else v * scale

    def sample(self) -> list[dict]:
        nv, out = self.nv, []
        for i, h in zip(self.indices, self.handles, strict=True):
            util, mem, reasons = (
                self._read(f, h) for f in (nv.nvmlDeviceGetUtilizationRates, nv.nvmlDeviceGetMemoryInfo, self.reasons)
            )
            out.append(
                {
                    "index": i,
                    "power_w": self._scaled(nv.nvmlDeviceGetPowerUsage, h, scale=1e-3),  # mW
                    "energy_j": self._scaled(
                        nv.nvmlDeviceGetTotalEnergyConsumption, h, scale=1e-3
                    ),  # mJ since driver load
                    "utilization_pct": None if util is None else util.gpu,
                    "memory_used_bytes": None if mem is None else mem.used,
                    "temperature_c": self._read(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
                    "sm_clock_mhz": self._read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                    "throttle_reasons": reasons,
                    "throttle_names": [n for k, n in enumerate(THROTTLE_REASONS) if (reasons or 0) >> k & 1],
                }
            )
        return out

    def close(self):
        try:
            self.nv.nvmlShutdown()
        except Exception:
            pass  # shutting down a broken NVML can fail too; nothing left to release


class _Rapl:
    """CPU package energy from Linux powercap (Intel RAPL; AMD on recent kernels), unwrapped into one counter."""

    def __init__(self, root: Path):
        # Top-level zones are packages; their subzones (core, uncore) are inside them, and psys contains them.
        zones = sorted(p for p in Path(root).glob("intel-rapl:*") if p.name.count(":") == 1)
        self.zones = [z for z in zones if not (z / "name").is_file() or (z / "name").read_text().strip() != "psys"]
        if not self.zones:
            raise FileNotFoundError(f"no RAPL zones under {root}: this OS or VM does not expose them")
        self.max_uj = [int((z / "max_energy_range_uj").read_text()) for z in self.zones]
        self.last_uj = [self._raw(z) for z in self.zones]
        self.total_uj = 0

    @staticmethod
    def _raw(zone: Path) -> int:
        try:
            return int((zone / "energy_uj").read_text())
        except PermissionError as e:
            raise PermissionError(f"{e} (energy_uj is root-only since Linux 5.10)") from e

    def read_j(self) -> float:
        for k, zone in enumerate(self.zones):
            raw = self._raw(zone)
            delta = raw - self.last_uj[k]
            self.total_uj += delta if delta >= 0 else delta + self.max_uj[k]  # the counter wrapped around
            self.last_uj[k] = raw
        return self.total_uj / 1e6


class TelemetrySampler:
    """Samples every `interval_s` on a daemon thread into a JSONL file; also a context manager.

    pid: the process to measure, with all its children (default: this one); gpus: NVML indices (default: all).
    """

    def __init__(
        self,
        path: str | Path,
        interval_s: float = 1.0,
        pid: int | None = None,
        gpus: Sequence[int] | None = None,
        nvml: bool = True,
        rapl_root: Path = RAPL_ROOT,
    ):
        assert 0 < interval_s <= 1.0, f"interval_s must be in (0, 1] to sample at >= 1 Hz, got {interval_s}"
        self.path, self.interval_s = Path(path), interval_s
        self.proc = psutil.Process(pid)
        self.marks: dict[str, float] = {}
        self.nvml_error = self.rapl_error = None
        self._nvml = self._rapl = None
        if nvml:
            try:
                self._nvml = _Nvml(gpus)
            except Exception as e:  # ImportError, NVMLError, no GPUs: fall back to the CPU readings
                self.nvml_error = _why(e)
        else:
            self.nvml_error = "NVML disabled by the caller"
        try:
            self._rapl = _Rapl(rapl_root)
        except (OSError, ValueError) as e:
            self.rapl_error = _why(e)
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)  # the first call only sets the reference point
        self._lock, self._stop, self._thread = threading.Lock(), threading.Event(), None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        self.t0 = time.monotonic()
        with self._lock:
            self._write(
                {
                    "kind": "info",
                    "t": 0.0,
                    "wall": time.time(),
                    "pid": self.proc.pid,
                    "interval_s": interval_s,
                    "backend": self.backend,
                    "nvml_error": self.nvml_error,
                    "rapl_error": self.rapl_error,
                    "nvml": self._nvml.info if self._nvml else None,
                    "cpu_count": psutil.cpu_count(),
                }
            )

    @property
    def backend(self) -> str:
        return "nvml" if self._nvml else "cpu"

    def _write(self, obj: dict):  # caller holds self._lock
        self._file.write(json.dumps(obj) + "\n")
        self._file.flush()  # one line per write: a SIGKILL loses at most the sample being taken

    def _fail(self, source: str, e: BaseException, t: float) -> str:
        error = f"at t={t:.1f}s: {_why(e)}"
        self._write({"kind": "error", "source": source, "t": t, "wall": time.time(), "error": error})
        return error

    def mark(self, name: str, at: float | None = None):
        """Record a phase marker now, or at `at` (a time.monotonic() value, from any process on this host)."""
        t = (time.monotonic() if at is None else at) - self.t0
        with self._lock:
            self.marks[name] = t
            self._write({"kind": "mark", "name": name, "t": t, "wall": time.time()})

    def _cpu(self) -> dict:
        try:
            procs, rss, cpu = [self.proc, *self.proc.children(recursive=True)], 0, 0.0
        except psutil.Error:
            procs, rss, cpu = [], None, None  # the measured process has exited
        cache = {}
        for p in procs:
            p = cache[p.pid] = self._procs.get(p.pid, p)  # same object: cpu_percent() measures since its last call
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    cpu += p.cpu_percent(None)
            except psutil.Error:
                pass  # a child exited between listing and reading
        self._procs = cache
        return {
            "cpu_percent": psutil.cpu_percent(None),
            "process_cpu_percent": cpu,
            "rss_bytes": rss,
            "n_processes": len(procs),
        }

    def sample(self) -> dict:
        """Take one sample now, write it, and return it."""
        with self._lock:
            t = time.monotonic() - self.t0
            s = {"kind": "sample", "t": t, "wall": time.time(), "cpu": self._cpu()}
            s["cpu"]["rapl_energy_j"] = None
            if self._rapl:
                try:
                    s["cpu"]["rapl_energy_j"] = self._rapl.read_j()
                except (OSError, ValueError) as e:
                    self.rapl_error, self._rapl = self._fail("rapl", e, t), None
            if self._nvml:
                try:
                    s["gpus"] = self._nvml.sample()
                except Exception as e:  # e.g. a GPU fell off the bus: keep sampling the CPU
                    self.nvml_error = self._fail("nvml", e, t)
                    self._nvml, nvml = None, self._nvml
                    nvml.close()
            self._write(s)
            return s

    def _run(self):
        due = time.monotonic()
        while True:
            stopping = self._stop.is_set()  # after stop(): one last sample, so a window ending there is covered
            try:
                self.sample()
            except Exception as e:  # never let a telemetry bug end the sampling thread
                with self._lock:
                    self._fail("sampler", e, time.monotonic() - self.t0)
            if stopping:
                return
            due = max(due + self.interval_s, time.monotonic())  # after a stall, one sample now rather than a burst
            self._stop.wait(max(0.0, due - time.monotonic()))

    def start(self) -> "TelemetrySampler":
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if not self._file.closed:
            self._file.close()
            if self._nvml:
                self._nvml.close()

    def __enter__(self) -> "TelemetrySampler":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def read_samples(path: str | Path) -> list[dict]:
    """All lines of a telemetry file; a run killed mid-write leaves at most one partial last line, dropped."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    out = []
    for k, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if k < len(lines) - 1:
                raise
    return out


def marks(samples: list[dict]) -> dict[str, float]:
    """{name: t} of the phase markers (the latest one of each name)."""
    return {s["name"]: s["t"] for s in samples if s.get("kind") == "mark"}


def _at(pts: list[tuple[float, float]], t: float) -> float | None:
    if len(pts) == 1 and pts[0][0] == t:
        return pts[0][1]
    for (ta, ya), (tb, yb) in pairwise(pts):
        if ta <= t <= tb:
            return ya if tb == ta else ya + (yb - ya) * (t - ta) / (tb - ta)
    return None


def _clip(pts, t0: float, t1: float) -> list[tuple[float, float]]:
    """The (t, y) points inside [t0, t1], with y interpolated linearly at the two edges."""
    a, b = _at(pts, t0), _at(pts, t1)
    inside = [(t, y) for t, y in pts if t0 < t < t1]
    return ([(t0, a)] if a is not None else []) + inside + ([(t1, b)] if b is not None and t1 > t0 else [])


def _trapz(pts) -> float:
    return sum((tb - ta) * (ya + yb) / 2 for (ta, ya), (tb, yb) in pairwise(pts))


def _delta(counter) -> float | None:
    return counter[-1][1] - counter[0][1] if len(counter) >= 2 else None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _max(xs):
    return max((x for x in xs if x is not None), default=None)


def _sum(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) if xs else None


def summarize(
    samples: list[dict],
    t_start: float | None = None,
    t_end: float | None = None,
    price_per_gpu_hour: float | None = None,
    gpu_count: int = 1,
    wall_start: float | None = None,
    wall_end: float | None = None,
) -> dict:
    """Energy, power, memory, utilization, throttling and cost over [t_start, t_end] (default: all samples).

    The window may instead be given in unix time (wall_start, wall_end), e.g. from another process's events.

    Energy is the delta of a cumulative counter (NVML total energy per GPU, else RAPL), interpolated at the
    window's edges; a GPU without the counter falls back to the trapezoid integral of its power readings.
    Mean power is time-weighted; peak power and memory are the highest sampled (GPU memory is per GPU).
    """
    rows = sorted((s for s in samples if s.get("kind", "sample") == "sample"), key=lambda s: s["t"])
    assert rows, "no telemetry samples to summarize"
    if wall_start is not None or wall_end is not None:
        assert t_start is None and t_end is None, "give the window as t_start/t_end or as wall_start/wall_end, not both"
        offset = rows[0]["wall"] - rows[0]["t"]  # unix time at t = 0
        t_start, t_end = (None if w is None else w - offset for w in (wall_start, wall_end))
    t0 = rows[0]["t"] if t_start is None else max(t_start, rows[0]["t"])
    t1 = rows[-1]["t"] if t_end is None else min(t_end, rows[-1]["t"])
    assert t0 <= t1, f"window [{t_start}, {t_end}] lies outside the samples' [{rows[0]['t']}, {rows[-1]['t']}]"
    inside = [s for s in rows if t0 <= s["t"] <= t1]
    cpu = lambda s, key: s.get("cpu", {}).get(key)  # noqa: E731
    gpu = lambda s, i, key: next((g.get(key) for g in s.get("gpus", []) if g["index"] == i), None)  # noqa: E731
    series = lambda get: _clip([(s["t"], v) for s in rows if (v := get(s)) is not None], t0, t1)  # noqa: E731
    gpus = sorted({g["index"] for s in inside for g in s.get("gpus", [])})
    rapl = series(lambda s: cpu(s, "rapl_energy_j"))
    out = {"backend": "nvml" if gpus else "cpu", "t_start": t0, "t_end": t1, "duration_s": t1 - t0}
    out["n_samples"], out["cpu_energy_j"] = len(inside), _delta(rapl)
    if gpus:
        energy, mean_power, sources = [], [], set()
        for i in gpus:
            counter, power = series(lambda s, i=i: gpu(s, i, "energy_j")), series(lambda s, i=i: gpu(s, i, "power_w"))
            energy.append(_delta(counter) if len(counter) >= 2 else _trapz(power) if len(power) >= 2 else None)
            sources.add("nvml_counter" if len(counter) >= 2 else "power_integral" if len(power) >= 2 else None)
            span = power[-1][0] - power[0][0] if power else 0.0
            mean_power.append(_trapz(power) / span if span > 0 else None)
        out["energy_j"], out["energy_source"] = _sum(energy), "+".join(sorted(sources - {None})) or None
        out["mean_power_w"] = _sum(mean_power)
        out["peak_power_w"] = _max(_sum(gpu(s, i, "power_w") for i in gpus) for s in inside)
        out["peak_memory_bytes"] = _max(gpu(s, i, "memory_used_bytes") for s in inside for i in gpus)
        out["mean_utilization_pct"] = _mean(_mean(gpu(s, i, "utilization_pct") for i in gpus) for s in inside)
        throttled = [  # seconds from each sample to the next, clipped to the window, where a real limit held clocks
            min(b["t"], t1) - max(a["t"], t0)
            for a, b in pairwise(rows)
            if any((g.get("throttle_reasons") or 0) & ~NOT_THROTTLING for g in a.get("gpus", []))
        ]
        out["throttled_s"] = sum(max(0.0, dt) for dt in throttled)
    else:
        span = rapl[-1][0] - rapl[0][0] if len(rapl) >= 2 else 0.0
        out["energy_j"], out["energy_source"] = out["cpu_energy_j"], "rapl" if len(rapl) >= 2 else None
        out["mean_power_w"] = out["cpu_energy_j"] / span if span > 0 else None
        out["peak_power_w"] = _max((yb - ya) / (tb - ta) for (ta, ya), (tb, yb) in pairwise(rapl) if tb > ta)
        out["peak_memory_bytes"] = _max(cpu(s, "rss_bytes") for s in inside)
        out["mean_utilization_pct"] = _mean(cpu(s, "cpu_percent") for s in inside)
        out["throttled_s"] = None  # not measured without NVML
    out["energy_kwh"] = None if out["energy_j"] is None else out["energy_j"] / 3.6e6
    out["peak_rss_bytes"] = _max(cpu(s, "rss_bytes") for s in inside)
    out["mean_cpu_percent"] = _mean(cpu(s, "cpu_percent") for s in inside)
    out["mean_process_cpu_percent"] = _mean(cpu(s, "process_cpu_percent") for s in inside)
    out["gpu_count"], out["price_per_gpu_hour"] = gpu_count, price_per_gpu_hour
    out["cost"] = None if price_per_gpu_hour is None else price_per_gpu_hour * gpu_count * (t1 - t0) / 3600
    info = next((s for s in samples if s.get("kind") == "info"), {})
    errors = [s for s in samples if s.get("kind") == "error"]
    for source in ("nvml", "rapl", "sampler"):  # why a source failed: at start (info line), else first mid-run error
        mid_run = next((s["error"] for s in errors if s["source"] == source), None)
        out[f"{source}_error"] = info.get(f"{source}_error") or mid_run
    return out


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        with TelemetrySampler(Path(tmp) / "telemetry.jsonl", interval_s=0.5):
            time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0)
        rows = read_samples(Path(tmp) / "telemetry.jsonl")
    last = [r for r in rows if r["kind"] == "sample"][-1]
    print(json.dumps({"info": rows[0], "last_sample": last, "summary": summarize(rows)}, indent=2))
