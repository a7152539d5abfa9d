"""Telemetry: the CPU backend for real, NVML for real where a GPU exists (else a stand-in), and the summary math."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest

from harness import telemetry
from harness.telemetry import THROTTLE_REASONS, TelemetrySampler, marks, read_samples, summarize

REPO = Path(__file__).resolve().parents[1]


def _sample(t, gpus=None, rapl_energy_j=None, rss_bytes=1000, cpu_percent=50.0):
    s = {"kind": "sample", "t": t, "wall": 1.7e9 + t}
    s["cpu"] = {"cpu_percent": cpu_percent, "process_cpu_percent": 100.0, "rss_bytes": rss_bytes}
    s["cpu"]["rapl_energy_j"] = rapl_energy_j
    if gpus is not None:
        s["gpus"] = gpus
    return s


def _gpu(index=0, power_w=300.0, energy_j=None, throttle_reasons=0, memory_used_bytes=0, utilization_pct=90):
    return dict(index=index, power_w=power_w, energy_j=energy_j, throttle_reasons=throttle_reasons,
                memory_used_bytes=memory_used_bytes, utilization_pct=utilization_pct)  # fmt: skip


# --- the CPU backend, for real ---------------------------------------------------------------------------------------

BUSY = """
import subprocess, sys, time
spin = "import time\\nt = time.time()\\nwhile time.time() - t < 1.5: pass"
child = subprocess.Popen([sys.executable, "-c", spin])
t = time.time()
while time.time() - t < 1.5: pass
child.wait()
"""


def test_cpu_backend_samples_a_busy_process_and_its_children(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", BUSY])
    with TelemetrySampler(path, interval_s=0.1, pid=proc.pid, nvml=False) as tel:
        time.sleep(0.3)
        tel.mark("timed_start")
        time.sleep(0.8)
        tel.mark("timed_end")
        proc.wait(timeout=30)
    assert tel.backend == "cpu"

    lines = path.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line is one valid JSON object
    assert rows[0]["kind"] == "info" and rows[0]["pid"] == proc.pid and rows[0]["backend"] == "cpu"
    samples = [r for r in rows if r["kind"] == "sample"]
    assert len(samples) >= 8, f"expected ~10 samples/s over >1 s, got {len(samples)}"
    steps = sorted(b["t"] - a["t"] for a, b in zip(samples, samples[1:], strict=False))
    assert 0.05 < steps[len(steps) // 2] < 0.3, f"median sampling step {steps[len(steps) // 2]:.3f}s, expected ~0.1s"
    ncpu = os.cpu_count()
    assert all(0.0 <= s["cpu"]["cpu_percent"] <= 100.0 for s in samples)
    assert all(0.0 <= s["cpu"]["process_cpu_percent"] <= 100.0 * ncpu + 25 for s in samples if s["cpu"]["rss_bytes"])
    # Spinning shows; loose, since a shared 2-core test machine may give the spinner a fraction of a core.
    assert max(s["cpu"]["process_cpu_percent"] or 0 for s in samples) > 20, "a spinning process should show busy"
    assert samples[-1]["cpu"]["rss_bytes"] is None, "the last sample came after the measured process exited"
    assert max(s["cpu"]["n_processes"] for s in samples) >= 2, "the child of the measured process was not counted"
    assert max(s["cpu"]["rss_bytes"] or 0 for s in samples) > 1_000_000

    m = marks(rows)
    assert m == tel.marks and m["timed_end"] - m["timed_start"] == pytest.approx(0.8, abs=0.2)
    summary = summarize(rows, m["timed_start"], m["timed_end"], price_per_gpu_hour=1.0)
    assert summary["backend"] == "cpu"
    assert summary["duration_s"] == pytest.approx(m["timed_end"] - m["timed_start"])
    assert summary["n_samples"] >= 4
    assert summary["peak_memory_bytes"] == summary["peak_rss_bytes"] > 0
    assert 0.0 <= summary["mean_utilization_pct"] <= 100.0
    assert summary["mean_process_cpu_percent"] > 0
    assert summary["cost"] == pytest.approx(summary["duration_s"] / 3600)
    assert summary["throttled_s"] is None and summary["nvml_error"] == "NVML disabled by the caller"
    # RAPL: real energy where the OS exposes it, else null with the reason.
    assert (summary["energy_j"] is None) == (summary["rapl_error"] is not None)
    if summary["energy_j"] is not None:
        assert summary["energy_j"] >= 0 and summary["peak_power_w"] >= summary["mean_power_w"] >= 0


def test_killed_sampler_leaves_valid_lines(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    code = (
        "import time\nfrom harness.telemetry import TelemetrySampler\n"
        f"TelemetrySampler({str(path)!r}, interval_s=0.02, nvml=False).start()\ntime.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not path.exists() or path.read_text().count("\n") < 6):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    text = path.read_text()
    assert text.endswith("\n")
    rows = [json.loads(line) for line in text.splitlines()]
    samples = [r for r in rows if r["kind"] == "sample"]
    assert len(samples) >= 5 and all(a["t"] < b["t"] for a, b in zip(samples, samples[1:], strict=False))
    assert summarize(rows)["n_samples"] == len(samples)


def test_main_prints_what_this_machine_reads():
    out = subprocess.run([sys.executable, "-m", "harness.telemetry", "0.6"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["info"]["kind"] == "info" and report["last_sample"]["cpu"]["rss_bytes"] > 0
    assert report["summary"]["backend"] == report["info"]["backend"] and report["summary"]["n_samples"] >= 2


def test_read_samples_drops_only_a_partial_last_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(_sample(0.0)) + "\n" + json.dumps(_sample(1.0)) + "\n" + '{"kind": "sam')
    assert [s["t"] for s in read_samples(path)] == [0.0, 1.0]
    path.write_text('{"kind": "sam\n' + json.dumps(_sample(1.0)) + "\n")
    with pytest.raises(json.JSONDecodeError):
        read_samples(path)


# --- RAPL over a stand-in /sys/class/powercap -------------------------------------------------------------------------


def _zone(root, name, label, energy_uj, max_uj=1_000_000_000):
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


def test_rapl_energy_is_unwrapped_and_counts_packages_only(tmp_path):
    root = tmp_path / "powercap"
    pkg = _zone(root, "intel-rapl:0", "package-0", 999_000_000)
    core = _zone(root, "intel-rapl:0:0", "core", 5)  # inside the package: must not be added again
    psys = _zone(root, "intel-rapl:1", "psys", 7)  # the whole platform, package included
    tel = TelemetrySampler(tmp_path / "t.jsonl", nvml=False, rapl_root=root)
    assert tel.rapl_error is None and tel.sample()["cpu"]["rapl_energy_j"] == 0.0
    (pkg / "energy_uj").write_text("999500000\n")
    (core / "energy_uj").write_text("900000000\n")
    (psys / "energy_uj").write_text("900000000\n")
    assert tel.sample()["cpu"]["rapl_energy_j"] == pytest.approx(0.5)
    (pkg / "energy_uj").write_text("1500000\n")  # wrapped past max_energy_range_uj: +0.5 J to the top, +1.5 J after
    assert tel.sample()["cpu"]["rapl_energy_j"] == pytest.approx(2.5)
    (pkg / "energy_uj").unlink()  # unreadable mid-run: null from now on, with the reason
    assert tel.sample()["cpu"]["rapl_energy_j"] is None
    tel.stop()
    summary = summarize(read_samples(tmp_path / "t.jsonl"))
    assert summary["cpu_energy_j"] == summary["energy_j"] == pytest.approx(2.5)
    assert summary["energy_source"] == "rapl" and "FileNotFoundError" in summary["rapl_error"]


def test_rapl_unreadable_or_absent_is_null_with_the_reason(tmp_path):
    tel = TelemetrySampler(tmp_path / "a.jsonl", nvml=False, rapl_root=tmp_path / "absent")
    assert tel.sample()["cpu"]["rapl_energy_j"] is None and "no RAPL zones" in tel.rapl_error
    tel.stop()
    zone = _zone(tmp_path / "powercap", "intel-rapl:0", "package-0", 0)
    (zone / "energy_uj").unlink()
    (zone / "energy_uj").mkdir()  # unreadable even for root, unlike a chmod
    tel = TelemetrySampler(tmp_path / "b.jsonl", nvml=False, rapl_root=tmp_path / "powercap")
    assert tel.sample()["cpu"]["rapl_energy_j"] is None and "IsADirectoryError" in tel.rapl_error
    tel.stop()
    summary = summarize(read_samples(tmp_path / "b.jsonl"))
    assert summary["energy_j"] is None and "IsADirectoryError" in summary["rapl_error"]


# --- NVML -------------------------------------------------------------------------------------------------------------


def test_nvml_failing_at_init_falls_back_to_cpu_and_keeps_sampling(tmp_path, monkeypatch):
    def broken_init():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", broken_init)
    with TelemetrySampler(tmp_path / "t.jsonl", interval_s=0.05) as tel:
        time.sleep(0.3)
    assert tel.backend == "cpu" and "Driver Not Loaded" in tel.nvml_error
    rows = read_samples(tmp_path / "t.jsonl")
    assert sum(r["kind"] == "sample" for r in rows) >= 3 and not any("gpus" in r for r in rows)
    summary = summarize(rows)
    assert summary["backend"] == "cpu" and "NVMLError_DriverNotLoaded" in summary["nvml_error"]


def test_nvml_library_missing_falls_back_to_cpu(tmp_path, monkeypatch):
    def no_library():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)  # a machine without the NVIDIA driver

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    tel = TelemetrySampler(tmp_path / "t.jsonl")
    assert tel.backend == "cpu" and tel.nvml_error.startswith("NVMLError_LibraryNotFound") and tel.sample()["cpu"]
    tel.stop()


def _fake_pynvml(fail_after_samples=None):
    """A stand-in for pynvml with two GPUs; GPU 1 has no energy counter (as before Volta)."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    calls = {"power": 0, "energy": 0, "shutdown": 0}

    def power(h):
        calls["power"] += 1
        if fail_after_samples is not None and calls["power"] > 2 * fail_after_samples:
            raise NVMLError("GPU is lost")
        return 300_000 if h == 0 else 100_000  # mW

    def energy(h):
        if h == 1:
            raise NVMLError_NotSupported("Not Supported")
        calls["energy"] += 1
        return 1_000_000 + 30_000 * calls["energy"]  # mJ: 1000 J since driver load, then 30 J per reading

    nv = SimpleNamespace(
        NVMLError=NVMLError, NVMLError_NotSupported=NVMLError_NotSupported, NVML_TEMPERATURE_GPU=0, NVML_CLOCK_SM=1,
        nvmlInit=lambda: None, nvmlShutdown=lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlSystemGetDriverVersion=lambda: b"570.86", nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=80 * 2**30, used=(h + 1) * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=97, memory=40),
        nvmlDeviceGetPowerUsage=power, nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetTemperature=lambda h, sensor: 61, nvmlDeviceGetClockInfo=lambda h, clock: 1980,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x4 | 0x1 if h == 0 else 0,
    )  # fmt: skip
    return nv, calls


