"""Load and latency benchmark of the Gradio app, launched as `python app.py` on a free local port.

    python -m bench.app_load                       # every scenario below
    python -m bench.app_load --scenarios lanes,share,memory,storage --no-browser
    python -m bench.app_load --clients 4 --requests 3 --no-browser

Scenarios (--scenarios, comma-separated; all by default):
  latency  request -> response for L=256 and L=16384 (median of `--repeats`), and, with Playwright
           and Debian's chromium, click-Run -> charts redrawn in a real browser.
           Targets on an idle CPU: L=256 <= 1 s and L=16384 <= 3 s request-to-rendered-charts.
  load     `--clients` concurrent gradio_client clients each send `--requests` /run calls (the
           paper's L=256 sequence, alternating channel order): errors (must be 0), latency
           p50 / p95 / max, throughput. Clients keep within the per-client share (one call at a time).
  lanes    8 heavy requests from 8 clients at once (dashboards, exports, interventions at L=16384)
           while another client sends light edits one after another: the edits' latency (target
           <= 2 s) and the heavy requests' wall time.
  share    one client submits 12 heavy requests at once: how many are refused (HTTP 429, the
           per-client share) and how long another client's one request takes meanwhile.
  memory   the server's RSS idle, at the peak of a burst of 16 mixed heavy requests (4 clients x 4),
           and 30 s after the burst (target: within 20% of idle).
  storage  5 identical safetensors exports at L=16384 and one upload attempt: files and bytes in
           the export folder (identical exports share one file), the upload's HTTP status (403).
Everything is local (127.0.0.1); every loop is bounded; the server is stopped at the end.
The helpers (free_port, start_app, stop, raw_call) are shared with tests/test_app_e2e.py, test_app_mechanism.py
and test_browser.py.
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


def raw_call(url: str, api: str, body: str, timeout_s: float = 120.0) -> tuple:
    """One endpoint call as raw HTTP, for what gradio_client cannot send (it refuses NaN and inf):
    POST the JSON text `body` ('{"data": [...]}', written as the caller wants: NaN, 1e400, ...)
    to /gradio_api/call/<api>, then read its event stream. Returns ("complete", data) or
    ("error", message or None: None is Gradio's generic error, the app's own raised nothing)."""
    req = urllib.request.Request(f"{url}gradio_api/call/{api.lstrip('/')}", data=body.encode("utf-8"),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        event_id = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api.lstrip('/')}/{event_id}", timeout=timeout_s) as r:
        lines = r.read().decode("utf-8").splitlines()
    events = [(a[len("event: "):], b[len("data: "):]) for a, b in zip(lines, lines[1:])
              if a.startswith("event: ") and b.startswith("data: ")]
    kind, data = next((e for e in reversed(events) if e[0] in ("complete", "error")), ("error", "null"))
    data = json.loads(data)
    return (kind, data) if kind == "complete" else ("error", (data or {}).get("error"))


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
    from tasks import INDUCTION
    from tasks.induction import CONTENT_VOCAB, set_memory_token
    return INDUCTION.format(set_memory_token(INDUCTION.parse(text), k % CONTENT_VOCAB))


def click_run_and_wait(page, timeout_ms: int = 120_000) -> float:
    """Mark the current chart, click Run, wait until a new one is drawn; seconds taken."""
    page.evaluate(f"""() => {{ const c = document.querySelector("{CHART}"); if (c) c.dataset.stale = '1'; }}""")
    t = time.perf_counter()
    page.click("#run")
    page.wait_for_function(f"""() => {{ const c = document.querySelector("{CHART}");
                                        return c && !c.dataset.stale && c.getBoundingClientRect().height > 100; }}""",
                           timeout=timeout_ms)
    return time.perf_counter() - t


def rss_mib(pid: int) -> float:
    """Resident set size of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def heavy_calls(text: str) -> list:
    """(args, api_name) of a mix of heavy requests on one sequence."""
    return [(view_args(text), "/run"), ((text,), "/export_safetensors"), ((text, 0, 4096, False), "/export_csv"),
            ((text, "induction-2layer.safetensors", "clamp Δ", "layer 2", "memory channels", None, None, 0.0),
             "/intervene")]


