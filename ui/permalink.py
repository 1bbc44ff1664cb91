"""Permalinks: the whole view in the URL's query string, and back.

    ?gen=256,-1,-1,0,1,0,0&sort=ratio&bins=64&layers=1,2&stat=max&tab=explore&model=1a2b3c4d5e6f
    (also ckpt= and cmp=: the Mechanism tab's two checkpoints; from= and to=: the time window;
    pstep= and lstep=: the Patching and logit-lens tabs' "read at step t" boxes)
    ?seq=3,7,1,S,9,4,S&from=2&to=6 ...        # a short sequence, token by token
    ?text=The+cat+sat%2C+on+the+mat ...       # a text model's text, exactly as typed (URL-encoded)
    ?h=9f86d081884c7d65 ...                   # a long sequence the server has seen, by hash

The sequence goes in as the generator's settings when the text box holds exactly what they
generate (induction heads; any length up to 2^16 in ~20 characters), else token by token up to
URL_TOKENS tokens, else as HASH_DIGITS hex digits of its sha256: the server keeps the last SEEN_MAX
sequences it made links for (in memory, since its start); an unknown hash opens the default
view and says why. Never 65k tokens in a URL. A text model (a tokenizer.json: tasks.TextTask) gets
its text itself, not its tokens: decoded tokens joined by commas would not give the text back (its
spaces and commas are part of the tokens), and re-encoding decoded text need not give the same
ids. Up to URL_TOKENS tokens and URL_TEXT_CHARS characters once encoded it travels as `text=`;
beyond, the text is kept by hash like a long sequence.

`link(...)` (the "copy link" button) mirrors the widgets; `open_link(query)` returns the widget
values a query string sets; `restore(request)` is the page's load event (gr.Request.query_params).
Both are light (numpy only). A value a link cannot hold (a typo in a hand-edited URL) falls
back to the default and the note names it; nothing raises.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import astuple, dataclass, fields, replace
from typing import Optional
from urllib.parse import parse_qs, quote_plus, urlencode

import gradio as gr
import numpy as np

from tasks import induction as ind
from tasks import parse_ids
from viz.frames import MAX_BINS_DEFAULT, MAX_BINS_LIMIT

from . import common, explore, mechanism

URL_TOKENS = 1024                        # at most this many tokens written out in a link (~3 KB)
URL_TEXT_CHARS = 8192                    # a text model's text, URL-encoded, at most (the query stays < QUERY_CHARS)
HASH_DIGITS = 16
SEEN_MAX = 512                           # sequences remembered for hash links (LRU) ...
SEEN_BYTES = 1 << 24                     # ... holding at most 16 MiB (8M int16 tokens)
QUERY_CHARS = 16_384                     # a longer query string is not one of ours
TABS = ("explore", "mechanism", "patching", "memories", "lens")
_SEEN: OrderedDict = OrderedDict()       # hash -> tokens (int16, or int32 above 32,767) or a text model's text
_LOCK = threading.Lock()


@dataclass(frozen=True)
class View:
    """Everything a link restores; the defaults are the page's first view."""
    text: str
    generator: ind.Generator
    sort: str = "index"
    bins: int = MAX_BINS_DEFAULT
    t_from: Optional[int] = None
    t_to: Optional[int] = None
    layers: tuple = ()                    # layer names; () = all
    stat: str = "max"
    checkpoint: Optional[str] = None
    compare: Optional[str] = None
    tab: str = "explore"
    patch_step: Optional[int] = None      # the Patching tab's "read after step t" (None = chosen)
    lens_step: Optional[int] = None       # the logit lens's "read at step t"


def default_view() -> View:
    g = ind.PRESETS["Paper setup (L=256)"]
    first, second = mechanism.default_pair()
    return View(explore.first_text(), g, layers=tuple(explore.default_layers()), checkpoint=first, compare=second)


