"""The app in a real browser: Debian's chromium driven by Playwright (never a downloaded browser).

Loads the page, waits for the charts (vega-embed draws a canvas), checks they hold pixels,
edits the sequence and sees the view follow, drags a time range on a heatmap and sees the other
charts change, and checks that a bad token shows its error while the text stays. Screenshots go
to pytest's tmp dir (set MAMBASCOPE_SCREENSHOT=path to also save one there, e.g. docs/screenshot.png).
"""
import os
import re
import shutil
from pathlib import Path

import pytest

from bench.app_load import CHROMIUM, CHROMIUM_ARGS, click_run_and_wait, start_app, stop

pytestmark = pytest.mark.slow
import playwright.sync_api as playwright  # noqa: E402  (requirements-test.txt pins it)
if not Path(CHROMIUM).exists():
    pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make browser)", pytrace=False)

TIMEOUT_MS = 180_000          # 2 shared cores: be patient, never flaky

CANVAS_INK = """(sel) => {   // share of non-white pixels in the first chart canvas
  const c = document.querySelector(sel); if (!c) return -1;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let ink = 0;
  for (let i = 0; i < d.length; i += 16) if (d[i] < 240 || d[i + 1] < 240 || d[i + 2] < 240) ink++;
  return ink / (d.length / 16);
}"""


# every string drawn on a canvas, newest last (the heatmap readout is canvas text, not DOM)
RECORD_CANVAS_TEXT = """(() => { const orig = CanvasRenderingContext2D.prototype.fillText; window.__drawn = [];
  CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
    window.__drawn.push(String(text)); if (window.__drawn.length > 2000) window.__drawn.splice(0, 1000);
    return orig.call(this, text, ...rest); }; })();"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    log = tmp_path_factory.mktemp("browser") / "app.log"
    proc, url = start_app(log)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                pg = browser.new_page(viewport={"width": 1500, "height": 3000})   # the whole dashboard: the pointer reaches every chart
                pg.add_init_script(RECORD_CANVAS_TEXT)
                pg.goto(url, timeout=TIMEOUT_MS)
                # the first view drawn before any test acts (each test also runs alone: -k)
                pg.wait_for_selector("#charts .vega-embed canvas, #charts .vega-embed svg.marks", timeout=TIMEOUT_MS)
                yield pg
            finally:
                browser.close()
    finally:
        stop(proc)


def summary(page) -> str:
    return page.inner_text("#summary")


def test_charts_render_on_load(page, tmp_path):
    page.wait_for_selector("#charts .vega-embed canvas, #charts .vega-embed svg.marks", timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('L = 256')",
                           timeout=TIMEOUT_MS)
    assert "Model" in page.inner_text("#model-status") or "Untrained" in page.inner_text("#model-status")
    box = page.locator("#charts .vega-embed canvas, #charts .vega-embed svg.marks").first.bounding_box()
    assert box["width"] > 700 and box["height"] > 1000           # 9 stacked time charts for 2 layers
    assert page.evaluate(CANVAS_INK, "#charts .vega-embed canvas") > 0.2      # drawn, not blank
    plot = page.locator("#charts").bounding_box()
    assert box["x"] >= plot["x"] - 1                               # the left edge (axes, title) is not cut off
    page.screenshot(path=str(tmp_path / "loaded.png"), full_page=True)
    if os.environ.get("MAMBASCOPE_SCREENSHOT"):
        shutil.copy(tmp_path / "loaded.png", os.environ["MAMBASCOPE_SCREENSHOT"])


def test_editing_the_sequence_reruns_the_model(page, tmp_path):
    page.fill("#tokens textarea", "3 7 1 S 9 4 4 2 5 S")
    click_run_and_wait(page)
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('L = 10')",
                           timeout=TIMEOUT_MS)
    assert "memory M = 9" in summary(page).replace("*", "")
    # no copy of each run in the browser's localStorage (Gradio's run history: 1.6 MB per 130m view)
    assert page.evaluate("() => Object.keys(localStorage).filter(k => k.includes('run-history'))") == []
    page.click("#set-memory")                                      # quick edit: M := 0 (the widget's value)
    page.wait_for_function("() => document.querySelector('#tokens textarea').value === '3 7 1 S 0 4 4 2 5 S'",
                           timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#summary').innerText.includes('M = 0')",
                           timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "edited.png"), full_page=True)


def readouts(drawn):
    """The heatmap readout's value lines among the canvas texts ('channel 12 · Δ ...')."""
    return [t for t in drawn if re.match(r"channel \d+ · ", t)]


