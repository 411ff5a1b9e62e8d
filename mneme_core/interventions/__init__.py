"""Interventions MNEME studies can make themselves (for the demo and for experiments).

- ``rmu``: RMU unlearning (Li et al. 2024), stored as a delta over the base model.
"""

from mneme_core.interventions.rmu import (
    RMUConfig,
    RMUError,
    RMUResult,
    activation_report,
    rmu_unlearn,
    save_rmu_delta,
)

__all__ = ["RMUConfig", "RMUError", "RMUResult", "activation_report", "rmu_unlearn", "save_rmu_delta"]
