"""mambascope's model package: a mamba_ssm-compatible Mamba-1 LM, checkpoints, the one chunked
forward with records and interventions (run), and traces.

    from model import MambaConfig, MambaLM, load_checkpoint, save_checkpoint, run, trace
"""
__version__ = "0.1.0"

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from .config import MambaConfig  # noqa: E402
from .mamba import MambaLM  # noqa: E402
from .records import RECORDABLE, LayerState, MixerHooks, RecordSpec  # noqa: E402
from .run import RunResult, run  # noqa: E402
from .trace import LayerTrace, Trace, trace  # noqa: E402

__all__ = ["MambaConfig", "MambaLM", "LayerState", "MixerHooks", "RecordSpec", "RECORDABLE", "load_checkpoint",
           "save_checkpoint", "CheckpointError", "Trace", "LayerTrace", "trace", "run", "RunResult", "__version__"]
