"""Domains as data: which scanner, site or contrast each case comes from.

nnU-Net has no notion of a case's domain. nnzoo keeps one mapping ``{case identifier: domain
name}`` per dataset in ``domains.json`` (written by ``nnzoo dataset create --domains FILE`` into
the raw dataset, copied beside ``dataset.json`` in the preprocessed dataset by
``plan_and_preprocess``). It covers labeled training cases and unlabeled ones (``imagesUnlabeled``).

Trainers that need domains (registry ``needs_domains=True``) read it with :func:`dataset_domains`
and refuse clearly without it; every other trainer ignores it. ``nnzoo evaluate`` uses the same
mapping to report per-domain means.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

__all__ = ["DOMAINS_FILE", "DomainsError", "parse_domains_file", "read_domains", "dataset_domains",
           "domain_index"]

#: file name of the mapping, in the raw and in the preprocessed dataset folder
DOMAINS_FILE = "domains.json"


class DomainsError(ValueError):
    """A domains file that cannot be read or does not fit the dataset (the message names the file)."""


def parse_domains_file(path: str | Path) -> dict[str, str]:
    """A user's mapping of cases to domains: CSV ``case,domain`` (a header row allowed) or JSON ``{case: domain}``.

    Args:
        path: the ``.csv`` or ``.json`` file (anything else is read as CSV).

    Returns:
        ``{case: domain}``, both stripped strings.

    Raises:
        DomainsError: unreadable file, wrong shape, an empty case or domain name, or a case listed twice
            with different domains.
    """
    p = Path(path)
    if not p.is_file():
        raise DomainsError(f"{p}: not found")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DomainsError(f"{p}: cannot be read ({e})") from None
    out: dict[str, str] = {}
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise DomainsError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(obj, dict):
            raise DomainsError(f"{p}: expected a JSON object {{case: domain}}, got a {type(obj).__name__}")
        items = list(obj.items())
    else:
        rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
        if rows and [c.strip().lower() for c in rows[0]][:2] == ["case", "domain"]:
            rows = rows[1:]
        for i, r in enumerate(rows, 1):
            if len(r) != 2:
                raise DomainsError(f"{p}: row {i} has {len(r)} columns, expected 2 (case,domain)")
        items = [(r[0], r[1]) for r in rows]
    for case, domain in items:
        if not isinstance(domain, str):
            raise DomainsError(f"{p}: the domain of {case!r} must be a string, got {domain!r}")
        case, domain = str(case).strip(), domain.strip()
        if not case or not domain:
            raise DomainsError(f"{p}: an empty case or domain name ({case!r}: {domain!r})")
        if out.get(case, domain) != domain:
            raise DomainsError(f"{p}: case {case!r} is listed with two domains ({out[case]!r} and {domain!r})")
        out[case] = domain
    if not out:
        raise DomainsError(f"{p}: lists no case")
    return out


def read_domains(path: str | Path) -> dict[str, str]:
    """A dataset's ``domains.json`` as written by nnzoo (see :func:`parse_domains_file` for the errors)."""
    return parse_domains_file(Path(path))


def dataset_domains(preprocessed_base: str | Path) -> dict[str, str] | None:
    """The domains of a dataset's cases, or None when it has none.

    Looks beside ``dataset.json`` in the preprocessed dataset folder, then in the raw dataset of the
    same name (``$nnUNet_raw/<name>/domains.json``).

    Args:
        preprocessed_base: ``$nnUNet_preprocessed/<DatasetXXX_Name>``.

    Raises:
        DomainsError: a file that exists but cannot be read.
    """
    base = Path(preprocessed_base)
    candidates = [base / DOMAINS_FILE]
    if os.environ.get("nnUNet_raw"):
        candidates.append(Path(os.environ["nnUNet_raw"]) / base.name / DOMAINS_FILE)
    for c in candidates:
        if c.is_file():
            return read_domains(c)
    return None


def domain_index(domains: dict[str, str], cases: list[str] | None = None) -> list[str]:
    """The sorted domain names (of ``cases`` only, when given): a domain's index is its position here.

    Raises:
        DomainsError: a case of ``cases`` without a domain.
    """
    if cases is None:
        return sorted(set(domains.values()))
    missing = [c for c in cases if c not in domains]
    if missing:
        raise DomainsError(f"{len(missing)} case(s) have no domain in {DOMAINS_FILE}: {', '.join(missing[:5])}"
                           + (" ..." if len(missing) > 5 else ""))
    return sorted({domains[c] for c in cases})
