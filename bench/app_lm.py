"""The app on a real-size plain LM (issue #12): request -> response and click -> charts rendered in
headless chromium, for the Mamba-1 130m config with a tokenizer at L tokens.

    python -m bench.app_lm                      # L=512, 2 timed repeats after one warm-up each
    python -m bench.app_lm --length 1024 --repeats 3 --no-browser

The model directory is built here: HF-format config + model.safetensors at state-spaces/mamba-130m-hf's
config with random weights (bench/lm_rss.write_dir), and a byte-level BPE tokenizer.json trained on
this repository's own text (nothing is downloaded; its vocabulary is smaller than the model's 50,280,
whose logits [L, V] the app computes all the same). `python app.py` serves it (MAMBASCOPE_CHECKPOINT)
on a free local port; then
    request    /run through gradio_client: median wall time and the server's CPU seconds per request
    first      page load -> the first view's charts drawn (the app's opening sentence, a few tokens)
    click      the text box set to an L-token text, Run clicked -> a new chart drawn (median), and when
               the response arrived in the page (the rest is the browser drawing)
Each timed text differs by one word (an identical spec would not be redrawn). Times are contended on
a shared machine: the load average and the machine's matmul rate (before and after) are printed with
them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.app_load import (
    CHART,
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    click_run_and_wait,
    cpu_seconds,
    start_app,
    stop,
)

TOKENIZER_VOCAB = 50277
CORPUS_GLOBS = ("*.md", "docs/*.md", "*/*.py")
WORDS = ("river", "mountain", "library", "engine", "orchard", "harbor", "lantern", "meadow", "canyon", "glacier",
         "market", "bridge", "forest", "island", "valley", "castle", "garden", "tunnel", "desert", "beacon")


def build_tokenizer(out: Path) -> None:
    """A byte-level BPE tokenizer.json trained on this repository's text (GPT-NeoX's kind of tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    files = sorted(str(p) for g in CORPUS_GLOBS for p in ROOT.glob(g) if ".venv" not in str(p))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train(files, trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=["<|endoftext|>"],
                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(out / "tokenizer.json"))


def text_of(model_dir: Path, L: int, word: str) -> tuple:
    """(text of about L tokens: README prose with one word swapped in, its token count)."""
    from model.tokenizer import load_tokenizer
    tok = load_tokenizer(model_dir)
    prose = " ".join((ROOT / "README.md").read_text().split())
    ids = tok.encode(f"The {word} " + prose * 4).ids[:L]
    text = tok.decode(ids)
    return text, len(tok.encode(text).ids)


def view_args(text):
    return (text, "index", 64, None, None, ["layer 1", "layer 24"], "max")


def request_times(url: str, texts: list, pid: int) -> dict:
    from gradio_client import Client
    c = Client(url, verbose=False)
    c.predict(*view_args(texts[0]), api_name="/run")                    # warm-up
    times, cpu0 = [], cpu_seconds(pid)
    for text in texts[1:]:
        t = time.perf_counter()
        c.predict(*view_args(text), api_name="/run")
        times.append(time.perf_counter() - t)
    return {"request_median_s": statistics.median(times), "request_all_s": times,
            "server_cpu_s": (cpu_seconds(pid) - cpu0) / len(times)}


# the page's own clock: when the response to the click arrives (the event stream's completion message,
# read through a wrapped ReadableStream reader), so that click -> charts splits into server and drawing
ARRIVAL = """(() => { const read = ReadableStreamDefaultReader.prototype.read; const dec = new TextDecoder();
  ReadableStreamDefaultReader.prototype.read = function (...a) { return read.apply(this, a).then(r => {
    try { if (r && r.value) { const s = typeof r.value === 'string' ? r.value : dec.decode(r.value);
      if (s.includes('process_completed')) window.__arrived = performance.now(); } } catch (e) {}
    return r; }); }; })();"""


def browser_times(url: str, texts: list) -> dict:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1200})
            page.add_init_script(ARRIVAL)
            t = time.perf_counter()
            page.goto(url, timeout=300_000)
            page.wait_for_selector(CHART, timeout=300_000)
            first = time.perf_counter() - t
            times, arrivals = [], []
            for text in texts:                                          # the first one warms up
                page.fill("#tokens textarea", text)
                page.evaluate("() => { window.__clicked = performance.now(); window.__arrived = null; }")
                times.append(click_run_and_wait(page, timeout_ms=300_000))
                arrivals.append(page.evaluate("() => window.__arrived && (window.__arrived - window.__clicked) / 1000"))
        finally:
            browser.close()
    return {"first_view_s": first, "click_median_s": statistics.median(times[1:]), "click_all_s": times,
            "click_response_median_s": statistics.median([a for a in arrivals[1:] if a is not None] or [float("nan")])}


def matmul_rate(threads: int = 2) -> float:
    """GFLOP/s of an in_proj-sized fp32 matmul ([512, 768] x [768, 3072]) on `threads` threads, ~1 s:
    this VM's speed drifts by up to ~2.5x within an hour (measured 69-171 GFLOP/s, nothing else
    running), so each result carries the rate it ran at."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, w = torch.randn(512, 768), torch.randn(3072, 768)
        a @ w.T
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < 1.0:
            a @ w.T
            n += 1
        return n * 2 * 512 * 768 * 3072 / (time.perf_counter() - t) / 1e9
    finally:
        torch.set_num_threads(before)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=512, help="tokens in the timed texts")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (request and click each)")
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if not 1 <= args.repeats <= len(WORDS) // 2 - 1:
        p.error(f"--repeats must be 1..{len(WORDS) // 2 - 1} (each timed text swaps in its own word)")
    from bench.lm_rss import write_dir
    row = {"model": "Mamba-1 130m (random weights, HF directory + tokenizer.json)", "L": args.length,
           "load_avg_start": os.getloadavg()[0], "matmul_gflops_start": matmul_rate()}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "mamba-130m"
        write_dir("130m", d, "fp32")
        build_tokenizer(d)
        texts = [text_of(d, args.length, w) for w in WORDS[:2 * (args.repeats + 1)]]
        row["tokens"] = sorted({n for _, n in texts})
        texts = [t for t, _ in texts]
        t = time.perf_counter()
        proc, url = start_app(Path(tmp) / "app.log", {"MAMBASCOPE_CHECKPOINT": str(d)}, timeout_s=600)
        row["app_start_s"] = time.perf_counter() - t
        try:
            row.update(request_times(url, texts[:args.repeats + 1], proc.pid))
            if not args.no_browser:
                row.update(browser_times(url, texts[args.repeats + 1:]))
        finally:
            stop(proc)
            log = (Path(tmp) / "app.log").read_text()
            row["server_traceback"] = "Traceback" in log
    row["load_avg_end"] = os.getloadavg()[0]
    row["matmul_gflops_end"] = matmul_rate()
    print(json.dumps(row, indent=1))
    print(f"L = {row['tokens']} tokens: request -> response {row['request_median_s']:.2f} s (server CPU "
          f"{row['server_cpu_s']:.2f} s)" + ("" if args.no_browser else
                                            f"; click -> charts {row['click_median_s']:.2f} s (the response "
                                            f"there after {row['click_response_median_s']:.2f} s); first view "
                                            f"{row['first_view_s']:.2f} s") +
          f"; app start {row['app_start_s']:.1f} s; load average {row['load_avg_start']:.1f} -> "
          f"{row['load_avg_end']:.1f}; matmul {row['matmul_gflops_start']:.0f} -> {row['matmul_gflops_end']:.0f} GFLOP/s")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