# ---------------------------------------------------------------- sequences by hash
def sequence_hash(tokens) -> str:
    """HASH_DIGITS hex digits of the sha256 of int64 tokens, or of a text's UTF-8 bytes."""
    data = tokens.encode("utf-8", "surrogatepass") if isinstance(tokens, str) else \
        np.asarray(tokens, dtype=np.int64).tobytes()
    return hashlib.sha256(data).hexdigest()[:HASH_DIGITS]


def _nbytes(kept) -> int:
    return len(kept.encode("utf-8", "surrogatepass")) if isinstance(kept, str) else kept.nbytes


def remember(tokens) -> str:
    """Keep `tokens` (or a text model's text) for hash links (least recently used ones go first);
    returns its hash. Ids above int16's range (a 50k vocabulary) are kept as int32, not wrapped."""
    h = sequence_hash(tokens)
    if not isinstance(tokens, str):
        tokens = np.asarray(tokens)
        tokens = tokens.astype(np.int16 if tokens.size == 0 or tokens.max() < 1 << 15 else np.int32)
    with _LOCK:
        _SEEN[h] = tokens
        _SEEN.move_to_end(h)
        while len(_SEEN) > SEEN_MAX or sum(_nbytes(a) for a in _SEEN.values()) > SEEN_BYTES:
            _SEEN.popitem(last=False)
    return h


def recall(h: str):
    """The tokens (int64 [L]) or the text (str) kept under hash `h`."""
    with _LOCK:
        if h not in _SEEN:
            raise ValueError(f"the link's sequence {common.shown(h, 20)} is not known to this server (it keeps the "
                             f"last {SEEN_MAX} long sequences it made links for, since its start): the default "
                             "sequence is shown; links to generated sequences keep working")
        _SEEN.move_to_end(h)
        kept = _SEEN[h]
        return kept if isinstance(kept, str) else kept.astype(np.int64)


# ---------------------------------------------------------------- widgets -> query string
def _generator(values) -> Optional[ind.Generator]:
    """The generator widgets' values as a Generator, or None when they are not valid."""
    try:
        length, trig, mem, seed, n_trig, excl, every = values
        return ind.Generator(length=common.whole(length, "length"), trigger_pos=common.whole(trig, "trigger"),
                             memory=common.whole(mem, "memory"), seed=common.whole(seed, "seed", 0),
                             n_triggers=common.whole(n_trig, "triggers"), filler_excludes_memory=common.flag(excl, "x"),
                             memory_in_filler_every=common.whole(every, "every"))
    except (ValueError, TypeError):
        return None


def _is_text() -> bool:
    return common.MODEL.task.name == "text"


def _sequence_query(tokens: np.ndarray, g: Optional[ind.Generator], text: str) -> dict:
    if _is_text():                               # the text itself: its tokens would not give it back
        if len(tokens) <= URL_TOKENS and len(quote_plus(text, safe=",")) <= URL_TEXT_CHARS:
            return {"text": text}
        return {"h": remember(text)}
    if g is not None and common.MODEL.task.name == ind.NAME:
        try:
            if np.array_equal(ind.INDUCTION.realize(g), tokens):
                return {"gen": ",".join(str(int(v)) for v in astuple(g))}
        except ValueError:                       # settings that generate nothing
            pass
    if len(tokens) <= URL_TOKENS:
        return {"seq": common.MODEL.task.format(tokens).replace(" ", ",")}
    return {"h": remember(tokens)}


@common.user_errors
def link(tokens_text: str, length, trigger_pos, memory, seed, n_triggers, filler_excludes_memory,
         memory_in_filler_every, channel_sort, max_bins, t_from, t_to, layers, bin_stat, checkpoint_a,
         checkpoint_b, tab, patch_step=None, lens_step=None) -> str:
    """The query string ('?...') of the current view; the page prefixes its own address."""
    return "?" + urlencode(_query(tokens_text, length, trigger_pos, memory, seed, n_triggers, filler_excludes_memory,
                                  memory_in_filler_every, channel_sort, max_bins, t_from, t_to, layers, bin_stat,
                                  checkpoint_a, checkpoint_b, tab, patch_step, lens_step), safe=",")