def test_throttle_reason_names_match_pynvml_bits():
    nvml_names = ["GpuIdle", "ApplicationsClocksSetting", "SwPowerCap", "HwSlowdown", "SyncBoost"]
    nvml_names += ["SwThermalSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown", "DisplayClockSetting"]
    assert [getattr(pynvml, f"nvmlClocksEventReason{n}") for n in nvml_names] == [1 << k for k in range(9)]
    assert len(THROTTLE_REASONS) == 9


def test_nvml_backend_reads_every_field_and_decodes_throttle_reasons(tmp_path, monkeypatch):
    nv, calls = _fake_pynvml()
    monkeypatch.setattr(telemetry, "pynvml", nv)
    tel = TelemetrySampler(tmp_path / "t.jsonl")
    assert tel.backend == "nvml" and tel.nvml_error is None
    s0 = tel.sample()
    time.sleep(0.05)
    s1 = tel.sample()
    tel.stop()
    assert calls["shutdown"] == 1
    g0, g1 = s1["gpus"]
    assert g0 == {
        "index": 0, "power_w": 300.0, "energy_j": 1060.0,
        "utilization_pct": 97, "memory_used_bytes": 2**30, "temperature_c": 61, "sm_clock_mhz": 1980,
        "throttle_reasons": 0x5, "throttle_names": ["gpu_idle", "sw_power_cap"],
    }  # fmt: skip
    assert g1["energy_j"] is None and g1["throttle_names"] == []
    info = read_samples(tmp_path / "t.jsonl")[0]
    assert info["nvml"]["driver_version"] == "570.86" and info["nvml"]["count"] == 2
    assert info["nvml"]["gpus"][0] == {
        "index": 0, "name": "NVIDIA H100 80GB HBM3", "power_limit_w": 700.0, "memory_total_bytes": 80 * 2**30,
    }  # fmt: skip
    summary = summarize([s0, s1])
    dt = s1["t"] - s0["t"]
    assert summary["backend"] == "nvml" and summary["energy_source"] == "nvml_counter+power_integral"
    assert summary["energy_j"] == pytest.approx(30 + 100 * dt)  # GPU 0's counter delta + GPU 1's power integral
    assert summary["mean_power_w"] == summary["peak_power_w"] == pytest.approx(400.0)
    assert summary["peak_memory_bytes"] == 2 * 2**30 and summary["mean_utilization_pct"] == 97
    assert summary["throttled_s"] == pytest.approx(dt)  # GPU 0 was at its software power cap throughout


