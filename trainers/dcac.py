"""DCAC as an nnU-Net trainer: nnUNetTrainerDCAC (multi-source domain generalisation, needs domains)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import NnzooTrainer, PlanNetworkMixin
from .domains import DOMAINS_FILE, DomainsError, dataset_domains
from .networks.dcac import DCACNet
from .registry import register_trainer

__all__ = ["nnUNetTrainerDCAC", "PLANS_SOURCE_DOMAINS", "FALLBACK_NUM_DOMAINS", "plans_source_domains",
           "labeled_case_identifiers", "source_domains", "batch_domain_indices", "domain_classification_loss"]

#: top-level plans entry the trainer writes into its copy of the plans (saved as the model folder's
#: ``plans.json`` and in the checkpoint's ``init_args``): the source domains, in domain-code order
PLANS_SOURCE_DOMAINS = "nnzoo_source_domains"
#: code length of a network built from plans without that entry (only outside training and prediction:
#: contract tests, memory estimates); a model's weights of another length fail to load with a shape error
FALLBACK_NUM_DOMAINS = 2


def plans_source_domains(plans: dict) -> list[str] | None:
    """The source domains recorded in a plans dict (see :data:`PLANS_SOURCE_DOMAINS`), or None."""
    names = plans.get(PLANS_SOURCE_DOMAINS)
    return list(names) if names else None


def labeled_case_identifiers(data_folder: str | Path) -> list[str]:
    """Identifiers of the labeled cases of a preprocessed configuration folder (sorted)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    return sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))


def _refusal(trainer: str, dataset: str, problem: str, base: str | Path) -> DomainsError:
    return DomainsError(
        f"{trainer} needs at least two source domains among the labeled training cases of dataset {dataset}, but "
        f"{problem}; add them with `nnzoo dataset create ... --domains FILE` or a {DOMAINS_FILE} "
        f"({{case: domain}}) beside dataset.json in {base}")


def source_domains(domains: dict[str, str] | None, cases: Sequence[str], *, trainer: str, dataset: str,
                   base: str | Path) -> list[str]:
    """The sorted domains of the labeled cases (the domain code's order), refusing what DCAC cannot train on.

    Args:
        domains: the dataset's ``{case: domain}`` (None: it has no ``domains.json``).
        cases: the labeled cases.
        trainer: the trainer's name, for the message.
        dataset: the dataset's name, for the message.
        base: the preprocessed dataset folder, for the message.

    Raises:
        DomainsError: no mapping, a labeled case without a domain, or fewer than two domains (one line
            naming the dataset, what is missing and how to add it).
    """
    if domains is None:
        raise _refusal(trainer, dataset, f"it has no {DOMAINS_FILE}", base)
    missing = [c for c in cases if c not in domains]
    if missing:
        raise _refusal(trainer, dataset, f"{len(missing)} labeled case(s) have no domain in its {DOMAINS_FILE} "
                                         f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})", base)
    names = sorted({domains[c] for c in cases})
    if len(names) < 2:
        found = f"only one ({names[0]!r})" if names else "none"
        raise _refusal(trainer, dataset, f"its labeled cases have {found}", base)
    return names


def batch_domain_indices(keys: Sequence[str], case_domains: dict[str, str], names: Sequence[str]) -> list[int]:
    """Each patch's domain index (position in ``names``) from the batch's case identifiers; ``-1`` for a
    case whose domain is not a source domain.

    Raises:
        DomainsError: a case without a domain.
    """
    index = {n: i for i, n in enumerate(names)}
    try:
        return [index.get(case_domains[str(k)], -1) for k in keys]
    except KeyError as e:
        raise DomainsError(f"case {e.args[0]!r} of the batch has no domain in {DOMAINS_FILE}") from None