def timed(fn) -> tuple:
    """(seconds, error text or None) of fn()."""
    t = time.perf_counter()
    try:
        fn()
        return time.perf_counter() - t, None
    except Exception as e:                              # counted and reported, never hidden
        return time.perf_counter() - t, f"{type(e).__name__}: {str(e)[:160]}"


def lanes(url: str, long_text: str, short_text: str, n_heavy: int = 8, timeout_s: float = 600.0) -> dict:
    """n_heavy heavy requests from n_heavy clients at once; light edits from another client
    meanwhile, one after another until the heavy ones are done."""
    from gradio_client import Client
    calls = heavy_calls(long_text)
    clients = [Client(url, verbose=False) for _ in range(n_heavy + 1)]
    edits = [((short_text, 3), "/set_memory"), ((short_text, 10), "/move_trigger"),
             ((256, -1, -1, 5, 1, False, 0), "/generate"), (("Two triggers",), "/preset")]
    done = []
    with cf.ThreadPoolExecutor(n_heavy) as ex:
        t0 = time.perf_counter()
        futures = [ex.submit(timed, lambda c=c, a=calls[i % len(calls)]: c.submit(*a[0], api_name=a[1]).result(
            timeout=timeout_s)) for i, c in enumerate(clients[:n_heavy])]
        time.sleep(1.0)                                   # the heavy requests are queued or running
        light, k = [], 0
        while not all(f.done() for f in futures):
            args, api = edits[k % len(edits)]
            light.append(timed(lambda a=args, n=api: clients[-1].predict(*a, api_name=n)))
            k += 1
        done = [f.result() for f in futures]
        wall = time.perf_counter() - t0
    ok = [s for s, e in light if e is None]
    return {"heavy": n_heavy, "heavy_wall_s": wall, "heavy_max_s": max(s for s, _ in done),
            "heavy_errors": [e for _, e in done if e], "light_edits": len(light),
            "light_p50_s": statistics.median(ok) if ok else None, "light_max_s": max(ok) if ok else None,
            "light_errors": [e for _, e in light if e]}


def share(url: str, text: str, n: int = 12, timeout_s: float = 600.0) -> dict:
    """One client submits n heavy /run calls at once; another client sends one meanwhile."""
    from gradio_client import Client
    greedy, other = Client(url, verbose=False), Client(url, verbose=False)
    jobs = [greedy.submit(*view_args(text), api_name="/run") for _ in range(n)]
    time.sleep(0.5)
    other_s, other_err = timed(lambda: other.predict(*view_args(text), api_name="/run"))
    outcome = [timed(lambda j=j: j.result(timeout=timeout_s)) for j in jobs]
    refused = [e for _, e in outcome if e and "429" in e]
    return {"submitted": n, "refused_429": len(refused), "ok": sum(e is None for _, e in outcome),
            "other_errors": [e for _, e in outcome if e and "429" not in e], "other_client_s": other_s,
            "other_client_error": other_err}


def memory(url: str, pid: int, long_text: str, settle_s: float = 30.0, bursts: int = 2,
           timeout_s: float = 600.0) -> dict:
    """RSS idle (at the start, and after one call of each kind + settle_s), then per burst of 16 mixed heavy
    requests (4 clients x 4 in turn): its peak and the RSS settle_s after it."""
    from gradio_client import Client
    calls = heavy_calls(long_text)
    out = {"idle_at_start_mib": rss_mib(pid)}
    c = Client(url, verbose=False)
    for args, api in calls:                               # warm-up: imports, caches, first-use allocations
        c.predict(*args, api_name=api)
    time.sleep(settle_s)
    out["idle_mib"] = idle = rss_mib(pid)

    def client_burst(i):
        c = Client(url, verbose=False)
        return [timed(lambda a=calls[(i + k) % len(calls)]: c.submit(*a[0], api_name=a[1]).result(
            timeout=timeout_s))[1] for k in range(4)]

    for b in range(bursts):
        peak, done = [rss_mib(pid)], cf.Future()

        def sample(peak=peak, done=done):
            while not done.done():
                peak.append(rss_mib(pid))
                time.sleep(0.2)

        with cf.ThreadPoolExecutor(5) as ex:
            sampler = ex.submit(sample)
            errors = [e for r in ex.map(client_burst, range(4)) for e in r if e]
            done.set_result(None)
            sampler.result()
        end = rss_mib(pid)
        time.sleep(settle_s)
        after = rss_mib(pid)
        out[f"burst_{b + 1}"] = {"peak_mib": max(peak), "at_end_mib": end, f"after_{settle_s:.0f}s_mib": after,
                                 "after_over_idle": after / idle, "errors": errors}
    return out


