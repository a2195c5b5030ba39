"""``nnzoo.trainers.domains``: reading a user's case -> domain mapping and a dataset's ``domains.json``."""

from __future__ import annotations

import json

import pytest

from nnzoo.trainers.domains import (
    DOMAINS_FILE,
    DomainsError,
    dataset_domains,
    domain_index,
    parse_domains_file,
)


def test_csv_with_and_without_header_and_json_give_the_same_mapping(tmp_path):
    want = {"case_000": "t1_3t", "case_001": "t2", "u_005": "flair"}
    (tmp_path / "a.csv").write_text("case,domain\ncase_000,t1_3t\n case_001 , t2\n\nu_005,flair\n")
    (tmp_path / "b.csv").write_text("case_000,t1_3t\ncase_001,t2\nu_005,flair\n")
    (tmp_path / "c.json").write_text(json.dumps(want))
    for name in ("a.csv", "b.csv", "c.json"):
        assert parse_domains_file(tmp_path / name) == want


@pytest.mark.parametrize("name,text,needle", [
    ("x.csv", "case_000,t1,extra\n", "row 1 has 3 columns"),
    ("x.csv", "case_000,t1\ncase_000,t2\n", "two domains"),
    ("x.csv", "case_000,\n", "empty"),
    ("x.csv", "", "lists no case"),
    ("x.json", "[1, 2]", "expected a JSON object"),
    ("x.json", "{bad", "not valid JSON"),
    ("x.json", '{"case_000": 3}', "must be a string"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, name, text, needle):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(DomainsError) as e:
        parse_domains_file(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(DomainsError, match="not found"):
        parse_domains_file(tmp_path / "none.csv")


def test_dataset_domains_prefers_the_preprocessed_copy_then_the_raw_dataset(tmp_path, monkeypatch):
    raw, pre = tmp_path / "raw" / "Dataset001_X", tmp_path / "pre" / "Dataset001_X"
    raw.mkdir(parents=True)
    pre.mkdir(parents=True)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert dataset_domains(pre) is None
    (raw / DOMAINS_FILE).write_text(json.dumps({"a": "raw"}))
    assert dataset_domains(pre) == {"a": "raw"}
    (pre / DOMAINS_FILE).write_text(json.dumps({"a": "pre"}))
    assert dataset_domains(pre) == {"a": "pre"}


def test_domain_index_is_sorted_and_names_cases_without_a_domain():
    domains = {"a": "t2", "b": "t1", "c": "t2", "d": "flair"}
    assert domain_index(domains) == ["flair", "t1", "t2"]
    assert domain_index(domains, ["a", "c"]) == ["t2"]
    with pytest.raises(DomainsError, match="1 case.*: zz"):
        domain_index(domains, ["a", "zz"])
