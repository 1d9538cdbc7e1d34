"""H.264 camera capacity (issue 15): the most H.264 cameras one recording server (rs1)
records and serves live, encrypted and in plaintext, measured as the MJPEG capacity of
:mod:`bench.run` is.

    .venv/bin/python -m bench.h264_capacity [--quick] [--steps 100,200] [--modes encrypted]
                                            [--out-dir DIR] [--profile N] [--perf N]

The load: cameras of :mod:`bench.rtspfarm` (RTP over RTSP/TCP, 4 Mbit/s, 25 pictures a
second, 640x360, a keyframe a second; one clip encoded once by FFmpeg, replayed by farm
processes of up to 250 cameras each, every camera at its own phase, its pictures' times
from its own clock by an RTCP sender report), each recorded by rs1 and watched live by one
viewer on ``live.ws`` (fMP4 fragments over a WebSocket, TLS when rs1 encrypts; viewer
processes of :mod:`bench.viewers` with :mod:`bench._ws_viewer`, up to 150 connections
each). A step passes when the p99 delay (arrival of a picture's last byte at its viewer
minus the picture's time at the camera) is under 200 ms and nothing is lost: no camera
skipped a picture, the recorder dropped none, no viewer missed one (the fragments'
sequence numbers), every viewer got at least 90% of what its camera sent. The search goes
up the steps, measuring each step encrypted and in plaintext back to back (the same
cameras, minutes apart at most), each mode until a step of it fails twice. Delays are
read on the cameras' clock (the monotonic clock, set to the wall clock once at the start,
shared by the farms and the viewers), which corrections of the system's time leave alone.

Results: ``h264.json`` and ``h264.md`` in ``--out-dir`` (bench/results/), with the command,
the load average at each step and rs1's CPU (its whole process tree, from /proc) per
picture recorded and served. ``--profile N`` records rs1 with py-spy at N cameras
(encrypted) and writes the hottest functions to ``profile-h264-N.txt``. ``--perf N``
samples rs1 with Linux ``perf`` at N cameras in each mode (kernel and native code included,
which py-spy does not see) and writes where its CPU went, in µs per picture, to
``perf-h264-MODE-N.txt`` and ``perf-h264-N.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._site import BenchSite, eventually, python_module, run_viewers, stop_process
from bench.rtspfarm import write_clip
from bench.run import (
    DELAY_P99_LIMIT,
    log,
    machine,
    start_perf,
    start_py_spy,
    summarize_perf,
    summarize_profile,
)
from watchkeep.errors import SiteNotReady

HERE = Path(__file__).resolve().parent
FPS = 25
MBIT_S = 4.0
CAMERA = {"codec": "H264", "width": 640, "height": 360, "fps": FPS, "mbit_s": MBIT_S}
CAPACITY_TARGET = 500
RATIO_TARGET = 0.9
US_PER_FRAME_BUDGET = 50.0
PER_FARM = 250
PER_VIEWER_PROCESS = 150
MODES = ("encrypted", "plaintext")
SWITCH_TIMEOUT = 240.0  # seconds for rs1 to switch its encryption on or off


@dataclass(frozen=True)
class Sizes:
    steps: tuple[int, ...]
    warmup: float
    duration: float
    budget: float  # seconds of search for each mode
    settle: float  # seconds after the cameras run, for the last configuration pushes


FULL = Sizes(
    steps=(50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 600, 800),
    warmup=4.0,
    duration=10.0,
    budget=420.0,
    settle=2.0,
)
QUICK = Sizes(steps=(2,), warmup=0.5, duration=1.0, budget=60.0, settle=0.2)


def camera_name(index: int) -> str:
    return f"h{index:04d}"


@contextlib.contextmanager
def rtsp_farms(
    network: str, cameras: int, clip: Path, clock_offset: float
) -> Iterator[list[tuple[str, Any]]]:
    """Farm processes for ``cameras`` cameras, farm k at ``NETWORK.(200+k)`` port 8554."""
    farms: list[tuple[str, subprocess.Popen[str]]] = []
    try:
        for k in range(-(-cameras // PER_FARM)):
            address = f"{network}.{200 + k}"
            process = python_module(
                "bench.rtspfarm", "--address", address, "--port", "8554", "--clip", str(clip),
                "--clock-offset", repr(clock_offset), "--stats", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )  # fmt: skip
            farms.append((address, process))
        for _address, process in farms:
            assert process.stdout is not None
            if not process.stdout.readline().startswith("ready "):
                raise RuntimeError("an RTSP camera farm failed to start")
        yield farms
    finally:
        for _address, process in farms:
            stop_process(process)


def farm_stats(process: subprocess.Popen[str]) -> dict[str, Any]:
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write("stats\n")
    process.stdin.flush()
    stats: dict[str, Any] = json.loads(process.stdout.readline())
    return stats


def search(
    bench: BenchSite,
    sizes: Sizes,
    modes: tuple[str, ...],
    farms: list[tuple[str, Any]],
    steps: tuple[int, ...],
    *,
    fixed: bool,
    profile: int | None,
    perf: bool = False,
    out_dir: Path,
    clock_offset: float,
) -> dict[str, dict[str, Any]]:
    """Both searches at once: at each step the cameras are added once, then measured in
    each mode still going, back to back (encrypted, plaintext; the next step in the other
    order, which saves a switch and favours neither), so that the two modes meet the same
    cameras and, as far as can be, the same load from other work on the machine."""
    found: dict[str, dict[str, Any]] = {m: {"mode": m, "max_cameras": 0, "rows": []} for m in modes}
    going = list(modes)
    failed: set[str] = set()
    began = time.monotonic()
    added = 0
    try:
        for index, step in enumerate(steps):
            if added and time.monotonic() - began > sizes.budget * len(modes):
                log(f"h264: time budget spent before {step} cameras")
                break
            calls = [
                (
                    "POST",
                    "/api/v1/cameras",
                    {
                        "name": camera_name(i),
                        "recording_server": "rs1",
                        "source": {
                            "kind": "rtsp",
                            "url": f"rtsp://{farms[i // PER_FARM][0]}:8554/{camera_name(i)}",
                        },
                    },
                )
                for i in range(added, step)
            ]
            bench.api_many(calls)
            added = step

            def all_running(n: int = step) -> bool:
                cams = bench.rs_status()["cameras"]
                return len(cams) >= n and all(c["frames"] > 0 for c in cams)

            try:
                eventually(all_running, f"{step} H.264 cameras running on rs1", timeout=180)
            except SiteNotReady as exc:
                # rs1 overloaded past answering (its control link times out): a step that
                # fails for every mode still going, with the reason; the search ends here.
                log(f"h264: {exc}")
                for m in going:
                    found[m]["stopped"] = f"at {step} cameras: {exc}"
                return found
            time.sleep(sizes.settle + 0.01 * len(calls))  # the last configuration pushes land
            for mode in going if index % 2 == 0 else going[::-1]:
                encrypted = mode == "encrypted"
                if bool(bench.server("rs1")["encrypted_now"]) != encrypted:
                    try:
                        # With hundreds of cameras on a loaded machine the switch (a
                        # configuration push, the listener's restart, a heartbeat) is slow.
                        bench.set_encryption("rs1", encrypted, timeout=SWITCH_TIMEOUT)
                    except SiteNotReady as exc:
                        # The figures so far are kept; the search cannot go on.
                        log(f"h264: {exc}")
                        for m in going:
                            found[m]["stopped"] = f"switching rs1's encryption: {exc}"
                        return found
                    time.sleep(sizes.settle)
                for attempt in (1, 2):
                    row = measure(
                        bench,
                        sizes,
                        step,
                        farms,
                        encrypted,
                        profile,
                        out_dir,
                        clock_offset,
                        perf=perf,
                    )
                    row["attempt"] = attempt
                    found[mode]["rows"].append(row)
                    log(
                        f"h264 {mode} {step:>4} cameras: p50 {row['delay_p50_ms']} p99"
                        f" {row['delay_p99_ms']} ms, lost {row['frames_lost']}, rs1"
                        f" {row['server_cores']:.2f} cores ({row['server_us_per_frame']}"
                        f" µs/picture), load {row['load_average_1m']},"
                        f" {'ok' if row['ok'] else 'FAILS'}"
                    )
                    if row["ok"] or profile or perf or fixed:
                        break
                if row["ok"] and mode not in failed:
                    found[mode]["max_cameras"] = step
                if not row["ok"]:
                    failed.add(mode)
            if not fixed:
                going = [m for m in going if m not in failed]
                if not going:
                    break
    finally:
        bench.api_many(
            [("DELETE", f"/api/v1/cameras/{camera_name(i)}", None) for i in range(added)]
        )
        try:
            eventually(lambda: not bench.rs_status()["cameras"], "cameras removed from rs1", 120)
        except SiteNotReady as exc:
            log(f"h264: {exc} (the site is stopped with the run)")
    return found


def measure(
    bench: BenchSite,
    sizes: Sizes,
    cameras: int,
    farms: list[tuple[str, Any]],
    encrypted: bool,
    profile: int | None,
    out_dir: Path,
    clock_offset: float,
    *,
    perf: bool = False,
) -> dict[str, Any]:
    rs1 = bench.site.servers["rs1"]
    names = [camera_name(i) for i in range(cameras)]
    tokens = bench.stream_tokens(names)
    targets = [
        {
            "address": rs1.address,
            "port": rs1.ports["data"],
            "host": rs1.host,
            "path": f"/api/v1/cameras/{name}/live.ws",
            "token": tokens[name],
        }
        for name in names
    ]
    farms_before = [farm_stats(p) for _, p in farms]
    status = bench.rs_status()
    recorder_before = status["recorder"]
    received_before = sum(c["frames"] for c in status["cameras"])
    received_began = time.monotonic()
    spy: list[subprocess.Popen[str]] = []

    mode = "encrypted" if encrypted else "plaintext"
    perf_data = out_dir / f"perf-h264-{mode}-{cameras}.data"

    def start_profile() -> None:
        if profile:
            spy.append(start_py_spy(bench.pid("rs1"), sizes.duration, out_dir, cameras))
        if perf:
            spy.append(start_perf(bench.pid("rs1"), sizes.duration, perf_data))

    result = run_viewers(
        targets,
        ca=bench.site.home.ca_cert if encrypted else None,
        token=None,
        warmup=sizes.warmup,
        duration=sizes.duration,
        processes=-(-cameras // PER_VIEWER_PROCESS),
        watch={"server": bench.pid("rs1"), **{f"farm{i}": p.pid for i, (_, p) in enumerate(farms)}},
        during=start_profile,
        protocol="ws",
        clock_offset=clock_offset,
    )
    load = os.getloadavg()[0]
    # How far the wall clock has moved from the cameras' clock since the run began (the
    # system's time corrected): delays are measured on the cameras' clock, immune to it.
    clock_moved = time.time() - time.monotonic() - clock_offset
    farms_after = [farm_stats(p) for _, p in farms]
    status = bench.rs_status()
    # Pictures rs1 received from its cameras (and handed to the hub and the recorder), per
    # second, over a window a little wider than the viewers' (the status calls around it).
    received = sum(c["frames"] for c in status["cameras"]) - received_before
    received_per_second = received / (time.monotonic() - received_began)
    recorder_after = status["recorder"]
    stalled = [c["name"] for c in status["cameras"] if c["fps"] < 0.9 * FPS]
    for process in spy:
        process.wait(60)
    if profile:
        raw = out_dir / f"profile-{cameras}.raw"
        summarize_profile(raw, out_dir / f"profile-h264-{cameras}.txt")
        raw.unlink()
    skipped = sum(
        a["skipped"] - b["skipped"] for a, b in zip(farms_after, farms_before, strict=True)
    )
    dropped = recorder_after["frames_dropped"] - recorder_before["frames_dropped"]
    written = recorder_after["frames_written"] - recorder_before["frames_written"]
    expected = FPS * result.seconds
    p99 = result.delay(0.99)
    lost = result.gaps + skipped + dropped
    ok = (
        p99 is not None
        and p99 < DELAY_P99_LIMIT
        and lost == 0
        and result.connected == cameras
        and result.error_count == 0
        and result.ended_early == 0
        and result.frames_per_viewer_min >= 0.9 * expected
    )
    cores = result.cpu["server"]
    recorded_per_second = written / result.seconds if result.seconds else 0.0
    us_per_frame = cores * 1e6 / result.frames_per_second if result.frames else None
    by_part = (
        summarize_perf(perf_data, out_dir / f"perf-h264-{mode}-{cameras}.txt", us_per_frame)
        if perf
        else None
    )
    return {
        "cameras": cameras,
        "encrypted": encrypted,
        "ok": ok,
        "delay_p50_ms": _ms(result.delay(0.5)),
        "delay_p99_ms": _ms(p99),
        "delay_max_ms": _ms(result.delay(1.0)),
        "frames_lost": lost,
        "viewer_gaps": result.gaps,
        "camera_skips": skipped,
        "recorder_drops": dropped,
        "frames_per_viewer_min": result.frames_per_viewer_min,
        "frames_expected_per_viewer": round(expected),
        "frames_viewed_per_second": round(result.frames_per_second, 1),
        "frames_recorded_per_second": round(recorded_per_second, 1),
        "viewers_connected": result.connected,
        "viewer_errors": result.error_count,
        "viewer_error_samples": result.errors[:3],
        "viewers_without_pictures": result.silent,
        "cameras_below_rate": stalled[:10],
        "viewers_ended_early": result.ended_early,
        "megabytes_per_second_to_viewers": round(result.megabytes_per_second, 1),
        "server_cores": round(cores, 3),
        # rs1's CPU (all its threads) per picture served to its viewer (and recorded): the
        # viewers count exactly the measured window, the recorder's counter moves by batches.
        "server_us_per_frame": round(us_per_frame, 1) if us_per_frame else None,
        # With --perf: rs1's CPU by part, percent (see bench.run.summarize_perf).
        "server_cpu_percent_by_part": by_part,
        # The same per picture rs1 received: what it costs whatever the viewers got.
        "server_us_per_frame_received": round(cores * 1e6 / received_per_second, 1)
        if received_per_second
        else None,
        "frames_received_per_second": round(received_per_second, 1),
        "server_kernel_cores": round(result.system["server"], 3),
        "server_loop_thread_cores": round(result.main_thread["server"], 3),
        "farm_cores": round(sum(v for k, v in result.cpu.items() if k.startswith("farm")), 3),
        "viewer_cores": round(sum(v for k, v in result.cpu.items() if k.startswith("viewers")), 3),
        "viewer_processes": -(-cameras // PER_VIEWER_PROCESS),
        "machine_idle_cores": round(result.machine_idle, 3),
        "farm_max_tick_lag_ms": max(
            round(f["max_tick_lag_seconds"] * 1000, 1) for f in farms_after
        ),
        "load_average_1m": round(load, 2),
        "wall_clock_moved_ms": round(clock_moved * 1000, 1),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def assemble(
    searches: dict[str, dict[str, Any]], info: dict[str, Any], *, quick: bool, command: str
) -> dict[str, Any]:
    encrypted = searches.get("encrypted", {}).get("max_cameras")
    plaintext = searches.get("plaintext", {}).get("max_cameras")
    ratio = round(encrypted / plaintext, 3) if encrypted is not None and plaintext else None
    at_best = [
        r
        for r in searches.get("encrypted", {}).get("rows", [])
        if r["ok"] and r["cameras"] == encrypted
    ]
    return {
        "benchmark": "h264_capacity",
        "quick": quick,
        "command": command,
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "camera": CAMERA,
        "criteria": f"p99 delay < {DELAY_P99_LIMIT * 1000:.0f} ms (camera to viewer), no picture "
        "lost (camera skips, recorder drops, viewer gaps), every viewer >= 90% of the pictures",
        "max_h264_cameras_encrypted": encrypted,
        "max_cameras_encrypted": encrypted,
        "max_cameras_plaintext": plaintext,
        "capacity_tls_vs_plain_ratio": ratio,
        "rs1_us_per_frame_encrypted": at_best[0]["server_us_per_frame"] if at_best else None,
        "targets": {
            "max_h264_cameras_encrypted": f">= {CAPACITY_TARGET}",
            "capacity_tls_vs_plain_ratio": f">= {RATIO_TARGET}",
            "rs1_us_per_frame_encrypted": f"<= {US_PER_FRAME_BUDGET}",
        },
        "machine": info,
        "by_step": by_step(searches),
        "searches": searches,
    }


def by_step(searches: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each step measured in both modes (its last try in each), side by side: encryption's
    cost on the same cameras at the same moment."""
    last: dict[tuple[str, int], dict[str, Any]] = {}
    for mode, found in searches.items():
        for row in found["rows"]:
            last[mode, row["cameras"]] = row
    out = []
    for cameras in sorted({c for _, c in last}):
        enc, plain = last.get(("encrypted", cameras)), last.get(("plaintext", cameras))
        if enc is None or plain is None:
            continue
        out.append(
            {
                "cameras": cameras,
                "ok_encrypted": enc["ok"],
                "ok_plaintext": plain["ok"],
                "p99_ms_encrypted": enc["delay_p99_ms"],
                "p99_ms_plaintext": plain["delay_p99_ms"],
                "us_per_frame_encrypted": enc["server_us_per_frame"],
                "us_per_frame_plaintext": plain["server_us_per_frame"],
                "load_average_1m": [enc["load_average_1m"], plain["load_average_1m"]],
            }
        )
    return out