def test_nvml_failing_mid_run_switches_to_cpu_and_keeps_sampling(tmp_path, monkeypatch):
    nv, calls = _fake_pynvml(fail_after_samples=2)
    monkeypatch.setattr(telemetry, "pynvml", nv)
    tel = TelemetrySampler(tmp_path / "t.jsonl")
    samples = [tel.sample() for _ in range(4)]
    assert [("gpus" in s) for s in samples] == [True, True, False, False]
    assert tel.backend == "cpu" and "GPU is lost" in tel.nvml_error and calls["shutdown"] == 1
    tel.stop()
    rows = read_samples(tmp_path / "t.jsonl")
    assert [r["source"] for r in rows if r["kind"] == "error"] == ["nvml"]
    assert "GPU is lost" in summarize(rows)["nvml_error"]


def test_nvml_backend_on_real_gpus(tmp_path):
    try:
        pynvml.nvmlInit()
        n_gpus = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as e:
        pytest.skip(f"no NVIDIA driver or GPU here (nvmlInit: {e})")
    with TelemetrySampler(tmp_path / "t.jsonl", interval_s=0.1) as tel:
        time.sleep(0.5)
    assert tel.backend == "nvml", tel.nvml_error
    rows = read_samples(tmp_path / "t.jsonl")
    assert rows[0]["nvml"]["count"] == n_gpus and all(g["name"] for g in rows[0]["nvml"]["gpus"])
    samples = [r for r in rows if r["kind"] == "sample"]
    assert len(samples) >= 4 and all(len(s["gpus"]) == n_gpus for s in samples)
    for g in samples[-1]["gpus"]:
        assert g["power_w"] > 0 and g["memory_used_bytes"] > 0 and g["sm_clock_mhz"] >= 0 and g["temperature_c"] > 0
        assert 0 <= g["utilization_pct"] <= 100 and isinstance(g["throttle_reasons"], int)
    summary = summarize(rows)
    assert summary["backend"] == "nvml" and summary["energy_j"] > 0 and summary["nvml_error"] is None
    assert summary["peak_power_w"] >= summary["mean_power_w"] * 0.5  # readings are ~1 s averages; loose on purpose