def find_heatmap(page, what="Δ", canvas="#charts .vega-embed canvas"):
    """(x, y) on the page inside the first heatmap whose readout names `what`: walk the pointer
    down the chart until the readout says so (the layout is Vega's, not ours to hard-code)."""
    box = page.locator(canvas).first.bounding_box()
    x = box["x"] + box["width"] * 0.3
    page.evaluate("() => { window.__drawn = []; }")
    for y in range(int(box["y"] + box["height"] * 0.1), int(box["y"] + box["height"] * 0.7), 16):
        page.mouse.move(x, y, steps=2)
        page.wait_for_timeout(100)
        if page.evaluate(f"() => window.__drawn.some(t => t.startsWith('channel ') && t.includes(' · {what} '))"):
            return box, x, y + 64          # first hit is near the top edge; the heatmaps are 256 px tall
        page.evaluate("() => { window.__drawn = []; }")
    pytest.fail(f"no heatmap readout naming {what} found on the page")


def test_dragging_a_time_range_changes_the_other_charts(page):
    page.fill("#tokens textarea", " ".join(["1", "2", "S", "5"] + ["3", "4"] * 60 + ["S"]))
    click_run_and_wait(page)
    canvas = page.locator("#charts .vega-embed canvas").first
    box, x, y = find_heatmap(page)                                  # layer 1's Δ heatmap
    page.mouse.move(box["x"] - 20, y)                                # pointer off: no readout
    page.wait_for_timeout(300)
    before = canvas.screenshot()
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.35, y, steps=8)
    page.mouse.up()
    page.mouse.move(box["x"] - 20, y, steps=4)                       # off again: what differs is the fade
    page.wait_for_timeout(500)
    assert canvas.screenshot() != before                           # faded bins / highlighted lines


def test_hovering_a_heatmap_cell_shows_its_readout(page):
    """The heatmaps are images; the cell under the pointer is outlined and labelled beside the
    pointer (t, token, channel, value), drawn on the canvas: move over layer 1's Δ heatmap, read
    the label back from the canvas' text calls, and see it go when the pointer leaves."""
    page.fill("#tokens textarea", " ".join(["1", "2", "S", "6"] + ["3", "4"] * 60 + ["S"]))   # not the drag test's
    click_run_and_wait(page)
    box, x, y = find_heatmap(page)
    page.mouse.move(x + 5, y + 3, steps=3)
    page.wait_for_timeout(300)
    page.evaluate("() => { window.__drawn = []; }")
    page.mouse.move(x + 7, y + 4)
    page.wait_for_function("() => window.__drawn.some(t => /^channel \\d+ · /.test(t))", timeout=30_000)
    drawn = page.evaluate("() => window.__drawn")
    label = readouts(drawn)[-1]
    assert re.fullmatch(r"channel \d+ · Δ max [\d.e+-]+, mean [\d.e+-]+", label), label
    assert any(re.fullmatch(r"t \d+–\d+ · token 2 tokens", t) for t in drawn), drawn[-5:]
    page.mouse.move(box["x"] - 20, y, steps=5)                       # leave: the label is gone
    page.evaluate("() => { window.__drawn = []; }")
    page.mouse.move(box["x"] - 25, y)
    page.wait_for_timeout(300)
    assert not readouts(page.evaluate("() => window.__drawn"))


def test_readout_shows_the_cell_under_the_pointer_and_the_image_its_colour(page):
    """Synthetic trace, in the exported page's own Vega (canvas): at several pointer positions
    the readout's value is the trace's value for the t and channel it names, and the image pixel
    there (read before the outline covers it) has that value's colour on Vega's scale."""
    from tests.test_viz import fake_view
    from viz import charts, frames, raster
    v = fake_view(L=256, mem_pos=100)
    p2 = page.context.browser.new_page(viewport={"width": 1500, "height": 3000})
    try:
        chart = charts.dashboard(v, max_bins=64, sort="ratio")           # rows != channel ids
        p2.set_content(charts.chart_html(chart), timeout=TIMEOUT_MS)             # its offline vega JS
        p2.evaluate(RECORD_CANVAS_TEXT)
        p2.evaluate("async (spec) => { document.body.innerHTML = '<div id=c></div>';"
                    " await vegaEmbed('#c', spec, {renderer: 'canvas', actions: false}); }", chart.to_dict())
        p2.wait_for_selector("canvas", timeout=TIMEOUT_MS)
        box, x0, y0 = find_heatmap(p2, canvas="canvas")
        bins = frames.time_bins(0, 256, 64)
        vmax, vmean = bins.reduce(v.delta[0])                          # [64 bins, D]
        domain = raster.extent(vmax)
        for dx, dy in ((0, 0), (210, 37), (-120, 90), (333, -20)):
            x, y = x0 + dx, y0 + dy
            p2.mouse.move(box["x"] - 20, y)                            # off the chart: nothing drawn there
            p2.wait_for_timeout(200)
            rgb = p2.evaluate("([x, y]) => { const c = document.querySelector('canvas'); const r = c.getBoundingClientRect();"
                              " return Array.from(c.getContext('2d').getImageData(x - r.left, y - r.top, 1, 1).data).slice(0, 3); }",
                              [x, y])
            p2.evaluate("() => { window.__drawn = []; }")
            p2.mouse.move(x, y, steps=4)
            p2.wait_for_function("() => window.__drawn.some(t => /^channel \\d+ · /.test(t))", timeout=30_000)
            drawn = p2.evaluate("() => window.__drawn")
            t0, t1 = map(int, re.search(r"t (\d+)–(\d+)", [t for t in drawn if t.startswith("t ")][-1]).groups())
            ch, m, mean = re.fullmatch(r"channel (\d+) · Δ max ([\d.e+-]+), mean ([\d.e+-]+)",
                                       readouts(drawn)[-1]).groups()
            b, ch = t0 // 4, int(ch)
            assert t1 == t0 + 3 and float(m) == pytest.approx(vmax[b, ch], rel=1e-3)
            assert float(mean) == pytest.approx(vmean[b, ch], rel=1e-3)
            want = raster.colorize(vmax[b, ch][None, None], "viridis", domain)[0, 0]
            assert max(abs(int(a) - int(w)) for a, w in zip(rgb, want)) <= 2, (rgb, want.tolist())
    finally:
        p2.close()