def drill_links(tokens_text: str, channel_sort, max_bins, t_from, t_to, layers, bin_stat) -> list:
    """One query string per layer of the app's model: the Explore view as it is with that layer
    added to the layers drawn (the overview's rows open them: a click drills into a layer). When
    the layers would then be more than explore.MAX_LAYERS_SHOWN, the clicked one stays with the
    drawn ones nearest to it."""
    q = _query(tokens_text, *[None] * 7, channel_sort, max_bins, t_from, t_to, layers, bin_stat, None, None, "explore",
               None, None)
    shown = [int(v) - 1 for v in q["layers"].split(",")]
    out = []
    for i in range(common.MODEL.config.n_layer):
        keep = sorted(set(shown) - {i}, key=lambda j: (abs(j - i), j))[:explore.MAX_LAYERS_SHOWN - 1]
        q["layers"] = ",".join(str(j + 1) for j in sorted({i, *keep}))
        out.append("?" + urlencode(q, safe=","))
    return out


def _query(tokens_text, length, trigger_pos, memory, seed, n_triggers, filler_excludes_memory,
           memory_in_filler_every, channel_sort, max_bins, t_from, t_to, layers, bin_stat, checkpoint_a,
           checkpoint_b, tab, patch_step, lens_step) -> dict:
    """link()'s {key: value}."""
    tokens = common.tokens(tokens_text)
    settings = explore.view_settings(channel_sort, max_bins, t_from, t_to, layers, bin_stat)
    g = _generator((length, trigger_pos, memory, seed, n_triggers, filler_excludes_memory, memory_in_filler_every))
    q = _sequence_query(tokens, g, tokens_text)
    q["sort"] = explore.SORTS[common.choice(channel_sort, "channel order", list(explore.SORTS))]   # 'ratio': ASCII
    q["bins"] = settings["max_bins"]
    for key, v in (("from", settings["t_from"]), ("to", settings["t_to"])):
        if v is not None:
            q[key] = v
    q["layers"] = ",".join(str(i + 1) for i in settings["layers"])
    q["stat"] = settings["stat"]
    names = mechanism.checkpoint_names()
    for key, v in (("ckpt", checkpoint_a), ("cmp", checkpoint_b)):
        if isinstance(v, str) and v in names:
            q[key] = v
    q["tab"] = common.choice(tab or "explore", "tab", TABS)
    for key, v, field in (("pstep", patch_step, "patching: read after step t"),
                          ("lstep", lens_step, "logit lens: read at step t")):
        step = common.optional_whole(v, field, 0, len(tokens) - 1)
        if step is not None:
            q[key] = step
    sha = getattr(common.MODEL.lm, "checkpoint_sha256", None)      # None: no model, or an unsaved one
    if sha:
        q["model"] = sha[:12]
    return q


