"""Preference-pair format shared by the reward model, DPO and the review store."""

import json

import pytest

from radimpress_lib.data import preferences as P
from radimpress_lib.train.reward import to_trl_dataset

REC = {"report_id": "r1", "findings": "Heart size normal. No effusion.", "indication": "cough", "impression": "x"}


def test_roundtrip_and_trl_format(tmp_path):
    pairs = [
        P.make_pair(REC, "No acute disease.", "Large effusion.", "factual:insert", "gen"),
        P.make_pair(REC, "1. No acute disease.", "No acute disease.", "style", "gen", style="reader 3"),
    ]
    path = P.write_pairs_jsonl(pairs, tmp_path / "p.jsonl")
    back = P.read_pairs_jsonl(path)
    assert back == pairs
    assert "impression" not in back[0]["record"]  # the reference never leaks into the prompt
    assert P.pair_type_counts(back) == {"factual:insert": 1, "style": 1}
    ds = to_trl_dataset(back)
    assert [m["role"] for m in ds[1]["prompt"]] == ["system", "user"]
    assert "reader 3" in ds[1]["prompt"][0]["content"] and "reader 3" not in ds[0]["prompt"][0]["content"]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "No acute disease."}]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"chosen": ""}, "chosen"),
        ({"rejected": "No acute disease."}, "same text"),
        ({"pair_type": "other"}, "pair_type"),
        ({"record": {"findings": " "}}, "record"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, change, field):
    good = P.make_pair(REC, "No acute disease.", "Large effusion.", "factual:insert", "gen")
    bad = {**good, **change}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(P.PairError, match=rf"p.jsonl:2: .*{field}"):
        P.read_pairs_jsonl(path)


def test_retrieval_context_travels_with_the_pair():
    rec = {**REC, "similar_impressions": ["No acute disease.", "Clear lungs."]}
    pair = P.make_pair(rec, "No acute disease.", "Large effusion.", "factual:insert", "gen")
    assert pair["record"]["similar_impressions"] == ["No acute disease.", "Clear lungs."]
    user = to_trl_dataset([pair])[0]["prompt"][1]["content"]
    assert user.endswith("- No acute disease.\n- Clear lungs.")