def test_a_click_on_an_overview_row_opens_its_layers_link(page):
    """A deep model's overview: the row under the pointer is the layer the readout names, and a
    click there follows that layer's link (the app's links add the layer to the view; here #drill-k)."""
    from tests.test_lm_views import synthetic_view
    from viz import charts
    view = synthetic_view(n_layer=6, U=40, L=64)
    chart = charts.dashboard(view, max_bins=64, layers=[0, 5], layer_links=[f"#drill-{i + 1}" for i in range(6)])
    p2 = page.context.browser.new_page(viewport={"width": 1500, "height": 3000})
    try:
        p2.set_content(charts.chart_html(chart), timeout=TIMEOUT_MS)
        p2.evaluate(RECORD_CANVAS_TEXT)
        p2.evaluate("async (spec) => { document.body.innerHTML = '<div id=c></div>';"
                    " await vegaEmbed('#c', spec, {renderer: 'canvas', actions: false}); }", chart.to_dict())
        p2.wait_for_selector("canvas", timeout=TIMEOUT_MS)
        box = p2.locator("canvas").first.bounding_box()
        x, hits = box["x"] + box["width"] * 0.3, {}
        for y in range(int(box["y"]), int(box["y"] + box["height"] * 0.5), 4):   # walk down the overview
            p2.evaluate("() => { window.__drawn = []; }")
            p2.mouse.move(x, y, steps=2)
            p2.wait_for_timeout(60)
            named = [m for t in p2.evaluate("() => window.__drawn") for m in re.findall(r"^layer (\d) · mean Δ", t)]
            if named:
                hits.setdefault(int(named[-1]), y)
            if len(hits) == 6:
                break
        assert sorted(hits) == [1, 2, 3, 4, 5, 6], hits
        for k in (2, 5):
            p2.mouse.click(x, hits[k] + 2)
            p2.wait_for_function(f"() => location.hash === '#drill-{k}'", timeout=30_000)
    finally:
        p2.close()


def test_bad_input_shows_its_error_and_keeps_the_text(page):
    page.fill("#tokens textarea", "1 2 x 4")
    page.click("#run")
    page.get_by_text("token 3 ('x') is not a whole number or S").first.wait_for(timeout=TIMEOUT_MS)
    assert page.input_value("#tokens textarea") == "1 2 x 4"


def test_mechanism_tab_renders_the_comparison_charts(page):
    page.fill("#tokens textarea", "3 7 1 S 9 4 4 2 5 S")
    page.get_by_role("tab", name="Mechanism").click()
    page.click("#mech-run-compare")
    for plot in ("#mech-ratio-a", "#mech-ratio-b"):
        page.wait_for_selector(f"{plot} .vega-embed canvas, {plot} .vega-embed svg.marks", timeout=TIMEOUT_MS)
    assert "top token at the query" in page.inner_text("#mech-compare-summary")
    assert page.evaluate(CANVAS_INK, "#mech-ratio-a .vega-embed canvas") > 0.01       # drawn, not blank
    page.get_by_role("tab", name="Explore").click()


def wait_text(pg, selector: str, text: str) -> None:
    """Until the element exists and its text holds `text` (a freshly opened page renders it late)."""
    pg.wait_for_function("([s, t]) => { const e = document.querySelector(s); return !!e && e.innerText.includes(t); }",
                         arg=[selector, text], timeout=TIMEOUT_MS)


