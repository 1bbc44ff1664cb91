"""A checkpoint we save loads into HF transformers' MambaForCausalLM and gives the same logits."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model import MambaConfig, MambaLM, save_checkpoint

transformers = pytest.importorskip("transformers")


def hf_config(cfg_json: dict, eps: float):
    ssm = cfg_json["ssm_cfg"]
    d_model = cfg_json["d_model"]
    return transformers.MambaConfig(
        vocab_size=cfg_json["vocab_size"], hidden_size=d_model, state_size=ssm.get("d_state", 16),
        num_hidden_layers=cfg_json["n_layer"], layer_norm_epsilon=eps, expand=ssm.get("expand", 2),
        conv_kernel=ssm.get("d_conv", 4), use_bias=False, use_conv_bias=True,
        time_step_rank=ssm.get("dt_rank", "auto"), residual_in_fp32=cfg_json["residual_in_fp32"],
        tie_word_embeddings=cfg_json["tie_embeddings"])


@pytest.mark.parametrize("cfg", [MambaConfig(), MambaConfig(d_model=48, n_layer=3, vocab_size=11,
                                                            ssm_cfg={"d_state": 8, "d_conv": 3})])
def test_saved_checkpoint_loads_into_hf_with_same_logits(tmp_path, cfg):
    torch.manual_seed(0)
    lm = MambaLM(cfg).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(lm, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    sd = load_file(str(path))
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}  # the one rename
    hf = transformers.MambaForCausalLM(hf_config(json.loads(meta["config"]), float(meta["norm_epsilon"])))
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert unexpected == [] and set(missing) <= {"lm_head.weight"}
    hf.tie_weights()
    hf.eval()
    tokens = torch.randint(0, cfg.vocab_size, (3, 257))
    with torch.no_grad():
        diff = (hf(tokens).logits - lm(tokens)).abs().max().item()
    assert diff < 1e-4


def test_config_json_is_mamba_ssm_shaped(tmp_path):
    path = tmp_path / "m.safetensors"
    save_checkpoint(MambaLM(MambaConfig()), path)
    with safe_open(str(path), framework="pt") as f:
        cfg = json.loads(f.metadata()["config"])
    # exactly mamba_ssm.models.config_mamba.MambaConfig's fields, so MambaConfig(**cfg) works there
    assert set(cfg) == {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
                        "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm",
                        "pad_vocab_size_multiple", "tie_embeddings"}
    assert cfg["ssm_cfg"]["layer"] == "Mamba1"
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert "backbone.layers.1.mixer.A_log" in keys and "backbone.embedding.weight" in keys
