"""Checkpoint round trip, and one clear error per class of bad checkpoint."""
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import CheckpointError, MambaConfig, MambaLM, load_checkpoint, save_checkpoint


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig()).eval()
    path = tmp_path / "m.safetensors"
    sha = save_checkpoint(lm, path, task={"content_vocab": 16, "trigger_id": 16, "train_len": 256})
    return lm, path, sha


def test_round_trip_is_exact(saved):
    lm, path, sha = saved
    back = load_checkpoint(path)
    for (k, a), (k2, b) in zip(lm.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert back.task == {"content_vocab": 16, "trigger_id": 16, "train_len": 256}
    assert back.checkpoint_sha256 == sha and len(sha) == 64
    tokens = torch.randint(0, 17, (2, 50))
    with torch.no_grad():
        assert torch.equal(lm(tokens), back(tokens))


def test_non_default_config_round_trips(tmp_path):
    cfg = MambaConfig(d_model=32, n_layer=3, vocab_size=9, ssm_cfg={"d_state": 8, "expand": 3},
                      norm_epsilon=1e-6)
    path = tmp_path / "c.safetensors"
    save_checkpoint(MambaLM(cfg), path)
    back = load_checkpoint(path)
    assert back.config == cfg


def test_hf_embedding_name_is_accepted(saved, tmp_path):
    _, path, _ = saved
    sd = load_file(str(path))
    sd["backbone.embeddings.weight"] = sd.pop("backbone.embedding.weight")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    p2 = tmp_path / "hf.safetensors"
    save_file(sd, str(p2), metadata=meta)
    load_checkpoint(p2)


def _rewrite(path, tmp_path, edit_sd=None, edit_meta=None):
    from safetensors import safe_open
    sd = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    if edit_sd:
        edit_sd(sd)
    if edit_meta:
        edit_meta(meta)
    out = tmp_path / "bad.safetensors"
    save_file(sd, str(out), metadata=meta)
    return out


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_pickle_is_refused_without_being_opened(tmp_path):
    path = tmp_path / "evil.pt"
    # the bytes of pickle.dumps({"a": 1}, protocol=4), written literally: the project imports no pickle
    path.write_bytes(b"\x80\x04\x95\n\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.")
    with pytest.raises(CheckpointError, match="pickle file"):
        load_checkpoint(path)


def test_torch_save_zip_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="zip archive"):
        load_checkpoint(path)


@pytest.mark.parametrize("content,msg", [(b"", "too short"), (b"hello world, not tensors", "header length"),
                                         (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "not a readable")])
def test_garbage_is_not_a_safetensors_file(tmp_path, content, msg):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=msg):
        load_checkpoint(path)


def test_missing_config_metadata(tmp_path):
    path = tmp_path / "noconf.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="no 'config'"):
        load_checkpoint(path)


def test_invalid_config_json(saved, tmp_path):
    bad = _rewrite(saved[1], tmp_path, edit_meta=lambda m: m.update(config="{broken"))
    with pytest.raises(CheckpointError, match="invalid config"):
        load_checkpoint(bad)


def test_missing_key(saved, tmp_path):
    bad = _rewrite(saved[1], tmp_path, edit_sd=lambda sd: sd.pop("backbone.layers.1.mixer.A_log"))
    with pytest.raises(CheckpointError, match="missing key backbone.layers.1.mixer.A_log"):
        load_checkpoint(bad)


def test_unexpected_key(saved, tmp_path):
    bad = _rewrite(saved[1], tmp_path, edit_sd=lambda sd: sd.update({"backbone.layers.2.norm.weight": torch.ones(64)}))
    with pytest.raises(CheckpointError, match="unexpected key backbone.layers.2.norm.weight"):
        load_checkpoint(bad)