def fits_1280(pg) -> dict:
    """The page's horizontal overflow and the dashboard canvas' right edge against the window."""
    return pg.evaluate("""() => { const s = document.scrollingElement;
        const c = document.querySelector('#charts .vega-embed canvas').getBoundingClientRect();
        const p = document.querySelector('#charts').getBoundingClientRect();
        return {scrollWidth: s.scrollWidth, clientWidth: s.clientWidth, chartRight: c.right, plotRight: p.right,
                windowWidth: window.innerWidth}; }""")


def test_a_link_restores_the_view_and_copy_link_reproduces_it(page):
    """Open a permalink in a fresh 1280 px window: the generator's sequence, the channel order, the
    bins, the window, the layers and the tab come back, and the dashboard fits the window (no
    horizontal scrolling, the Δ-ratio column inside it); "copy link" gives the same view back."""
    url = page.url.split("?")[0]
    p2 = page.context.browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        p2.goto(url + "?gen=300,-1,7,2,1,0,0&sort=ratio&bins=32&from=10&to=250&layers=2&stat=mean&tab=explore",
                timeout=TIMEOUT_MS)
        wait_text(p2, "#summary", "L = 300")
        p2.wait_for_selector("#charts .vega-embed canvas", timeout=TIMEOUT_MS)
        from tasks import INDUCTION
        from tasks.induction import Generator
        assert p2.input_value("#tokens textarea") == INDUCTION.format(INDUCTION.realize(Generator(300, -1, 7, 2)))
        assert "memory M = 7" in p2.inner_text("#summary").replace("*", "")
        assert "binned by **8** steps".replace("*", "") in p2.inner_text("#summary").replace("*", "")  # 240 / 32
        assert p2.inner_text("#link-note").strip() == ""                # restored in full
        m = fits_1280(p2)
        assert m["scrollWidth"] <= m["clientWidth"] and m["chartRight"] <= min(m["plotRight"], m["windowWidth"]), m
        p2.click("#copy-link")
        p2.wait_for_function("() => document.querySelector('#permalink textarea, #permalink input').value"
                             ".startsWith('http')", timeout=TIMEOUT_MS)
        link = p2.input_value("#permalink textarea, #permalink input")
        assert "gen=300,-1,7,2,1,0,0" in link and "sort=ratio" in link and "bins=32" in link and "layers=2" in link
        p2.get_by_role("tab", name="Mechanism").click()
        p2.click("#copy-link")
        p2.wait_for_function("() => document.querySelector('#permalink textarea, #permalink input').value"
                             ".includes('tab=mechanism')", timeout=TIMEOUT_MS)
        link = p2.input_value("#permalink textarea, #permalink input")
        p2.goto(link, timeout=TIMEOUT_MS)                               # the copied link opens the same view
        wait_text(p2, "#summary", "L = 300")
        assert p2.get_by_role("tab", name="Mechanism").get_attribute("aria-selected") == "true"
    finally:
        p2.close()


def test_an_unknown_link_says_why_and_opens_the_default_view(page):
    url = page.url.split("?")[0]
    p2 = page.context.browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        p2.goto(url + "?h=00000000deadbeef&bins=5000", timeout=TIMEOUT_MS)
        wait_text(p2, "#link-note", "not known")
        assert "time bins 5000 is out of range" in p2.inner_text("#link-note")
        wait_text(p2, "#summary", "L = 256")
    finally:
        p2.close()


def test_patching_and_lens_tabs_draw(page):
    page.get_by_role("tab", name="Explore").click()
    page.fill("#tokens textarea", "3 7 1 S 9 4 4 2 5 1 2 S")
    page.get_by_role("tab", name="Patching").click()
    page.click("#corrupt-memory")                                     # M := 0 (the widget's value)
    page.wait_for_function("() => document.querySelector('#corrupted textarea').value === '3 7 1 S 0 4 4 2 5 1 2 S'",
                           timeout=TIMEOUT_MS)
    page.click("#run-patching")
    page.wait_for_selector("#patching-heatmap .vega-embed canvas, #patching-heatmap .vega-embed svg.marks",
                           timeout=TIMEOUT_MS)
    assert "target 9" in page.inner_text("#patching-summary")
    assert page.evaluate(CANVAS_INK, "#patching-heatmap .vega-embed canvas") > 0.01
    page.get_by_role("tab", name="Logit lens").click()
    page.click("#run-lens")
    page.wait_for_selector("#lens-chart .vega-embed canvas, #lens-chart .vega-embed svg.marks", timeout=TIMEOUT_MS)
    assert "answer **9**".replace("*", "") in page.inner_text("#lens-summary").replace("*", "")
    page.get_by_role("tab", name="Explore").click()
