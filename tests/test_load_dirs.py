"""load_checkpoint(directory): what HF transformers' save_pretrained and mamba_ssm write, in fp32,
fp16 and bf16, one shard or many -- and one specific message for each kind of bad directory."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import CheckpointError, MambaConfig, MambaLM, load_checkpoint
from model.checkpoint import file_sha256, read_metadata

transformers = pytest.importorskip("transformers")

V = 50


def hf_mamba1(seed=0):
    """A small HF MambaForCausalLM, parameters moved off their init so nothing hides behind a 1."""
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=V, state_size=8,
                                   time_step_rank=3, layer_norm_epsilon=1e-6)
    hf = transformers.MambaForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf.eval()


def hf_mamba2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.Mamba2Config(hidden_size=32, num_hidden_layers=2, vocab_size=V, state_size=8, head_dim=8,
                                    num_heads=8, n_groups=2, chunk_size=16, tie_word_embeddings=True, **kw)
    hf = transformers.Mamba2ForCausalLM(cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf.eval()


@pytest.fixture(scope="module")
def m1_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("m1")
    hf = hf_mamba1()
    hf.save_pretrained(path)
    return hf, path


def copy(src, tmp_path, name="copy"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del cfg[k]
    (path / "config.json").write_text(json.dumps(cfg))


TOKENS = torch.randint(0, V, (2, 41), generator=torch.Generator().manual_seed(0))


def test_hf_mamba1_directory_gives_hf_logits(m1_dir):
    hf, path = m1_dir
    lm = load_checkpoint(path)
    c = lm.config
    assert (c.layer, c.d_model, c.n_layer, c.vocab_size, c.d_state, c.dt_rank, c.norm_epsilon) == \
        ("Mamba1", 32, 2, V, 8, 3, 1e-6)
    assert lm.task is None and lm.checkpoint_metadata["format"] == "hf-transformers/MambaForCausalLM"
    with torch.no_grad():
        assert (lm(TOKENS) - hf(TOKENS).logits).abs().max().item() < 1e-4


def test_directory_metadata_without_the_weights(m1_dir):
    meta = read_metadata(m1_dir[1])
    assert meta["format"] == "hf-transformers/MambaForCausalLM"
    assert MambaConfig.from_mamba_ssm_dict(json.loads(meta["config"]), float(meta["norm_epsilon"])) == \
        load_checkpoint(m1_dir[1]).config


def test_sharded_directory_loads_the_same_weights(m1_dir, tmp_path):
    hf, path = m1_dir
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    a, b = load_checkpoint(path), load_checkpoint(tmp_path)
    for (k, x), (k2, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(x, y), k


def test_directory_identity_follows_its_files(m1_dir, tmp_path):
    _, path = m1_dir
    d = copy(path, tmp_path)
    sha = load_checkpoint(d).checkpoint_sha256
    assert sha == file_sha256(path) and len(sha) == 64
    sd = load_file(str(d / "model.safetensors"))
    sd["backbone.norm_f.weight"] = sd["backbone.norm_f.weight"] + 1
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert file_sha256(d) != sha


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make", [hf_mamba1, hf_mamba2])
def test_half_precision_directories(tmp_path, make, half):
    """fp16/bf16 weights load exactly into fp32 (the default) and give HF's fp32 logits on them;
    dtype=bf16 keeps bf16 weights (A_log, D in fp32) and stays close."""
    make().to(half).save_pretrained(tmp_path)
    ref = type(make()).from_pretrained(tmp_path, dtype=torch.float32).eval()
    lm = load_checkpoint(tmp_path)
    assert lm.backbone.norm_f.weight.dtype == torch.float32
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert saved["backbone.layers.0.mixer.in_proj.weight"].dtype == half
    assert torch.equal(lm.backbone.layers[0].mixer.in_proj.weight, saved["backbone.layers.0.mixer.in_proj.weight"].float())
    with torch.no_grad():
        want = ref(TOKENS).logits
        assert (lm(TOKENS) - want).abs().max().item() < 1e-4
        low = load_checkpoint(tmp_path, dtype="bf16")
        mixer = low.backbone.layers[0].mixer
        assert mixer.in_proj.weight.dtype == torch.bfloat16 and mixer.A_log.dtype == torch.float32
        err = ((low(TOKENS).float() - want).abs().max() / want.abs().max()).item()
        assert err < 0.05, err


@pytest.mark.parametrize("kw", [{}, {"time_step_limit": (0.001, 0.05)}, {"use_bias": True, "use_conv_bias": False}])
def test_hf_mamba2_directory_gives_hf_logits(tmp_path, kw):
    """Including the settings HF reads from config.json beyond the sizes: Δ's clamp, the biases."""
    hf = hf_mamba2(**kw)
    hf.save_pretrained(tmp_path)
    lm = load_checkpoint(tmp_path)
    assert (lm.config.layer, lm.config.nheads, lm.config.ngroups) == ("Mamba2", 8, 2)
    assert lm.config.dt_limit == tuple(kw.get("time_step_limit", (0.0, float("inf"))))
    with torch.no_grad():
        assert (lm(TOKENS) - hf(TOKENS).logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("layer", ["Mamba1", "Mamba2"])
def test_mamba_ssm_directory(tmp_path, layer):
    """What mamba_ssm's MambaLMHeadModel.save_pretrained writes (config.json without our extras, its
    pad_vocab_size_multiple=8 default), with the state dict in model.safetensors."""
    ssm = {"layer": layer} if layer == "Mamba1" else {"layer": layer, "d_state": 16, "headdim": 16}
    torch.manual_seed(1)
    lm = MambaLM(MambaConfig(d_model=32, n_layer=2, vocab_size=V, ssm_cfg=ssm, pad_vocab_size_multiple=8)).eval()
    cfg = {"d_model": 32, "n_layer": 2, "vocab_size": V, "ssm_cfg": ssm, "rms_norm": True,
           "residual_in_fp32": True, "fused_add_norm": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in lm.state_dict().items() if k != "lm_head.weight"},
              str(tmp_path / "model.safetensors"))
    back = load_checkpoint(tmp_path)
    assert back.config == lm.config and back.lm_head.weight.shape == (56, 32)    # 50 padded to 56
    with torch.no_grad():
        assert torch.equal(back(TOKENS), lm(TOKENS))


