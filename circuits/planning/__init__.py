"""Memory planning: estimate a run's peak memory from the model's config and choose the batch and the
masks per forward that fit a budget, before any weights or data are loaded (docs/scaling.md).

>>> from circuits.planning import ModelShape, estimate
>>> shape = ModelShape("gpt2", n_layers=12, n_heads=12, n_kv_heads=12, d_model=768, head_dim=64, d_ff=3072,
...                    vocab=50257, n_params=124_439_808)
>>> estimate(shape, "eap", tokens=128, batch=32).peak > 0
True
"""

from .budget import (
    MARGIN,
    MAX_ROWS,
    MEMORY_FORMS,
    MemoryBudgetError,
    Plan,
    choose,
    choose_for_discover,
    default_budget,
    free_memory,
    parse_memory,
    runner_plan,
)
from .memory import (
    CPU_LAYER_BYTES,
    DENSE_SHARE,
    PLAN_METHODS,
    Estimate,
    PlanMethod,
    cpu_dense_masks,
    curve_edges,
    estimate,
    format_bytes,
    prepared_bytes,
)
from .shapes import DTYPE_BYTES, ModelShape, load_config, meta_parameter_count, shape_of

__all__ = [
    "CPU_LAYER_BYTES", "DENSE_SHARE", "cpu_dense_masks",
    "DTYPE_BYTES", "MARGIN", "MAX_ROWS", "MEMORY_FORMS", "PLAN_METHODS", "Estimate", "MemoryBudgetError", "ModelShape", "Plan",
    "PlanMethod", "choose", "choose_for_discover", "curve_edges", "default_budget", "estimate", "format_bytes", "free_memory",
    "load_config", "meta_parameter_count", "parse_memory", "prepared_bytes", "runner_plan", "shape_of",
]
