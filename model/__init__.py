"""mambascope's model package: a mamba_ssm-compatible Mamba-1 LM, checkpoints and traces.

    from model import MambaConfig, MambaLM, load_checkpoint, save_checkpoint
"""
__version__ = "0.1.0"

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from .config import MambaConfig  # noqa: E402
from .mamba import LayerState, MambaLM  # noqa: E402
from .trace import LayerTrace, Trace, trace  # noqa: E402

__all__ = ["MambaConfig", "MambaLM", "LayerState", "load_checkpoint", "save_checkpoint",
           "CheckpointError", "Trace", "LayerTrace", "trace", "__version__"]
