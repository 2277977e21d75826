"""Titans assemblers (MAC, MAG, MAL, LMM) built from ``memory_blocks`` components.

- :class:`TitansConfig` names a variant and every swappable component; presets give sizes.
- The blocks (:class:`MACBlock`, :class:`MAGBlock`, :class:`MALBlock`, :class:`LMMBlock`,
  :class:`AttentionBlock`) receive their components as constructor arguments; the builders in
  :mod:`titans.builders` wire them from a config, by names looked up in :mod:`titans.registry`.
- :class:`TitansLM` streams exactly: pieces of any size with the returned state equal one call.
- :func:`save_pretrained` / :func:`load_pretrained`: safetensors weights plus JSON config.
- :class:`TitansMACConfig` / :class:`TitansMACForCausalLM`: the reference MAC API, mapped.
- :mod:`titans.hf`: the Hugging Face ``transformers`` adapter (the ``hf`` extra).

The experiment application sits on top, in :mod:`titans.experiments` (nothing in the library
imports it): synthetic and text tasks (:data:`TASKS`), :func:`train` with :class:`TrainConfig`,
:func:`evaluate`, ablations, the demo, reports and the ``titans`` command line. Its public names
are re-exported here.
"""

from titans import registry
from titans.experiments.ablation import (
    AblationSpec,
    RunSpec,
    load_spec,
    parse_spec,
    equal_size_baseline,
    run_ablation,
    run_one,
)
from titans.blocks import (
    AttentionBlock,
    AttentionState,
    Block,
    LMMBlock,
    LMMState,
    MACBlock,
    MACState,
    MAGBlock,
    MAGState,
    MALBlock,
    MALState,
)
from titans.builders import build_block, build_combine, build_memory
from titans.checkpoint import CheckpointError, load_pretrained, save_pretrained
from titans.compat import TitansMACConfig, TitansMACForCausalLM
from titans.config import PRESETS, TitansConfig
from titans.experiments.demo import DemoSettings, run_demo
from titans.experiments.evaluate import evaluate
from titans.gating import CombineGate, NormalizedGate, ProductGate, SigmoidGate
from titans.model import (
    GenerateOutput,
    TitansLM,
    TitansOutput,
    TitansState,
    count_parameters,
)
from titans.experiments.report import markdown_table, plot_results
from titans.experiments.tasks import MQAR, TASKS, NeedleInHaystack, SelectiveCopy, Task, TextTask, make_task
from titans.experiments.train import TrainConfig, train

__all__ = [
    "MQAR",
    "PRESETS",
    "TASKS",
    "AblationSpec",
    "AttentionBlock",
    "AttentionState",
    "Block",
    "CheckpointError",
    "CombineGate",
    "DemoSettings",
    "GenerateOutput",
    "LMMBlock",
    "LMMState",
    "MACBlock",
    "MACState",
    "MAGBlock",
    "MAGState",
    "MALBlock",
    "MALState",
    "NeedleInHaystack",
    "NormalizedGate",
    "ProductGate",
    "RunSpec",
    "SelectiveCopy",
    "SigmoidGate",
    "Task",
    "TitansConfig",
    "TitansLM",
    "TitansMACConfig",
    "TitansMACForCausalLM",
    "TitansOutput",
    "TitansState",
    "TextTask",
    "TrainConfig",
    "build_block",
    "build_combine",
    "build_memory",
    "count_parameters",
    "equal_size_baseline",
    "evaluate",
    "load_pretrained",
    "load_spec",
    "make_task",
    "markdown_table",
    "parse_spec",
    "plot_results",
    "registry",
    "run_ablation",
    "run_demo",
    "run_one",
    "save_pretrained",
    "train",
]
