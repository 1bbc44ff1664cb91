"""Plain LMs: a model directory's tokenizer as a TextTask (text in, readable token labels out), ids
without one (IdTask), and next-token scoring. The tokenizer is trained here by the `tokenizers`
library itself (byte-level BPE, as GPT-NeoX's that the Mamba LMs use), never downloaded."""
import numpy as np
import pytest

from model.tokenizer import TokenizerError, load_tokenizer, readable, text_task
from tasks import IdTask, TokenError, score
from tasks.text import next_token_positions

CORPUS = ["The cat sat on the mat.\n", "Tabs\tand  double  spaces", "Ünïcödé — naïve café ☕", "the the the"] * 20


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path_factory.mktemp("tok")
    tok.save(str(d / "tokenizer.json"))
    return d


def test_text_round_trip_and_readable_labels(tok_dir):
    tok = load_tokenizer(tok_dir)
    n = tok.get_vocab_size()
    task = text_task(tok, n + 3)                       # a vocabulary padded past the tokenizer's
    text = "The cat sat on the mat.\nTabs\tand ☕"
    ids = task.parse(text)
    assert task.format(ids) == text
    labels = task.token_labels(ids).tolist()
    assert any("␣" in lab for lab in labels) and "↵" in "".join(labels) and "⇥" in "".join(labels)
    # the pieces of a multi-byte character decode to U+FFFD alone: shown as their bytes
    assert task.labels[n + 2] == f"<id {n + 2}>" and task.vocab_size == n + 3
    byte_labels = [lab for lab in task.labels if lab.startswith("<0x")]
    assert byte_labels and all(len(b) % 6 == 0 for b in byte_labels)
    assert readable("a\x01 b") == "a\\x01␣b"


def test_text_errors(tok_dir):
    tok = load_tokenizer(tok_dir)
    task = text_task(tok, tok.get_vocab_size())
    with pytest.raises(TokenError, match="the text is empty"):
        task.parse("")
    with pytest.raises(TokenError, match="over the cap of 5"):
        task.parse("the cat sat on the mat and the cat sat", max_len=5)
    with pytest.raises(TokenError, match="must be a string"):
        task.parse(3)
    with pytest.raises(TokenizerError, match="do not belong together"):
        text_task(tok, 10)


def test_no_or_bad_tokenizer(tmp_path):
    assert load_tokenizer(tmp_path) is None
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not a readable tokenizer"):
        load_tokenizer(tmp_path)


def test_ids_and_next_token_scoring():
    task = IdTask(50)
    ids = task.parse("3 7 7 49")
    assert ids.tolist() == [3, 7, 7, 49] and task.format(ids) == "3 7 7 49"
    with pytest.raises(TokenError, match="token id 50 is out of range 0..49"):
        task.parse("1 50")
    pos = next_token_positions(ids)
    assert pos.scored == [(0, 7), (1, 7), (2, 49)]
    probs = np.full((4, 50), 0.01)
    probs[0, 7] = probs[1, 3] = probs[2, 49] = 0.5
    s = score(probs, task.positions(ids))
    assert (s.n, s.correct) == (3, 2) and s.p_target == (0.5, 0.01, 0.5)


def test_model_directory_with_a_tokenizer(tok_dir, tmp_path):
    """An HF MambaForCausalLM directory (save_pretrained) + tokenizer.json: text in, same logits."""
    import shutil

    import torch
    from transformers import MambaConfig as HFConfig, MambaForCausalLM

    from model import CheckpointError, load_checkpoint
    n = load_tokenizer(tok_dir).get_vocab_size()
    torch.manual_seed(0)
    hf = MambaForCausalLM(HFConfig(vocab_size=n + 4, hidden_size=32, state_size=8, num_hidden_layers=2,
                                   expand=2, conv_kernel=4)).eval()
    hf.save_pretrained(tmp_path / "m")
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "m" / "tokenizer.json")
    lm = load_checkpoint(tmp_path / "m")
    ids = lm.text_task.parse("The cat sat on the mat.")
    with torch.no_grad():
        ours = lm(torch.from_numpy(ids)[None])
        ref = hf(torch.from_numpy(ids)[None]).logits
    assert (ours - ref).abs().max() < 1e-4
    small = MambaForCausalLM(HFConfig(vocab_size=40, hidden_size=32, state_size=8, num_hidden_layers=1))
    small.save_pretrained(tmp_path / "s")
    shutil.copy(tok_dir / "tokenizer.json", tmp_path / "s" / "tokenizer.json")
    with pytest.raises(CheckpointError, match=f"the tokenizer has {n:,} tokens but the model's vocabulary has 40"):
        load_checkpoint(tmp_path / "s")