# --- each bad directory, its own message ------------------------------------------------------------

def test_empty_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory without config.json"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("with_config", [True, False])
def test_pickle_only_directory_is_refused_with_the_fix(m1_dir, tmp_path, with_config):
    if with_config:
        shutil.copy(m1_dir[1] / "config.json", tmp_path)
    # a pickle's first bytes, never opened: the directory is refused by its file names
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04\x95")
    with pytest.raises(CheckpointError, match=r"only pickled weights \(pytorch_model.bin\).*"
                                              r"huggingface-cli download .*--include '\*.safetensors'.*"
                                              r"safe_serialization=True"):
        load_checkpoint(tmp_path)


def test_no_weights(m1_dir, tmp_path):
    shutil.copy(m1_dir[1] / "config.json", tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        load_checkpoint(tmp_path)


def test_unknown_architecture(m1_dir, tmp_path):
    d = copy(m1_dir[1], tmp_path)
    edit_config(d, architectures=["LlamaForCausalLM"], model_type="llama")
    with pytest.raises(CheckpointError, match=r"unknown architecture \['LlamaForCausalLM'\]; supported: "
                                              "MambaForCausalLM, Mamba2ForCausalLM"):
        load_checkpoint(d)


@pytest.fixture
def sharded(m1_dir, tmp_path):
    m1_dir[0].save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    return tmp_path / "sharded"


def test_missing_shard(sharded):
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"missing shard {shard.name}"):
        load_checkpoint(sharded)


def test_shard_that_does_not_hold_what_the_index_says(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    key = next(k for k, s in index["weight_map"].items() if s == shards[0])
    index["weight_map"][key] = shards[1]
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"mismatched shards: model.safetensors.index.json puts {key} in "
                                              f"{shards[1]}, which does not hold it"):
        load_checkpoint(sharded)


def test_shard_name_may_not_leave_the_directory(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../elsewhere.safetensors"
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="is not a file name in"):
        load_checkpoint(sharded)


def test_config_that_does_not_fit_the_weights(m1_dir, tmp_path):
    d = copy(m1_dir[1], tmp_path)
    edit_config(d, state_size=16)
    with pytest.raises(CheckpointError, match=r"shape of backbone.layers.0.mixer.A_log is \(64, 8\), "
                                              r"expected \(64, 16\) from the config"):
        load_checkpoint(d)


def test_mamba2_head_count_that_does_not_add_up(tmp_path):
    hf_mamba2().save_pretrained(tmp_path)
    edit_config(tmp_path, num_heads=4)
    with pytest.raises(CheckpointError, match=r"num_heads=4 but expand \* hidden_size / head_dim = 2 \* 32 / 8 = 8"):
        load_checkpoint(tmp_path)


def test_untied_head_is_refused(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(hidden_size=32, num_hidden_layers=1, vocab_size=V, state_size=8, head_dim=8,
                                    num_heads=8, n_groups=1, chunk_size=16, tie_word_embeddings=False)
    transformers.Mamba2ForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="tie_word_embeddings=false and lm_head.weight is not the embedding "
                                              "matrix: an untied head, but this LM only supports a tied one"):
        load_checkpoint(tmp_path)


def test_padded_vocab_that_the_config_does_not_say(m1_dir, tmp_path):
    """state-spaces/mamba-130m-hf says vocab_size 50280 for its 50277 tokens: HF holds the padded size.
    A config that gives the unpadded size does not fit the embedding, and the message says why."""
    d = copy(m1_dir[1], tmp_path)
    edit_config(d, vocab_size=V - 3)
    with pytest.raises(CheckpointError, match=r"50 rows, but the config's vocabulary needs 47 \(vocab padding: "
                                              r"HF configs hold the padded size.*set vocab_size to 50"):
        load_checkpoint(d)


def test_mamba2_config_over_mamba1_weights(m1_dir, tmp_path):
    d = copy(m1_dir[1], tmp_path)
    edit_config(d, architectures=["Mamba2ForCausalLM"], model_type="mamba2", head_dim=8, num_heads=8, n_groups=1,
                tie_word_embeddings=True)
    with pytest.raises(CheckpointError, match="the weights are Mamba1 layers but the config says ssm_cfg.layer='Mamba2'"):
        load_checkpoint(d)


def test_unsupported_hf_settings_are_named(m1_dir, tmp_path):
    d = copy(m1_dir[1], tmp_path)
    edit_config(d, use_bias=True)
    with pytest.raises(CheckpointError, match="use_bias=True, use_conv_bias=True; Mamba1 layers here have"):
        load_checkpoint(d)


def test_bad_dtype_argument(m1_dir):
    with pytest.raises(ValueError, match="dtype 'int8' is not one of"):
        load_checkpoint(m1_dir[1], dtype="int8")


def test_infinite_weight_is_named(m1_dir, tmp_path):
    d = copy(m1_dir[1], tmp_path)
    sd = load_file(str(d / "model.safetensors"))
    sd["backbone.layers.1.mixer.dt_proj.bias"][3] = float("inf")
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="backbone.layers.1.mixer.dt_proj.bias contains NaN or infinite values"):
        load_checkpoint(d)
