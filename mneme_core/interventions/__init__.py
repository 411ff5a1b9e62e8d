"""Interventions MNEME studies can make themselves (for the demo and for experiments).

- ``rmu``: RMU unlearning (Li et al. 2024), stored as a delta over the base model;
- ``lora``: LoRA fine-tuning on a list of texts, stored as a PEFT adapter folder.
"""

from mneme_core.interventions.lora import (
    LoRAConfig,
    LoRAError,
    LoRAResult,
    lora_finetune,
    loss_report,
    save_lora_adapter,
)
from mneme_core.interventions.rmu import (
    RMUConfig,
    RMUError,
    RMUResult,
    activation_report,
    rmu_unlearn,
    save_rmu_delta,
)

__all__ = [
    "LoRAConfig",
    "LoRAError",
    "LoRAResult",
    "lora_finetune",
    "loss_report",
    "save_lora_adapter",
    "RMUConfig",
    "RMUError",
    "RMUResult",
    "activation_report",
    "rmu_unlearn",
    "save_rmu_delta",
]