def storage(url: str, n: int = 5) -> dict:
    """n identical safetensors exports (L=16384) -> new files and bytes in the export folder; one
    upload attempt."""
    from gradio_client import Client

    from ui.storage import exports, root
    c = Client(url, verbose=False)
    # a sequence no earlier run exported (the export folder outlives the server, up to an hour)
    text = c.predict(16384, -1, -1, time.time_ns() % 2 ** 62, 1, False, 0, api_name="/generate")
    before = {str(f) for f, _, _ in exports(root())}
    for _ in range(n):
        c.predict(text, api_name="/export_safetensors")
    new = [(f, size) for f, size, _ in exports(root()) if str(f) not in before]
    req = urllib.request.Request(f"{url}gradio_api/upload", data=b"--x\r\n\r\n--x--\r\n", method="POST",
                                 headers={"Content-Type": "multipart/form-data; boundary=x"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            upload = r.status
    except urllib.error.HTTPError as e:
        upload = e.code
    return {"identical_exports": n, "new_files": len(new), "new_mib": sum(s for _, s in new) / 2 ** 20,
            "upload_status": upload}


SCENARIOS = ("latency", "load", "lanes", "share", "memory", "storage")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    ap.add_argument("--clients", type=int, default=16, help="concurrent gradio_client clients in the load test")
    ap.add_argument("--requests", type=int, default=25, help="/run requests each client sends")
    ap.add_argument("--repeats", type=int, default=5, help="latency runs per length")
    ap.add_argument("--no-browser", action="store_true", help="skip the click-to-charts latency in chromium")
    ap.add_argument("--log", default="/tmp/mambascope-bench-app.log", help="the app server's log file")
    args = ap.parse_args(argv)
    todo = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in todo if s not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    proc, url = start_app(Path(args.log))
    report = {"cpu_count": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    try:
        from gradio_client import Client
        c = Client(url, verbose=False)
        t256 = c.predict(256, -1, -1, 0, 1, False, 0, api_name="/generate")
        t16k = c.predict(16384, -1, -1, 0, 1, False, 0, api_name="/generate")
        for name in todo:
            if name == "latency":
                report["latency_request"] = {"L=256": request_latency(url, t256, args.repeats, proc.pid),
                                             "L=16384": request_latency(url, t16k, args.repeats, proc.pid)}
                if not args.no_browser:
                    report["latency_click_to_charts_s"] = browser_latency(url, {"L=256": t256, "L=16384": t16k},
                                                                          args.repeats)
            elif name == "load":
                report["load"] = load_test(url, t256, args.clients, args.requests)
            elif name == "lanes":
                report["lanes"] = lanes(url, t16k, t256)
            elif name == "share":
                report["share"] = share(url, t16k)
            elif name == "memory":
                report["memory"] = memory(url, proc.pid, t16k)
            elif name == "storage":
                report["storage"] = storage(url)
            print(json.dumps({name: report.get(name, report.get("latency_request"))}), flush=True)
        report["loadavg_at_end"] = os.getloadavg()
    finally:
        stop(proc)
    print(json.dumps(report, indent=2))
    return 0 if report.get("load", {}).get("errors", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
