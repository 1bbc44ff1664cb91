"""Permalinks of plain language models (#12): a text model's link carries its text, which comes back
exactly (spaces, commas, '&', '+', '%', newlines, non-ASCII); an ids model's link keeps its ids; the
caps and errors are the text box's; a long text goes by hash; ids above int16 survive a hash link.
In-process, on tiny HF directories (tests/test_lm_views.py's fixtures)."""
from urllib.parse import parse_qs

import numpy as np
import pytest

from tests.test_lm_views import app_model, ids_dir, text_dir  # noqa: F401  (fixtures)
from tests.test_text import tok_dir  # noqa: F401  (a fixture)

pytest.importorskip("transformers")
GEN = (256, -1, -1, 0, 1, False, 0)              # the (hidden) generator widgets, as the page sends them
# every character urlencode and a comma-joined token list would mangle
TRICKY = "The cat, the hat & the bat: 1+1=2 (50%)?\nTabs\tand ☕ — \"quotes\" #hash /path?x=y"


def link_of(permalink, text, layers=("layer 1", "layer 2"), tab="explore"):
    return permalink.link(text, *GEN, "index", 64, 2, 9, list(layers), "mean", None, None, tab)


def test_a_text_models_link_restores_the_exact_text(text_dir, app_model):  # noqa: F811
    from ui import common, permalink
    app_model(text_dir)
    assert common.MODEL.task.name == "text"
    q = link_of(permalink, TRICKY, ["layer 2"], "lens")
    query = parse_qs(q[1:])
    assert list(query) == ["text", "sort", "bins", "from", "to", "layers", "stat", "tab", "model"]
    assert query["text"] == [TRICKY] and "gen" not in query and "seq" not in query
    out = permalink.open_link(q)
    assert out[0] == TRICKY                                     # the text as typed, not its decoded tokens
    assert out[8:14] == ("index", 64, 2, 9, ["layer 2"], "mean") and out[16] == "lens" and out[-1] == ""
    # the old token-by-token form lost the text: its decoded tokens joined by commas
    tokens = common.tokens(TRICKY)
    old = common.MODEL.task.format(tokens).replace(" ", ",")
    assert old.replace(",", " ") != TRICKY


def test_a_text_link_through_the_page_load(text_dir, app_model):  # noqa: F811
    """The page's load event reads Starlette's parsed query params: '+' is a space there too."""
    from starlette.datastructures import QueryParams

    from ui import permalink
    app_model(text_dir)
    q = link_of(permalink, TRICKY)

    class Request:
        query_params = QueryParams(q[1:])
    assert permalink.restore(Request())[0] == TRICKY


def test_a_long_text_goes_by_hash_and_comes_back_exactly(text_dir, app_model):  # noqa: F811
    from ui import common, permalink
    app_model(text_dir)
    long = ("the cat sat on the mat, " * 400).strip()           # > URL_TOKENS tokens
    assert common.tokens(long).size > permalink.URL_TOKENS
    q = link_of(permalink, long)
    assert q.startswith("?h=") and len(q) < 200
    assert permalink.open_link(q)[0] == long
    wide = "☕" * (permalink.URL_TEXT_CHARS // 9 + 1)          # few tokens, but 9 URL characters each
    if common.tokens(wide).size <= permalink.URL_TOKENS:
        q = link_of(permalink, wide)
        assert q.startswith("?h=") and permalink.open_link(q)[0] == wide


def test_text_links_keep_the_text_boxes_caps_and_errors(text_dir, app_model, monkeypatch):  # noqa: F811
    from ui import common, permalink
    app_model(text_dir)
    default = permalink.default_view().text
    per_token = common.bytes_per_step(common.MODEL.lm, common.CHART_QUANTITIES)
    monkeypatch.setattr(common, "TRACE_MAX_BYTES", 10 * per_token)     # a cap of 10 tokens
    out = permalink.open_link("?text=" + "+the+cat+sat" * 20)
    assert out[0] == default and "over the cap of 10 (the cap for a" in out[-1]
    note = permalink.open_link("?text=" + "x" * permalink.QUERY_CHARS)[-1]
    assert f"over {permalink.QUERY_CHARS:,}" in note
    out = permalink.open_link("?text=")
    assert out[0] == default and "`text`: the text is empty" in out[-1]
    # ids written out by hand are ids for a text model, not text to encode
    out = permalink.open_link("?seq=1,2,3")
    assert out[0] == common.MODEL.task.format([1, 2, 3]) and out[-1] == ""
    note = permalink.open_link("?seq=The,cat")[-1]
    assert "token 1 ('The') is not a whole number" in note
    note = permalink.open_link("?gen=256,-1,-1,0,1,0,0")[-1]
    assert "gen makes induction-heads sequences; this model's task is text" in note


def test_an_ids_models_link_keeps_ids(ids_dir, app_model):  # noqa: F811
    from ui import common, permalink
    app_model(ids_dir)
    assert common.is_plain_lm() and common.MODEL.task.name != "text"
    ids = "3 14 15 9 26 5 35"
    q = link_of(permalink, ids)
    assert q.startswith("?seq=3,14,15,9,26,5,35&")
    assert permalink.open_link(q)[0] == ids
    note = permalink.open_link("?text=hello")[-1]
    assert "text is for a model with a tokenizer; this model takes ids (seq=...)" in note


def test_a_hash_link_keeps_ids_above_int16():
    from ui import permalink
    ids = np.array([0, 32767, 32768, 50279, 123456], dtype=np.int64)
    h = permalink.remember(ids)
    assert np.array_equal(permalink.recall(h), ids)             # int16 would wrap 32768 to -32768
    assert permalink.recall(permalink.remember("a text ☕")) == "a text ☕"
