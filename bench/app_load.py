"""Load and latency benchmark of the Gradio app, launched as `python app.py` on a free local port.

    python -m bench.app_load                       # 16 clients x 25 runs + latency at L=256 / 16384
    python -m bench.app_load --clients 4 --requests 3 --no-browser

1. Load: `--clients` concurrent gradio_client clients each send `--requests` /run calls (the
   paper's L=256 sequence, alternating channel order). Reports errors (must be 0) and
   request -> response latency p50 / p95 / max, and throughput.
2. Latency: request -> response for L=256 and L=16384 (median of `--repeats`), and, with
   Playwright and Debian's chromium, click-Run -> charts redrawn in a real browser.
Targets on an idle CPU: L=256 <= 1 s and L=16384 <= 3 s request-to-rendered-charts.
Everything is local (127.0.0.1); every loop is bounded; the server is stopped at the end.
The helpers (free_port, start_app, stop) are shared with tests/test_app_e2e.py and test_browser.py.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["layer 1", "layer 2"]
CHROMIUM = "/usr/bin/chromium"
CHART = "#charts .vega-embed canvas, #charts .vega-embed svg.marks"     # what vega-embed draws into
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(log: Path, env_extra: dict | None = None, timeout_s: float = 240.0):
    """`python app.py` on 127.0.0.1:<free port>; returns (process, url) once / answers 200."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", **(env_extra or {})}
    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{Path(log).read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
    stop(proc)
    raise RuntimeError(f"app did not answer within {timeout_s:.0f} s:\n{Path(log).read_text()}")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def view_args(text, sort="index"):
    return (text, sort, 256, None, None, LAYERS, "max")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def load_test(url: str, text: str, clients: int, requests: int, timeout_s: float = 300.0) -> dict:
    from gradio_client import Client

    def worker(i):
        c = Client(url, verbose=False)
        lat, errors = [], []
        for k in range(requests):
            t = time.perf_counter()
            try:
                c.submit(*view_args(text, "Δ ratio" if (i + k) % 2 else "index"),
                         api_name="/run").result(timeout=timeout_s)
                lat.append(time.perf_counter() - t)
            except Exception as e:                       # counted and reported, never hidden
                errors.append(f"{type(e).__name__}: {e}")
        return lat, errors

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    lat = [x for r in results for x in r[0]]
    errors = [e for r in results for e in r[1]]
    return {"clients": clients, "requests_each": requests, "ok": len(lat), "errors": len(errors),
            "first_error": errors[0] if errors else None, "p50_s": pct(lat, 50) if lat else None,
            "p95_s": pct(lat, 95) if lat else None, "max_s": max(lat) if lat else None,
            "throughput_rps": len(lat) / wall, "wall_s": wall}


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc): what a request costs the server,
    independent of how many other processes share the cores."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request_latency(url: str, text: str, repeats: int, pid: int) -> dict:
    """Median request -> response wall time, and the server's CPU seconds per request."""
    from gradio_client import Client
    c = Client(url, verbose=False)
    c.predict(*view_args(text), api_name="/run")                 # warm-up
    times, cpu0 = [], cpu_seconds(pid)
    for _ in range(repeats):
        t = time.perf_counter()
        c.predict(*view_args(text), api_name="/run")
        times.append(time.perf_counter() - t)
    return {"wall_median_s": statistics.median(times), "server_cpu_s": (cpu_seconds(pid) - cpu0) / repeats}


def browser_latency(url: str, texts: dict, repeats: int) -> dict:
    """Click Run -> a new chart canvas drawn (vega-embed), in Debian's chromium."""
    from playwright.sync_api import sync_playwright
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1200})
            page.goto(url, timeout=120_000)
            page.wait_for_selector(CHART, timeout=120_000)
            for name, text in texts.items():
                times = []
                for k in range(repeats + 1):                          # the first one warms up
                    # a different memory token each time: an identical spec would not be redrawn
                    page.fill("#tokens textarea", with_memory(text, k))
                    times.append(click_run_and_wait(page))
                out[name] = statistics.median(times[1:])
        finally:
            browser.close()
    return out


def with_memory(text: str, k: int) -> str:
    from viz.sequences import format_tokens, parse_tokens, set_memory_token
    return format_tokens(set_memory_token(parse_tokens(text), k % 16))


def click_run_and_wait(page, timeout_ms: int = 120_000) -> float:
    """Mark the current chart, click Run, wait until a new one is drawn; seconds taken."""
    page.evaluate(f"""() => {{ const c = document.querySelector("{CHART}"); if (c) c.dataset.stale = '1'; }}""")
    t = time.perf_counter()
    page.click("#run")
    page.wait_for_function(f"""() => {{ const c = document.querySelector("{CHART}");
                                        return c && !c.dataset.stale && c.getBoundingClientRect().height > 100; }}""",
                           timeout=timeout_ms)
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=5, help="latency runs per length")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--log", default="/tmp/mambascope-bench-app.log")
    args = ap.parse_args(argv)
    proc, url = start_app(Path(args.log))
    try:
        from gradio_client import Client
        c = Client(url, verbose=False)
        t256 = c.predict(256, -1, -1, 0, 1, False, 0, api_name="/generate")
        t16k = c.predict(16384, -1, -1, 0, 1, False, 0, api_name="/generate")
        report = {"cpu_count": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
        report["latency_request"] = {"L=256": request_latency(url, t256, args.repeats, proc.pid),
                                     "L=16384": request_latency(url, t16k, args.repeats, proc.pid)}
        print(json.dumps(report), flush=True)
        if not args.no_browser:
            report["latency_click_to_charts_s"] = browser_latency(url, {"L=256": t256, "L=16384": t16k},
                                                                  args.repeats)
            print(json.dumps(report), flush=True)
        report["load"] = load_test(url, t256, args.clients, args.requests)
        report["loadavg_at_end"] = os.getloadavg()
    finally:
        stop(proc)
    print(json.dumps(report, indent=2))
    return 0 if report["load"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