# ---------------------------------------------------------------- query string -> widgets
def parse(query: dict) -> tuple:
    """{key: value} (a parsed query string) -> (View, [notes about what could not be restored])."""
    view, notes = default_view(), []

    def take(key, convert):
        nonlocal view
        if key not in query:
            return
        try:
            view = replace(view, **convert(query[key]))
        except (ValueError, TypeError, KeyError) as e:
            notes.append(f"`{key}`: {e}" if str(e) else f"`{key}` {common.shown(query[key], 40)} is not valid")

    task = common.MODEL.task

    def gen(v):
        if task.name != ind.NAME:
            raise ValueError(f"gen makes induction-heads sequences; this model's task is {task.name}")
        parts = v.split(",")
        if len(parts) != len(fields(ind.Generator)):
            raise ValueError(f"gen needs {len(fields(ind.Generator))} comma-separated values")
        ints = [common.whole(int(p) if p.lstrip("-").isdigit() and len(p) < 20 else p, f"gen value {i + 1}")
                for i, p in enumerate(parts)]
        g = ind.Generator(*ints[:5], bool(ints[5]), ints[6])
        return {"generator": g, "text": ind.INDUCTION.format(ind.INDUCTION.realize(g))}

    def whole(v, name, lo=None, hi=None):
        return common.whole(int(v) if v.lstrip("-").isdigit() and len(v) < 20 else v, name, lo, hi)

    def seq(v):
        if task.name == "text":                  # ids, written out by hand: the text box would encode "3 7" as text
            return {"text": task.format(parse_ids(v.replace(",", " "), task.vocab_size, {}, common.length_cap()))}
        return {"text": task.format(common.tokens(v.replace(",", " ")))}

    def text(v):
        if task.name != "text":
            raise ValueError("text is for a model with a tokenizer; this model takes "
                             + ("ids" if common.is_plain_lm() else f"{task.name} tokens") + " (seq=...)")
        common.tokens(v)                         # the same caps and errors as the text box
        return {"text": v}

    def hashed(v):
        kept = recall(v)
        if isinstance(kept, str):
            return text(kept)
        return {"text": task.format(kept)}

    take("gen", gen)
    take("seq", seq)
    take("text", text)
    take("h", hashed)
    by_value = {v: label for label, v in explore.SORTS.items()}             # 'ratio' -> the radio's 'Δ ratio'
    take("sort", lambda v: {"sort": by_value[common.choice(v, "channel order", list(by_value))]})
    take("bins", lambda v: {"bins": whole(v, "time bins", 1, MAX_BINS_LIMIT)})
    take("from", lambda v: {"t_from": whole(v, "window from t")})
    take("to", lambda v: {"t_to": whole(v, "window to t")})
    take("layers", lambda v: {"layers": tuple(common.choices([f"layer {p}" for p in v.split(",") if p], "layer",
                                                             explore.layer_choices()))})
    take("stat", lambda v: {"stat": common.choice(v, "bin statistic", explore.BIN_STATS)})
    names = mechanism.checkpoint_names()
    take("ckpt", lambda v: {"checkpoint": common.choice(v, "checkpoint", names)})
    take("cmp", lambda v: {"compare": common.choice(v, "checkpoint", names)})
    take("tab", lambda v: {"tab": common.choice(v, "tab", TABS)})
    take("pstep", lambda v: {"patch_step": whole(v, "patching: read after step t", 0)})
    take("lstep", lambda v: {"lens_step": whole(v, "logit lens: read at step t", 0)})
    own = (getattr(common.MODEL.lm, "checkpoint_sha256", None) or "")[:12] or None
    if "model" in query and query["model"] != own:
        notes.append(f"the link was made with model {common.shown(query['model'], 20)}; this server runs "
                     f"{own or 'no saved checkpoint'!r}")
    return view, notes


def outputs(view: View, notes: list) -> tuple:
    """The values of the widgets a link sets, in app.py's `link_outputs` order."""
    g = view.generator
    note = ("⚠️ This link could not be restored in full: " + "; ".join(notes)) if notes else ""
    return (view.text, g.length, g.trigger_pos, g.memory, g.seed, g.n_triggers, g.filler_excludes_memory,
            g.memory_in_filler_every, view.sort, view.bins, view.t_from, view.t_to, list(view.layers), view.stat,
            view.checkpoint, view.compare, view.tab, gr.Tabs(selected=view.tab),
            *("" if s is None else str(s) for s in (view.patch_step, view.lens_step)), note)


@common.user_errors
def open_link(query: str) -> tuple:
    """A query string ('?gen=...' or 'gen=...') -> the widget values it sets (+ a note on what it could not)."""
    query = common.text(query, "link")
    if len(query) > QUERY_CHARS:
        return outputs(default_view(), [f"the query string has {len(query):,} characters, over {QUERY_CHARS:,}"])
    parsed = {k: v[-1] for k, v in parse_qs(query.lstrip("?"), keep_blank_values=True).items()}
    return outputs(*parse(parsed))


def restore(request: gr.Request) -> tuple:
    """The page's load event: the view its URL's query string names (the default view without one)."""
    params = dict(request.query_params) if request is not None else {}
    return outputs(*parse(params))