# --- the summary on hand-made samples ---------------------------------------------------------------------------------


def test_summary_energy_is_the_counter_delta_interpolated_at_the_window_edges():
    # 1000 J on the counter since driver load, then 300 W for 4 s.
    samples = [_sample(t, [_gpu(energy_j=1000 + 300 * t)]) for t in range(5)]
    full = summarize(samples)
    assert full["energy_j"] == pytest.approx(1200) and full["energy_kwh"] == pytest.approx(1200 / 3.6e6)
    assert full["energy_source"] == "nvml_counter" and full["duration_s"] == 4 and full["n_samples"] == 5
    assert full["mean_power_w"] == full["peak_power_w"] == 300
    window = summarize(samples, t_start=0.5, t_end=2.5)
    assert window["energy_j"] == pytest.approx(600) and window["duration_s"] == 2.0 and window["n_samples"] == 2
    clipped = summarize(samples, t_start=-10, t_end=100)  # a window past the samples covers what was sampled
    assert clipped["duration_s"] == 4 and clipped["energy_j"] == pytest.approx(1200)
    with pytest.raises(AssertionError, match="outside the samples"):
        summarize(samples, t_start=10, t_end=20)
    by_wall = summarize(samples, wall_start=1.7e9 + 0.5, wall_end=1.7e9 + 2.5)  # the same window in unix time
    assert by_wall["energy_j"] == pytest.approx(600) and by_wall["duration_s"] == pytest.approx(2.0)


