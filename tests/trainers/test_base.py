"""Shared trainer machinery (trainers/base.py): hyperparameter overrides and the registry facts about them."""

from __future__ import annotations

import pytest


def test_parse_hyperparameters_types():
    from nnzoo.trainers.base import parse_hyperparameters
    from nnzoo.trainers.mcnet import nnUNetTrainerMCNet
    from nnzoo.trainers.shape_prior import nnUNetTrainerShapePrior

    hp = parse_hyperparameters(nnUNetTrainerMCNet, {"TEMPERATURE": "0.2", "SHARPEN_PER_CHANNEL": "true",
                                                    "ENCODER_DROPOUT_2D": "0.1,0.2"})
    assert hp == {"TEMPERATURE": 0.2, "SHARPEN_PER_CHANNEL": True, "ENCODER_DROPOUT_2D": (0.1, 0.2)}
    assert parse_hyperparameters(nnUNetTrainerShapePrior, {"CRITIC_EPOCHS": "3"}) == {"CRITIC_EPOCHS": 3}
    with pytest.raises(ValueError, match="expected a int"):
        parse_hyperparameters(nnUNetTrainerShapePrior, {"CRITIC_EPOCHS": "1.5"})
    with pytest.raises(ValueError, match="expected a bool"):
        parse_hyperparameters(nnUNetTrainerMCNet, {"SHARPEN_PER_CHANNEL": "maybe"})
    with pytest.raises(KeyError, match="not a hyperparameter"):
        parse_hyperparameters(nnUNetTrainerMCNet, {"temperature": "0.2"})


def test_registry_quick_hparams_are_hyperparameters():
    from nnzoo.trainers import list_trainers
    from nnzoo.trainers.base import parse_hyperparameters
    from nnzoo.trainers.registry import register_trainer

    for info in list_trainers():  # every declared override parses as the class's own hyperparameter
        parse_hyperparameters(info.cls, {k: str(v) for k, v in info.quick_hparams.items()})
    with pytest.raises(ValueError, match="not hyperparameters"):
        register_trainer(type("X", (), {"A": 1}), quick_hparams={"B": 2})
