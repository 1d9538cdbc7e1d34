"""The stream benchmark's results: JSON (top-level keys fixed by issue 6), Markdown with
the method, a table for the terminal and a PNG chart drawn with Pillow."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
IMPROVEMENTS = HERE / "improvements.json"

TARGETS = {
    "tls_vs_plain_ratio": (">=", 0.85),
    "tls_vs_nginx_ratio": (">=", 0.5),
    "max_cameras_encrypted": (">=", 500),
    "handshake_ratio_vs_openssl": (">=", 0.5),
    "failover_seconds": ("<=", 5.0),
}


def _meets(value: Any, target: tuple[str, float]) -> bool | None:
    if value is None:
        return None
    op, bound = target
    return bool(value >= bound) if op == ">=" else bool(value <= bound)


def assemble(
    figures: dict[str, Any], info: dict[str, Any], *, quick: bool, seconds: float
) -> dict[str, Any]:
    throughput = figures.get("throughput", {})
    capacity = figures.get("capacity", {})
    handshakes = figures.get("handshakes", {})
    failover = figures.get("failover", {})
    pki = figures.get("pki", {})
    result: dict[str, Any] = {
        "tls_vs_plain_ratio": throughput.get("tls_vs_plain_ratio"),
        "tls_vs_nginx_ratio": throughput.get("tls_vs_nginx_ratio"),
        "max_cameras_encrypted": capacity.get("max_cameras_encrypted"),
        "handshake_ratio_vs_openssl": handshakes.get("handshake_ratio_vs_openssl"),
        "failover_seconds": failover.get("failover_seconds"),
        "issue_per_second": pki.get("issue_per_second"),
    }
    meets: dict[str, Any] = {}
    for key, target in TARGETS.items():
        value = result[key]
        if isinstance(value, dict):
            meets[key] = {k: _meets(v, target) for k, v in value.items()}
        else:
            meets[key] = _meets(value, target)
    result.update(
        {
            "benchmark": "stream",
            "quick": quick,
            "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "run_seconds": round(seconds, 1),
            "targets": {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()},
            "meets_target": meets,
            "machine": info,
            "figures": figures,
            "improvements": json.loads(IMPROVEMENTS.read_text()) if IMPROVEMENTS.exists() else [],
        }
    )
    return result


def write(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("stream.json", json.dumps(result, indent=2) + "\n"),
        ("stream.md", markdown(result)),
    ):
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out_dir / name)
    rows = result["figures"].get("throughput", {}).get("rows")
    if rows:
        chart(rows, out_dir / "stream.png", result)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _mark(meets: Any) -> str:
    if meets is None:
        return "not measured"
    if isinstance(meets, dict):
        return ", ".join(f"{k} {_mark(v)}" for k, v in meets.items())
    return "met" if meets else "MISSED"


def table(result: dict[str, Any]) -> str:
    lines = [f"{'figure':<28} {'value':<40} target"]
    for key in (
        "tls_vs_plain_ratio",
        "tls_vs_nginx_ratio",
        "max_cameras_encrypted",
        "handshake_ratio_vs_openssl",
        "failover_seconds",
        "issue_per_second",
    ):
        target = result["targets"].get(key, "")
        mark = _mark(result["meets_target"][key]) if key in result["meets_target"] else ""
        lines.append(f"{key:<28} {_fmt(result[key]):<40} {target} {mark}".rstrip())
    throughput = result["figures"].get("throughput")
    if throughput:
        lines += ["", "throughput (MB/s to all viewers; frames/s per viewer; server cores)"]
        for row in throughput["rows"]:
            lines.append(
                f"  {row['mode']:<14} {row['viewers']:>4} viewers {row['megabytes_per_second']:>9.1f} MB/s"
                f" {row['frames_per_second_per_viewer']:>7.1f} fps/viewer"
                f"  server {row['server_cores']:.2f} cores  p99 {_fmt(row['delay_p99_ms'])} ms"
            )
    capacity = result["figures"].get("capacity")
    if capacity:
        lines += ["", "capacity (encrypted, one viewer per camera)"]
        for row in capacity["rows"]:
            lines.append(
                f"  {row['cameras']:>5} cameras  p99 {_fmt(row['delay_p99_ms']):>7} ms  lost"
                f" {row['frames_lost']:>5}  rs1 {row['server_cores']:.2f} cores"
                f" (loop {row.get('server_loop_thread_cores', 0):.2f},"
                f" {row['server_core_percent_per_camera']:.3f}%/camera,"
                f" {row['server_rss_kb_per_camera']} KB/camera)  {'ok' if row['ok'] else 'FAILS'}"
            )
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    out = [
        "# Stream benchmark results",
        "",
        f"Run {result['when']}{' (--quick: smallest size, figures not meaningful)' if result['quick'] else ''},"
        f" {result['run_seconds']} s. Machine: {m['cpu']}, {m['cores']} cores,"
        f" {m['memory_gb']} GB; {m['platform']}. {versions}. Load average (1 min) at start"
        f" {m['load_average_1m_at_start']}, at end {m.get('load_average_1m_at_end')}: other work"
        " on the machine falls on both sides of each ratio alike, not on absolute figures.",
        "",
        "Produced by `bash scripts/bench.sh` (bench/run.py); every server, camera and viewer is"
        " a process on this machine's loopback addresses, all sharing its cores.",
        "",
        "## Summary",
        "",
        "| figure | value | target | |",
        "| --- | --- | --- | --- |",
    ]
    for key in result["targets"]:
        out.append(
            f"| `{key}` | {_fmt(result[key])} | {result['targets'][key]} |"
            f" {_mark(result['meets_target'][key])} |"
        )
    out.append(f"| `issue_per_second` | {_fmt(result['issue_per_second'])} | - | |")
    figures = result["figures"]
    throughput = figures.get("throughput")
    if throughput:
        cam = throughput["camera"]
        out += [
            "",
            "## 1. Stream throughput",
            "",
            f"One camera on rs1 (synthetic, {cam['width']}x{cam['height']}, {cam['target_bytes']} byte"
            f" frames, asked for {cam['fps']:g} fps, measured {cam['measured_fps']} fps): each viewer"
            f" asks for {throughput['nginx_limit_rate_bytes_per_second'] / 1e6:.1f} MB/s. Viewers are"
            " separate processes"
            " (bench/viewers.py: asyncio, uvloop, parts skipped by their Content-Length), started"
            " together, warmed up, then counted for a fixed time.",
            "",
            "**nginx, for fairness.** nginx (one worker process: the recording server is one"
            " process too) serves the same bytes: a recording of rs1's own live response (whole"
            " parts, byte for byte), as a static file with the same Content-Type, over TLS with"
            " rs1's certificate and key, `ssl_protocols TLSv1.2 TLSv1.3`, our intermediate"
            " cipher list and `ssl_ecdh_curve X25519:prime256v1:secp384r1`. Each viewer requests"
            " it again on the same connection when it ends. `nginx` is paced with `limit_rate` at"
            " exactly the camera's byte rate, so that both servers are offered the same load per"
            " viewer (a live stream cannot be sent faster than the camera makes it); the ratio"
            " at 100 viewers compares what each delivers when that load (2.4 GB/s) exceeds"
            " what the machine can do: each server's ceiling, with the same viewers.",
            "",
            "| mode | viewers | MB/s (all viewers) | fps per viewer | server cores | viewer cores | p50 / p99 delay ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in throughput["rows"]:
            out.append(
                f"| {r['mode']} | {r['viewers']} | {r['megabytes_per_second']} |"
                f" {r['frames_per_second_per_viewer']} | {r['server_cores']} | {r['viewer_cores']} |"
                f" {_fmt(r['delay_p50_ms'])} / {_fmt(r['delay_p99_ms'])} |"
            )
        out += ["", "| viewers | TLS / plaintext | TLS / nginx |", "| ---: | ---: | ---: |"]
        for r in throughput["ratios"]:
            out.append(
                f"| {r['viewers']} | {_fmt(r['tls_vs_plain'])} | {_fmt(r['tls_vs_nginx'])} |"
            )
        out += ["", "![throughput against viewers](stream.png)"]
    capacity = figures.get("capacity")
    if capacity:
        cam = capacity["camera"]
        out += [
            "",
            "## 2. Camera capacity (encryption on)",
            "",
            f"Cameras: {cam['width']}x{cam['height']}, {cam['fps']:g} fps, {cam['frame_bytes']} byte"
            f" frames ({cam['bit_rate_mbit_s']:g} Mbit/s), served as MJPEG over HTTP by camera-farm"
            " processes (bench/camfarm.py, 250 cameras each, frames spread over the frame interval,"
            " X-Timestamp set when a frame is made). rs1 pulls and parses them (sources of kind"
            " `mjpeg`, added through `POST /api/v1/cameras`), records them to disk and serves one"
            " encrypted live viewer per camera. The search steps up until a step fails:"
            f" {capacity['criteria']}; a step that fails is measured once more (attempt 2), as"
            " other work on the machine comes and goes. CPU and memory are rs1's, from /proc,"
            " over the counted window; memory per camera is above rs1 idle with no camera. rs1's"
            " loop thread is its event loop alone (one core at most); machine idle is what"
            " the two cores had left over the window (/proc/stat).",
            "",
            "| cameras | ok | p50 / p99 / max delay ms | frames lost | rs1 cores (kernel) | rs1 loop thread cores | µs rs1 CPU per frame | % core per camera | RSS MB | KB per camera | farm cores | viewer cores | machine idle cores |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in capacity["rows"]:
            attempt = " (again)" if r.get("attempt") == 2 else ""
            out.append(
                f"| {r['cameras']}{attempt} | {'yes' if r['ok'] else 'no'} | {r['delay_p50_ms']} /"
                f" {r['delay_p99_ms']} / {r['delay_max_ms']} | {r['frames_lost']} (gaps"
                f" {r['viewer_gaps']}, skips {r['camera_skips']}, recorder {r['recorder_drops']}) |"
                f" {r['server_cores']} ({r.get('server_kernel_cores')}) |"
                f" {r.get('server_loop_thread_cores', '-')} | {r.get('server_us_per_frame')} |"
                f" {r['server_core_percent_per_camera']} | {r['server_rss_mb']} |"
                f" {r['server_rss_kb_per_camera']} | {r['farm_cores']} | {r['viewer_cores']} |"
                f" {r.get('machine_idle_cores', '-')} |"
            )
        out += [
            "",
            f"Most cameras with every criterion met: **{capacity['max_cameras_encrypted']}**.",
        ]
    handshakes = figures.get("handshakes")
    if handshakes:
        out += [
            "",
            "## 3. TLS handshakes",
            "",
            f"{handshakes['clients']} client processes (bench/handshakes.py), each one full handshake"
            " at a time (new connection, no session offered, certificate not verified, reset once"
            f" done), {handshakes['seconds_each']} s against rs1's data listener, then as long"
            " against `openssl s_server -www` with rs1's certificate, key and TLS settings, on"
            " the same address.",
            "",
            "| key | rs1 /s | openssl s_server /s | ratio |",
            "| --- | ---: | ---: | ---: |",
        ]
        for r in handshakes["rows"]:
            out.append(
                f"| {r['key_type']} | {r['watchkeep_per_second']} | {r['openssl_s_server_per_second']} |"
                f" {r['ratio']} |"
            )
    failover = figures.get("failover")
    if failover:
        s = failover["settings"]
        out += [
            "",
            "## 4. Failover",
            "",
            f"A viewer (`watchkeep.client.view_camera`, verified TLS) watches a camera of rs1; rs1"
            " is killed with SIGKILL; the figure is the time from the kill to the first frame made"
            " after it, which only the failover server fo1 can send. Settings: heartbeat"
            f" {s['heartbeat_interval_s']} s, failover after {s['failover_after_s']} s of silence,"
            f" the viewer asks the site again {s['viewer_retry_pause_s']} s after a broken stream."
            f" Runs: {', '.join(str(t) for t in failover['runs'])} s; median"
            f" **{failover['failover_seconds']} s**.",
        ]
    pki = figures.get("pki")
    if pki:
        renew = pki["renew_all"]
        out += [
            "",
            "## 5. Certificate operations",
            "",
            "Issuance in process (bench/bench_pki.py's measurement: `SitePKI.issue` against a bare"
            " `cryptography` key generation and signature, run alternately):",
            "",
            "| key | watchkeep /s | bare cryptography /s | ratio |",
            "| --- | ---: | ---: | ---: |",
        ]
        for f in pki["issue_figures"]:
            out.append(
                f"| {f['figure'].removeprefix('issue_rate_')} | {f['watchkeep_per_second']} |"
                f" {f['baseline_per_second']} | {f['ratio']} |"
            )
        out += [
            "",
            f"Renewing every certificate of a site of {renew['servers']} recording servers"
            f" ({renew['key_type']}, `{renew['command']}`): {renew['renewed']} certificates in"
            f" {renew['seconds']} s ({renew['per_second']}/s).",
        ]
    improvements = result.get("improvements") or []
    if improvements:
        out += [
            "",
            "## Improvements to the stream path",
            "",
            "Measured before and after the change (with this benchmark unless the measure says"
            " otherwise; same machine, runs minutes apart); the profile that pointed at it is named.",
            "",
            "| change | commit | profile that pointed at it | measure | before | after | notes |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for item in improvements:
            out.append(
                f"| {item['change']} | {item['commit']} | {item['profile']} | {item['measure']} |"
                f" {item['before']} | {item['after']} | {item['runs']} |"
            )
    analysis = HERE / "analysis.md"
    if analysis.exists():
        out += ["", analysis.read_text().rstrip()]
    return "\n".join(out) + "\n"


def chart(rows: list[dict[str, Any]], path: Path, result: dict[str, Any]) -> None:
    """Throughput (MB/s to all viewers) against viewers, one line per mode."""
    width, height = 900, 560
    left, right, top, bottom = 90, 200, 60, 80
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=13)
    modes = ["plain", "tls", "nginx", "nginx-unpaced"]
    colours = {
        "plain": (90, 90, 90),
        "tls": (0, 110, 200),
        "nginx": (0, 150, 60),
        "nginx-unpaced": (230, 140, 0),
    }
    viewers = sorted({r["viewers"] for r in rows})
    peak = max(r["megabytes_per_second"] for r in rows) or 1.0
    scale_max = _nice(peak)
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(count: int) -> float:
        index = viewers.index(count)
        return left + (plot_w * index / (len(viewers) - 1) if len(viewers) > 1 else plot_w / 2)

    def y_of(value: float) -> float:
        return top + plot_h * (1 - value / scale_max)

    draw.text(
        (left, 8),
        "Live MJPEG throughput against viewers (one recording server)",
        fill="black",
        font=font,
    )
    draw.line((left, top, left, top + plot_h, left + plot_w, top + plot_h), fill="black", width=2)
    for i in range(6):
        value = scale_max * i / 5
        y = y_of(value)
        draw.line((left - 5, y, left + plot_w, y), fill=(225, 225, 225))
        draw.text((left - 10, y), f"{value:g}", fill="black", font=small, anchor="rm")
    for count in viewers:
        x = x_of(count)
        draw.text((x, top + plot_h + 12), str(count), fill="black", font=small, anchor="mt")
    draw.text((left + plot_w / 2, height - 30), "viewers", fill="black", font=font, anchor="mm")
    draw.text((15, top - 24), "MB/s to all viewers", fill="black", font=small)
    legend_y = top
    for mode in modes:
        points = [
            (x_of(r["viewers"]), y_of(r["megabytes_per_second"])) for r in rows if r["mode"] == mode
        ]
        if not points:
            continue
        colour = colours[mode]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=colour)
        label = {
            "plain": "watchkeep, plaintext",
            "tls": "watchkeep, TLS",
            "nginx": "nginx TLS, paced",
            "nginx-unpaced": "nginx TLS, unpaced",
        }[mode]
        draw.line(
            (width - right + 20, legend_y + 8, width - right + 45, legend_y + 8),
            fill=colour,
            width=3,
        )
        draw.text((width - right + 52, legend_y), label, fill="black", font=small)
        legend_y += 24
    note = f"{result['machine']['cpu']}, {result['machine']['cores']} cores; {result['when']}"
    draw.text((left, height - 14), note, fill=(100, 100, 100), font=small, anchor="lm")
    image.save(path)


def _nice(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``value``: the top of the axis."""
    exponent = math.floor(math.log10(value)) if value > 0 else 0
    for step in (1, 2, 2.5, 5, 10):
        bound = step * 10.0**exponent
        if bound >= value:
            return bound
    return 10.0 ** (exponent + 1)