def test_wrong_shape(saved, tmp_path):
    bad = _rewrite(saved[1], tmp_path, edit_sd=lambda sd: sd.update({"backbone.layers.0.mixer.D": torch.ones(64)}))
    with pytest.raises(CheckpointError, match=r"shape of backbone.layers.0.mixer.D is \(64,\), expected \(128,\)"):
        load_checkpoint(bad)


def test_wrong_config_for_weights(saved, tmp_path):
    def edit(m):
        c = json.loads(m["config"])
        c["d_model"] = 32
        m["config"] = json.dumps(c)
    with pytest.raises(CheckpointError, match="shape of backbone.embedding.weight is"):
        load_checkpoint(_rewrite(saved[1], tmp_path, edit_meta=edit))


def test_integer_dtype(saved, tmp_path):
    bad = _rewrite(saved[1], tmp_path, edit_sd=lambda sd: sd.update(
        {"backbone.norm_f.weight": torch.ones(64, dtype=torch.int32)}))
    with pytest.raises(CheckpointError, match="dtype of backbone.norm_f.weight is torch.int32"):
        load_checkpoint(bad)


def test_nan_weights(saved, tmp_path):
    bad = _rewrite(saved[1], tmp_path, edit_sd=lambda sd: sd["backbone.layers.0.mixer.D"].fill_(float("nan")))
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(bad)


def test_untied_head_is_refused(saved, tmp_path):
    bad = _rewrite(saved[1], tmp_path, edit_sd=lambda sd: sd.update({"lm_head.weight": torch.zeros(17, 64)}))
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        load_checkpoint(bad)


def test_unsupported_architecture(saved, tmp_path):
    def edit(m):
        c = json.loads(m["config"])
        c["ssm_cfg"]["layer"] = "Mamba3"
        m["config"] = json.dumps(c)
    with pytest.raises(CheckpointError, match="only Mamba1"):
        load_checkpoint(_rewrite(saved[1], tmp_path, edit_meta=edit))


def test_float16_weights_load(saved, tmp_path):
    bad = _rewrite(saved[1], tmp_path, edit_sd=lambda sd: sd.update({k: v.half() for k, v in sd.items()}))
    assert load_checkpoint(bad).backbone.norm_f.weight.dtype == torch.float32


def test_same_weights_give_the_same_file(tmp_path):
    """The sha256 is a checkpoint's identity (traces, model cards): saving twice must not change it."""
    torch.manual_seed(3)
    lm = MambaLM(MambaConfig())
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sha_a = save_checkpoint(lm, a, task={"x": 1, "y": [1, 2]})
    # a second process: a per-process hash seed once reordered the metadata header
    code = ("import sys, torch; from model import *; lm = load_checkpoint(sys.argv[1]); "
            "print(save_checkpoint(lm, sys.argv[2], task=lm.task))")
    sha_b = subprocess.run([sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert sha_a == sha_b and a.read_bytes() == b.read_bytes()


def test_a_loaded_model_does_not_alias_its_file(tmp_path):
    """A checkpoint overwritten in place while loaded (a user copying a new file over it while the app
    runs) must not change the model's weights or kill the process (SIGBUS when the file shrinks: the
    weights were views of a memory map). Run in a child process so that a regression fails, not crashes,
    the suite."""
    root = Path(__file__).resolve().parent.parent
    src, other = root / "checkpoints" / "mqar-2layer-d64.safetensors", root / "checkpoints" / "analytic-2layer.safetensors"
    code = f"""
import shutil, torch
from model import load_checkpoint
shutil.copy({str(src)!r}, {str(tmp_path / 'x.safetensors')!r})
lm = load_checkpoint({str(tmp_path / 'x.safetensors')!r})
before = {{k: v.clone() for k, v in lm.state_dict().items()}}
shutil.copyfile({str(other)!r}, {str(tmp_path / 'x.safetensors')!r})      # shorter, same inode
assert all(torch.equal(before[k], v) for k, v in lm.state_dict().items())
assert torch.isfinite(lm(torch.randint(0, 8192, (1, 64)))).all()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])
