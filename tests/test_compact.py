"""training/compact.py (the embedding stored in fp16) and the 10 MiB limit it exists for."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model import MambaConfig, MambaLM, load_checkpoint, save_checkpoint
from model.checkpoint import EMBEDDING_KEY, file_sha256, read_metadata
from model.safetensors_io import write_safetensors
from training.compact import CompactError, compact, main as compact_main

ROOT = Path(__file__).resolve().parent.parent
HUB_LIMIT = 10 << 20      # the Hugging Face Hub refuses larger files pushed without git-lfs


def small_mqar_model(tmp_path, scale=0.3):
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(d_model=16, n_layer=2, vocab_size=64))
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(scale * torch.randn_like(p))
    path = tmp_path / "m.safetensors"
    save_checkpoint(lm, path, task={"name": "mqar", "vocab": 64}, extra={"init_from": "x"})
    return lm.eval(), path


def test_compacted_file_stores_the_embedding_in_fp16_and_computes_the_same(tmp_path):
    lm, src = small_mqar_model(tmp_path)
    dst = tmp_path / "c.safetensors"
    r = compact(src, dst)
    with safe_open(str(dst), framework="pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes[EMBEDDING_KEY] == torch.float16
    assert all(d == torch.float32 for k, d in dtypes.items() if k != EMBEDDING_KEY)   # the layers stay fp32
    meta, old = read_metadata(dst), read_metadata(src)
    assert {k: meta[k] for k in old} == old                                 # config, task, provenance kept
    assert json.loads(meta["compacted_from"]) == {"file": "m.safetensors", "sha256": file_sha256(src)}
    assert r["sha256"] == file_sha256(dst) and r["bytes_after"] < r["bytes_before"]
    back = load_checkpoint(dst).eval()
    assert back.backbone.embedding.weight.dtype == torch.float32            # upcast on load
    tokens = torch.randint(0, 64, (2, 33))                                  # [B, L]
    with torch.no_grad():
        a, b = lm(tokens), back(tokens)                                     # [B, L, V]
    assert 0 < (a - b).abs().max() <= 2e-3 * (a.max() - a.min())            # rounded, not changed
    assert not (tmp_path / "c.safetensors.check").exists()


def test_compact_refuses_what_it_cannot_do_faithfully(tmp_path, capsys):
    _, src = small_mqar_model(tmp_path)
    with pytest.raises(CompactError, match="write to a new file"):
        compact(src, src)
    with safe_open(str(src), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    big = tmp_path / "big.safetensors"
    write_safetensors({**tensors, EMBEDDING_KEY: tensors[EMBEDDING_KEY] * 1e6}, big, read_metadata(src))
    with pytest.raises(CompactError, match="overflows fp16"):
        compact(big, tmp_path / "out.safetensors")
    with pytest.raises(CompactError, match="does not exist"):
        compact(src, tmp_path / "no" / "c.safetensors")
    with pytest.raises(CompactError, match="model directory"):
        compact(tmp_path, tmp_path / "d.safetensors")
    pickle = tmp_path / "p.safetensors"
    pickle.write_bytes(b"\x80\x02}q\x00." + bytes(64))                  # a torch.save / pickle header
    assert compact_main([str(pickle), str(tmp_path / "o.safetensors")]) == 2
    assert "error:" in capsys.readouterr().err
    foreign = tmp_path / "foreign.safetensors"
    write_safetensors({"w": torch.zeros(3)}, foreign)
    assert compact_main([str(foreign), str(tmp_path / "o.safetensors")]) == 2
    assert "error:" in capsys.readouterr().err
    # a tolerance nothing meets: refused, and no file (nor its check copy) is left behind
    assert compact_main([str(src), str(tmp_path / "t.safetensors"), "--tol", "0"]) == 2
    assert "changed the model" in capsys.readouterr().err
    assert not (tmp_path / "t.safetensors").exists() and not (tmp_path / "t.safetensors.check").exists()


def test_every_file_in_the_repository_fits_the_hubs_limit():
    """The repository is also the app's Space: a file over 10 MiB would make the push fail."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    sizes = {str(p.relative_to(ROOT)): p.stat().st_size for p in files if p.is_file()}
    assert sizes and "checkpoints/mqar-2layer.safetensors" in sizes
    assert {p: s for p, s in sizes.items() if s > HUB_LIMIT} == {}
