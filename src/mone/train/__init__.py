"""Training, checkpoints and evaluation: the Python API behind ``mone train`` and ``mone eval``."""

from .checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from .config import CAPACITY_MODES, PAPER_CAPACITIES, TrainConfig
from .evaluate import evaluate, format_table, plot_accuracy_vs_flops, write_results
from .loop import TrainResult, train
from .schedule import warmup_cosine_lr

__all__ = [
    "CAPACITY_MODES",
    "Checkpoint",
    "PAPER_CAPACITIES",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "format_table",
    "load_checkpoint",
    "load_model",
    "plot_accuracy_vs_flops",
    "save_checkpoint",
    "train",
    "warmup_cosine_lr",
    "write_results",
]