_COLUMNS = (
    ("cameras", "cameras"),
    ("attempt", "try"),
    ("ok", "ok"),
    ("delay_p50_ms", "p50 ms"),
    ("delay_p99_ms", "p99 ms"),
    ("frames_lost", "lost"),
    ("server_cores", "rs1 cores"),
    ("server_loop_thread_cores", "rs1 loop thread"),
    ("server_us_per_frame", "rs1 µs/picture"),
    ("server_us_per_frame_received", "rs1 µs/picture received"),
    ("viewer_cores", "viewers cores"),
    ("farm_cores", "farms cores"),
    ("machine_idle_cores", "idle cores"),
    ("load_average_1m", "load avg"),
    ("wall_clock_moved_ms", "wall clock moved ms"),
)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# H.264 camera capacity (issue 15)",
        "",
        f"Run {result['when']}{' (quick)' if result['quick'] else ''}: `{result['command']}`",
        "",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, load average "
        f"{result['machine']['load_average_1m_at_start']} at start, "
        f"{result['machine'].get('load_average_1m_at_end')} at end (shared with other work).",
        "",
        f"Camera: H.264 {CAMERA['width']}x{CAMERA['height']}, {CAMERA['fps']} pictures/s, "
        f"{CAMERA['mbit_s']} Mbit/s, RTP over RTSP/TCP; one live viewer each on live.ws.",
        f"Criteria: {result['criteria']}.",
        "",
        "| figure | value | target |",
        "| --- | --- | --- |",
    ]
    for key in (
        "max_h264_cameras_encrypted",
        "max_cameras_plaintext",
        "capacity_tls_vs_plain_ratio",
        "rs1_us_per_frame_encrypted",
    ):
        lines.append(f"| {key} | {result[key]} | {result['targets'].get(key, '')} |")
    if result["by_step"]:
        lines += [
            "",
            "## each step in both modes, back to back",
            "",
            "| cameras | ok enc / plain | p99 ms enc / plain | rs1 µs/picture enc / plain"
            " | load avg enc / plain |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in result["by_step"]:
            lines.append(
                f"| {r['cameras']} | {r['ok_encrypted']} / {r['ok_plaintext']} |"
                f" {r['p99_ms_encrypted']} / {r['p99_ms_plaintext']} |"
                f" {r['us_per_frame_encrypted']} / {r['us_per_frame_plaintext']} |"
                f" {r['load_average_1m'][0]} / {r['load_average_1m'][1]} |"
            )
    for mode, found in result["searches"].items():
        lines += [
            "",
            f"## {mode}",
            "",
            "| " + " | ".join(title for _, title in _COLUMNS) + " |",
            "|" + " --- |" * len(_COLUMNS),
        ]
        for row in found["rows"]:
            lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in _COLUMNS) + " |")
        if found.get("stopped"):
            lines += ["", f"Stopped: {found['stopped']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the smallest size (smoke test)")
    parser.add_argument("--steps", help="exactly these camera counts (comma-separated), no search")
    parser.add_argument("--modes", default=",".join(MODES), help="encrypted, plaintext or both")
    parser.add_argument("--out-dir", type=Path, default=HERE / "results")
    parser.add_argument("--profile", type=int, metavar="CAMERAS", help="py-spy rs1 at CAMERAS")
    parser.add_argument(
        "--perf",
        type=int,
        metavar="CAMERAS",
        help="Linux perf on rs1 at CAMERAS, in each mode: its CPU by part (kernel, OpenSSL, ...)",
    )
    args = parser.parse_args(argv)
    if args.perf and args.profile:
        parser.error("--perf and --profile: one at a time (each would count the other)")
    sizes = QUICK if args.quick else FULL
    modes = ("encrypted",) if args.profile else tuple(args.modes.split(","))
    if set(modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}")
    fixed = bool(args.steps or args.profile or args.perf)
    steps = (
        (args.profile or args.perf,)
        if args.profile or args.perf
        else tuple(int(n) for n in args.steps.split(","))
        if args.steps
        else sizes.steps
    )
    command = "python -m bench.h264_capacity " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    info = machine()
    searches: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(
        prefix="watchkeep-h264-bench-", dir=os.environ.get("WATCHKEEP_BENCH_DIR")
    ) as tmp:
        work = Path(tmp)
        clip = work / "clip.h264"
        write_clip(clip, FPS, MBIT_S)
        bench = BenchSite(work / "site", failover_after=3600.0, heartbeat=1.0)
        try:
            bench.start()
            log(f"site up on {bench.site.network}.x")
            # The cameras' clock (farms and viewers): the monotonic clock, set to the wall
            # clock once, here.
            clock_offset = time.time() - time.monotonic()
            with rtsp_farms(bench.site.network, max(steps), clip, clock_offset) as farms:
                searches = search(
                    bench, sizes, modes, farms, steps, fixed=fixed, profile=args.profile,
                    perf=bool(args.perf), out_dir=args.out_dir, clock_offset=clock_offset,
                )  # fmt: skip
        finally:
            bench.stop()
    if args.profile:
        return 0
    if args.perf:
        rows = [row for found in searches.values() for row in found["rows"]]
        (args.out_dir / f"perf-h264-{args.perf}.json").write_text(
            json.dumps({"command": command, "machine": info, "rows": rows}, indent=2) + "\n"
        )
        return 0
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    result = assemble(searches, info, quick=args.quick, command=command)
    (args.out_dir / "h264.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / "h264.md").write_text(markdown(result))
    for key in ("max_h264_cameras_encrypted", "max_cameras_plaintext", "capacity_tls_vs_plain_ratio",
                "rs1_us_per_frame_encrypted"):  # fmt: skip
        print(f"{key}: {result[key]}")
    print(f"written to {args.out_dir}/h264.json, h264.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