def test_summary_energy_without_a_counter_is_the_trapezoid_of_power():
    samples = [_sample(t, [_gpu(power_w=p)]) for t, p in [(0, 100.0), (1, 300.0), (2, 300.0)]]
    s = summarize(samples)
    assert s["energy_source"] == "power_integral" and s["energy_j"] == pytest.approx(200 + 300)
    assert s["mean_power_w"] == pytest.approx(250) and s["peak_power_w"] == 300
    assert s["peak_power_w"] >= s["mean_power_w"]


def test_summary_sums_gpus_and_keeps_peak_memory_per_gpu():
    samples = [
        _sample(
            t, [_gpu(0, 300.0, 300.0 * t, memory_used_bytes=10 + t), _gpu(1, 200.0, 200.0 * t, memory_used_bytes=5)]
        )
        for t in range(3)
    ]
    s = summarize(samples, price_per_gpu_hour=3.0, gpu_count=2)
    assert s["energy_j"] == pytest.approx(1000) and s["mean_power_w"] == pytest.approx(500)
    assert s["peak_power_w"] == 500 and s["peak_memory_bytes"] == 12 and s["mean_utilization_pct"] == 90
    assert s["cost"] == pytest.approx(3.0 * 2 * 2 / 3600)


def test_throttled_seconds_count_only_real_limits():
    # idle (0x1) and application clocks (0x2) are choices; power cap (0x4) and hw thermal (0x40) are limits.
    reasons = [0, 0x4, 0x1, 0x40 | 0x1, 0x2, 0]
    samples = [_sample(t, [_gpu(throttle_reasons=r)]) for t, r in enumerate(reasons)]
    assert summarize(samples)["throttled_s"] == pytest.approx(2.0)  # [1, 2) and [3, 4)
    assert summarize(samples, t_start=1.5, t_end=3.5)["throttled_s"] == pytest.approx(1.0)
    assert summarize([_sample(t, [_gpu(throttle_reasons=0x3)]) for t in range(3)])["throttled_s"] == 0


def test_summary_cost_is_price_times_gpus_times_hours():
    samples = [_sample(0.0, [_gpu()]), _sample(1800.0, [_gpu()])]
    assert summarize(samples, price_per_gpu_hour=2.0, gpu_count=8)["cost"] == pytest.approx(8.0)
    assert summarize(samples)["cost"] is None


def test_summary_of_cpu_samples_uses_rapl_deltas():
    samples = [_sample(t, rapl_energy_j=e, rss_bytes=r) for t, e, r in [(0, 0.0, 10), (1, 50.0, 30), (2, 150.0, 20)]]
    s = summarize(samples)
    assert s["backend"] == "cpu" and s["energy_source"] == "rapl" and s["energy_j"] == pytest.approx(150)
    assert s["mean_power_w"] == pytest.approx(75) and s["peak_power_w"] == pytest.approx(100)
    assert s["peak_memory_bytes"] == 30 and s["throttled_s"] is None
    no_rapl = summarize([_sample(t) for t in range(3)])
    assert no_rapl["energy_j"] is None and no_rapl["energy_kwh"] is None and no_rapl["mean_power_w"] is None


def test_summary_reports_why_a_source_failed():
    info = {"kind": "info", "t": 0.0, "nvml_error": "NVMLError_DriverNotLoaded: Driver Not Loaded", "rapl_error": None}
    error = {"kind": "error", "source": "rapl", "t": 1.0, "error": "at t=1.0s: PermissionError: denied"}
    s = summarize([info, _sample(0.0), error, _sample(2.0)])
    assert s["nvml_error"] == info["nvml_error"] and s["rapl_error"] == error["error"] and s["sampler_error"] is None
