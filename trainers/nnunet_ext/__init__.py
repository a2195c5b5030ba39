"""Folder to point ``nnUNet_extTrainer`` at (see :data:`EXT_TRAINER_DIR`)."""

from __future__ import annotations

import os

EXT_TRAINER_DIR = os.path.dirname(os.path.abspath(__file__))
