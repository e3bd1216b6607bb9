"""Runtime: the model traced in residual-stream form (record, patch, probe), one block per layer."""

from .block import Block, BlockIO, PlainIO, Rotary
from .masks import causal_mask, default_position_ids
from .state import GradCallback, RunState, SenderHook, head_input_grad
from .traced import Patch, Prefix, Probe, RunOutput, TracedModel, as_traced
from .workspace import Workspace

__all__ = [
    "Block",
    "BlockIO",
    "GradCallback",
    "Patch",
    "PlainIO",
    "Prefix",
    "Probe",
    "Rotary",
    "RunOutput",
    "RunState",
    "SenderHook",
    "TracedModel",
    "Workspace",
    "as_traced",
    "causal_mask",
    "default_position_ids",
    "head_input_grad",
]
