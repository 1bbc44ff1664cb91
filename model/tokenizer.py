"""A model directory's tokenizer (tokenizer.json, HF's `tokenizers` format) as a tasks.TextTask.

    task = text_task(load_tokenizer(dir), lm.config.vocab_size)     # None when dir has none
    ids = task.parse("The cat sat"); task.token_labels(ids)          # ['The', '␣cat', '␣sat']

Labels make every token readable on a chart axis: each id decoded on its own, spaces as ␣, newlines
as ↵, tabs as ⇥, other control characters as \\xNN, and a byte token that is not valid UTF-8 on
its own (a piece of a multi-byte character) as <0xE2> from the vocabulary's byte-level form.
Never downloads: only a file in the directory is read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from tasks.text import TextTask

TOKENIZER_FILE = "tokenizer.json"
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


class TokenizerError(ValueError):
    """The directory's tokenizer cannot be used with the model; the message says why."""


def load_tokenizer(path) -> Optional[object]:
    """tokenizers.Tokenizer from DIR/tokenizer.json, or None when there is no such file."""
    f = Path(path) / TOKENIZER_FILE if Path(path).is_dir() else None
    if f is None or not f.exists():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError as e:                                 # pinned in requirements.txt
        raise TokenizerError(f"{f}: the `tokenizers` package is needed to read it ({e})") from e
    try:
        return Tokenizer.from_file(str(f))
    except Exception as e:                                   # the library raises its own exception types
        raise TokenizerError(f"{f}: not a readable tokenizer ({str(e)[:200]})") from None


def readable(piece: str) -> str:
    """One decoded token, with whitespace and control characters made visible."""
    out = []
    for ch in piece:
        if ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def token_labels(tok, n: int) -> list:
    """Readable labels for ids 0..n-1 (ids the tokenizer lacks: '<id N>', e.g. a padded vocabulary)."""
    labels = []
    for i in range(n):
        piece = tok.id_to_token(i)
        if piece is None:
            labels.append(f"<id {i}>")
            continue
        text = tok.decode([i], skip_special_tokens=False)
        if "\ufffd" in text:            # a lone byte of a multi-byte character
            labels.append(_byte_label(piece))
        elif text == "" and piece:      # special or empty-decoding tokens: their vocabulary name
            labels.append(piece)
        else:
            labels.append(readable(text))
    return labels


def _byte_label(piece: str) -> str:
    """A byte-level BPE piece (GPT-2's bytes-to-unicode alphabet) as <0xNN> bytes."""
    table = _unicode_to_byte()
    try:
        return "".join(f"<0x{table[c]:02X}>" for c in piece)
    except KeyError:
        return readable(piece)


def _unicode_to_byte() -> dict:
    """The inverse of GPT-2's bytes_to_unicode (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def text_task(tok, vocab_size: int) -> TextTask:
    """The TextTask of a tokenizer for a model with `vocab_size` ids. A tokenizer with more ids than
    the model is refused (its ids would be out of range); fewer is fine (a vocabulary padded for
    GPU matmuls: the extra ids get '<id N>' labels)."""
    n_tok = tok.get_vocab_size(with_added_tokens=True)
    if n_tok > vocab_size:
        raise TokenizerError(f"the tokenizer has {n_tok:,} tokens but the model's vocabulary has {vocab_size:,}: "
                             "they do not belong together")
    return TextTask(token_labels(tok, vocab_size),
                    encode=lambda text: tok.encode(text, add_special_tokens=False).ids,
                    decode=lambda ids: tok.decode(ids, skip_special_tokens=False))