def domain_classification_loss(domain_logits: torch.Tensor, domain_index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the domain classifier (official ``class_loss``) in float32, ignoring unknown (-1) domains."""
    return F.cross_entropy(domain_logits.float(), domain_index, ignore_index=-1)


@register_trainer(
    description="DCAC: domain- and content-adaptive dynamic heads for multi-source domain generalisation "
    "(needs domains.json)",
    paper="Hu, Liao, Zhang, Xia, Domain and Content Adaptive Convolution based Multi-Source Domain Generalization "
    "for Medical Image Segmentation, IEEE TMI 2023",
    official_code="https://github.com/ShishuaiHu/DCAC",
    dims=("2d", "3d"),
    domain_generalisation=True,
    needs_domains=True,
)
class nnUNetTrainerDCAC(PlanNetworkMixin, NnzooTrainer):
    """DCAC (Hu et al., IEEE TMI 2023; official code github ShishuaiHu/DCAC, on nnU-Net v1).

    The network is :class:`~nnzoo.trainers.networks.dcac.DCACNet`: the plan's encoder and
    nnU-Net-shaped decoder, a domain classifier on the detached, pooled encoder features, and the
    dynamic heads (domain-adaptive convolution from the domain code, content-adaptive convolutions
    from the pooled bottleneck). Training (official ``DCACTrainer_*.run_iteration``): the code is
    each patch's one-hot source domain, read from the batch's case identifiers (nnU-Net's ``keys``)
    and the dataset's ``domains.json``; the loss is nnU-Net's Dice + CE with deep supervision plus
    ``DOMAIN_LOSS_WEIGHT`` (official: 1) times the classifier's cross-entropy. At test time the code is
    the classifier's softmax. Optimiser, schedule, augmentation and gradient clipping (12) are
    nnU-Net's, as in the official trainer (nnUNetTrainerV2: SGD 1e-2, momentum 0.99, poly).

    Domains: the source domains are the sorted domains of every labeled case of the preprocessed
    dataset (not of one fold, so that all folds build the same network and ensemble); the trainer
    writes them into its plans under ``"nnzoo_source_domains"`` before building the network, so the
    model folder's ``plans.json`` (and the checkpoint) carry the code length to nnU-Net's predictor,
    whose ``build_network_architecture`` reads it. The fold's labeled training cases must span at
    least two domains; without a ``domains.json``, with a labeled case missing from it or with one
    domain the trainer refuses with one line saying how to add them.

    Dynamic heads and deep supervision: as in the official ``forward``, the DAC and CAC parameters
    are generated once per image and applied at every deep-supervision output; each decoder level
    has its own static head (1x1 conv to ``K = domains x classes`` channels, norm, nonlinearity).
    At test time nnU-Net's sliding window predicts a code per patch (and per mirrored copy), as
    the official nnU-Net v1 predictor did.

    Carried over to nnU-Net's InstanceNorm network: the dynamic layers normalise each sample over
    all its channels and voxels together (official ``group_norm`` with one group per sample), not
    per channel, so the per-channel offsets the DAC produces are not cancelled by the next norm.
    Measured (2026-12-06, He-initialised 3-domain networks on the tiny test plans, 4 random
    images, eval): the DAC changes the final head's features by 109 % (2D) / 114 % (3D) of their
    norm; switching the one-hot code from domain 0 to 1 or 2 changes the logits by 48 % / 44 %
    (2D) and 69 % / 67 % (3D) of their norm and the argmax on 16 % / 12 % (2D) and 63 % / 41 % (3D)
    of the voxels (``tests/trainers/test_dcac.py`` checks that the code and the content select
    different parameters).

    Deviations from the official code:
        - encoder, decoder and patch come from nnU-Net v2's plans (``PlainConvUNet`` or
          ``ResidualEncoderUNet``) instead of v1's ``Generic_UNet``; the static heads use the plan's
          norm and nonlinearity (InstanceNorm, LeakyReLU, as the official run) in the order
          conv -> norm -> nonlin even for ``nonlin_first`` plans;
        - the number of source domains and their names come from ``domains.json`` instead of case
          name prefixes hard-coded per dataset (``DCAC_encoding.py``);
        - nnU-Net's online validation runs the network as at test time (the predicted code), where
          the official ``run_iteration`` fed the one-hot domain during validation too; validation
          loss has no domain term;
        - the official trainers set 200/500/1000 epochs per dataset; here nnU-Net's (``--epochs``).
    """

    network_class = DCACNet
    DOMAIN_LOSS_WEIGHT = 1.0

    source_domains: tuple[str, ...] = ()
    case_domains: dict[str, str] = {}

    @classmethod
    def plans_network_kwargs(cls, plans: dict) -> dict:
        """The domain-code length from the plans' ``nnzoo_source_domains`` (written by the trainer into the model
        folder's ``plans.json``), :data:`FALLBACK_NUM_DOMAINS` without it."""
        names = plans_source_domains(plans)
        return {"num_domains": len(names) if names else FALLBACK_NUM_DOMAINS}

    def initialize(self) -> None:
        if not self.was_initialized:
            self._read_source_domains()
        super().initialize()

    def _read_source_domains(self) -> None:
        """Read ``domains.json``, choose the source domains and record them in the plans (before the
        network is built and before ``on_train_start`` saves ``plans.json``).

        Raises:
            DomainsError: see :func:`source_domains`; or the plans already record other domains.
        """
        base = self.preprocessed_dataset_folder_base
        dataset = self.plans_manager.dataset_name
        self.case_domains = dataset_domains(base) or {}
        names = source_domains(self.case_domains or None, labeled_case_identifiers(self.preprocessed_dataset_folder),
                               trainer=type(self).__name__, dataset=dataset, base=base)
        recorded = plans_source_domains(self.plans_manager.plans)
        if recorded is not None and recorded != names:
            raise DomainsError(f"{type(self).__name__}: the plans of dataset {dataset} record the source domains "
                               f"{recorded} but its {DOMAINS_FILE} gives {names}")
        self.plans_manager.plans[PLANS_SOURCE_DOMAINS] = names
        self.source_domains = tuple(names)
        self.print_to_log_file(f"DCAC source domains (code order): {names}")

    def do_split(self):
        """nnU-Net's split (and label budget); the fold's labeled training cases must span two domains.

        Raises:
            DomainsError: they come from fewer than two domains.
        """
        tr_keys, val_keys = super().do_split()
        present = sorted({self.case_domains[k] for k in tr_keys if k in self.case_domains})
        if len(present) < 2:
            found = f"only one ({present[0]!r})" if present else "none"
            raise _refusal(type(self).__name__, self.plans_manager.dataset_name,
                           f"fold {self.fold}'s {len(tr_keys)} labeled training cases have {found}",
                           self.preprocessed_dataset_folder_base)
        return tr_keys, val_keys

    def domain_indices(self, batch: dict) -> torch.Tensor:
        """``(N,)`` domain index of each patch of an nnU-Net batch (from its ``keys``), on the device.

        Raises:
            KeyError: the batch has no ``keys`` (nnU-Net's data loader always sends them).
        """
        if "keys" not in batch:
            raise KeyError(f"{type(self).__name__} needs the batch's case identifiers ('keys') to know each "
                           "patch's domain")
        idx = batch_domain_indices(batch["keys"], self.case_domains, self.source_domains)
        return torch.as_tensor(idx, dtype=torch.long, device=self.device)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step with the one-hot source domains as the code and the domain-classification loss added.

        Returns:
            ``{"loss": total, "seg_loss": ..., "domain_loss": ...}`` (numpy scalars).
        """
        data, target = self.batch_to_device(batch)
        index = self.domain_indices(batch)

        def forward(network, x):
            return network(x, domain_index=index, return_domain_logits=True)

        def loss(outputs, t):
            logits, domain_logits = outputs
            seg = self.loss(logits, t)
            dom = domain_classification_loss(domain_logits, index)
            return seg + self.DOMAIN_LOSS_WEIGHT * dom, {"seg_loss": seg, "domain_loss": dom}

        return self.nnunet_step_with_parts(data, target, forward, loss)
