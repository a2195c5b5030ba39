"""Shim for nnU-Net's ``nnUNet_extTrainer`` lookup.

Point ``nnUNet_extTrainer`` at this folder and ``nnUNetv2_train``/``nnUNetv2_predict`` find
every nnzoo trainer by name. nnU-Net imports this file as a top-level module and forgets it
afterwards; the classes it re-exports keep their real module (``nnzoo.trainers...``), so they
stay picklable.
"""

from nnzoo.trainers.registry import list_trainers as _list_trainers

globals().update({_i.name: _i.cls for _i in _list_trainers() if _i.cls.__module__.startswith("nnzoo.")})
