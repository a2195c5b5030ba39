"""Shared pieces for nnzoo's method planners."""

from __future__ import annotations

__all__ = ["SharedPreprocessingMixin"]


class SharedPreprocessingMixin:
    """Point a method planner's configurations at the base plans' preprocessed data.

    A method planner that changes only network, patch and batch size (not spacing,
    normalisation or resampling) produces the same preprocessed arrays as the planner it
    derives from for ``2d`` and ``3d_fullres``. With this mixin those configurations use the
    base plans' data identifier (``nnUNetPlans_3d_fullres``...), so the dataset is stored once;
    ``nnzoo plan_and_preprocess`` skips preprocessing a configuration whose data folder is
    complete and identical. ``3d_lowres`` keeps its own folder: its spacing derives from the
    method's fullres patch, as in nnU-Net's ResEnc planners.

    Attributes:
        BASE_PLANS_NAME: plans name of the planner whose preprocessing is shared.
    """

    BASE_PLANS_NAME = "nnUNetPlans"

    SHARED_CONFIGURATIONS = ("2d", "3d_fullres")

    def generate_data_identifier(self, configuration_name: str) -> str:
        if configuration_name in self.SHARED_CONFIGURATIONS:
            return f"{self.BASE_PLANS_NAME}_{configuration_name}"
        return f"{self.plans_identifier}_{configuration_name}"
