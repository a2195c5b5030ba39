"""Shared pieces for nnzoo's method planners."""

from __future__ import annotations

__all__ = ["SharedPreprocessingMixin"]


class SharedPreprocessingMixin:
    """Point a method planner's configurations at the base plans' preprocessed data.

    A method planner that changes only network, patch and batch size (not spacing,
    normalisation or resampling) produces the same preprocessed arrays as the planner it
    derives from. With this mixin its configurations use the base plans' data identifier
    (``nnUNetPlans_3d_fullres``...), so the dataset is stored once; ``nnzoo
    plan_and_preprocess`` skips preprocessing a configuration whose data folder is complete.

    Attributes:
        BASE_PLANS_NAME: plans name of the planner whose preprocessing is shared.
    """

    BASE_PLANS_NAME = "nnUNetPlans"

    def generate_data_identifier(self, configuration_name: str) -> str:
        return f"{self.BASE_PLANS_NAME}_{configuration_name}"
