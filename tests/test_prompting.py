"""Prompt layout, completion-only labels and findings truncation (radimpress_lib.llm.prompting)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from radimpress_lib.llm import prompting
from radimpress_lib.llm.prompting import IGNORE_INDEX, PromptError


@pytest.fixture(scope="session")
def tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def _record(**over):
    rec = {
        "report_id": "r1",
        "modality": "XR",
        "body_part": "CHEST",
        "indication": "Cough and fever.",
        "comparison": "None.",
        "findings": "The heart is normal in size. The lungs are clear. No pleural effusion or pneumothorax.",
        "impression": "No acute cardiopulmonary abnormality.",
        "radiologist_id": None,
        "split": "train",
        "mesh": [],
        "problems": [],
        "source": "synthetic:1",
    }
    rec.update(over)
    return rec


def test_messages_show_known_fields_only():
    msgs = prompting.build_messages(_record(indication="", modality=""))
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert "Indication" not in user and "Modality" not in user
    assert "Body part: CHEST" in user and "Comparison: None." in user
    assert user.endswith("Findings: " + _record()["findings"])
    full = prompting.build_messages(_record(), with_impression=True)
    assert full[-1] == {"role": "assistant", "content": "No acute cardiopulmonary abnormality."}


def test_style_slot_goes_to_system_message():
    plain = prompting.build_messages(_record())
    styled = prompting.build_messages(_record(), style="Radiologist R7. Example: 'Clear lungs.'")
    assert plain[1] == styled[1]
    assert styled[0]["content"].startswith(plain[0]["content"])
    assert "Radiologist R7" in styled[0]["content"] and prompting.STYLE_HEADING in styled[0]["content"]
    assert prompting.build_messages(_record(), style="  ") == plain


def test_similar_impressions_follow_the_findings():
    plain = prompting.build_messages(_record())
    rag = prompting.build_messages(_record(similar_impressions=["No acute disease.", "1. Clear  lungs."]))
    assert rag[0] == plain[0]
    assert rag[1]["content"] == (plain[1]["content"] + "\n" + prompting.SIMILAR_HEADING
                                 + "\n- No acute disease.\n- 1. Clear lungs.")
    assert prompting.build_messages(_record(similar_impressions=[])) == plain
    with pytest.raises(PromptError, match="report_id='r1'.*similar_impressions"):
        prompting.build_messages(_record(similar_impressions="No acute disease."))


def test_without_similar_removes_only_the_retrieval_block():
    similar = ["No acute disease.", "1. Clear lungs."]
    for extra in ({}, {"findings_graph": "effusion (absent)"}):
        plain = prompting.build_messages(_record(**extra), style="Radiologist R2.")
        rag = prompting.build_messages(_record(similar_impressions=similar, **extra), style="Radiologist R2.")
        assert rag != plain and prompting.without_similar(rag) == plain
        assert prompting.without_similar(plain) == plain
    # findings that quote the heading are not cut; the real block after them still is
    quoting = _record(findings=f"Clear lungs.\n{prompting.SIMILAR_HEADING}\nsee prior.")
    kept = prompting.build_messages(quoting)
    assert prompting.without_similar(kept) == kept
    assert prompting.without_similar(prompting.build_messages(dict(quoting, similar_impressions=similar))) == kept


def test_bad_records_name_the_report():
    with pytest.raises(PromptError, match="report_id='r9'.*findings"):
        prompting.build_messages(_record(report_id="r9", findings="  "))
    with pytest.raises(PromptError, match="report_id='r9'.*impression"):
        prompting.build_messages(_record(report_id="r9", impression=""), with_impression=True)
    with pytest.raises(PromptError, match="indication.*int"):
        prompting.build_messages(_record(indication=3))


def test_prompt_ends_with_generation_header(tokenizer):
    text = prompting.build_prompt(tokenizer, _record())
    assert text.endswith("<|im_start|>assistant\n")
    assert "No acute cardiopulmonary" not in text
    assert prompting.SYSTEM_PROMPT in text


def test_labels_mask_exactly_the_prompt(tokenizer):
    rec = _record()
    ex = prompting.build_sft_example(tokenizer, rec, max_len=512)
    prompt_ids = tokenizer(prompting.build_prompt(tokenizer, rec), add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    assert ex["prompt_len"] == n
    assert ex["input_ids"][:n] == prompt_ids
    assert ex["labels"][:n] == [IGNORE_INDEX] * n
    assert IGNORE_INDEX not in ex["labels"][n:]
    assert ex["labels"][n:] == ex["input_ids"][n:]
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])
    # The unmasked labels are exactly the impression followed by the end-of-turn token.
    completion = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(completion) == rec["impression"] + "<|im_end|>"
    assert completion[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ex["findings_tokens_dropped"] == 0


def test_example_matches_chat_template_rendering(tokenizer):
    """The training sequence is the rendered conversation up to the assistant's end-of-turn token."""
    rec = _record()
    ex = prompting.build_sft_example(tokenizer, rec, max_len=512, style="R2")
    rendered = tokenizer.apply_chat_template(
        prompting.build_messages(rec, "R2", with_impression=True), tokenize=False
    )
    assert rendered.startswith(tokenizer.decode(ex["input_ids"]))
    assert rendered[len(tokenizer.decode(ex["input_ids"])):] == "\n"


def test_truncation_cuts_findings_never_impression(tokenizer):
    long_findings = " ".join(f"Finding number {i} is described here in detail." for i in range(60))
    rec = _record(findings=long_findings)
    full = prompting.build_sft_example(tokenizer, rec, max_len=4096)
    max_len = len(full["input_ids"]) - 100
    ex = prompting.build_sft_example(tokenizer, rec, max_len=max_len)
    assert len(ex["input_ids"]) <= max_len
    assert ex["findings_tokens_dropped"] >= 100
    completion = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert tokenizer.decode(completion) == rec["impression"] + "<|im_end|>"
    prompt = tokenizer.decode(ex["input_ids"][: ex["prompt_len"]])
    assert "Finding number 0 is" in prompt and "Finding number 59" not in prompt and "[...]" in prompt


def test_unfittable_example_is_an_error(tokenizer):
    rec = _record(report_id="big", impression="Very long impression. " * 40)
    with pytest.raises(PromptError, match="report_id='big'.*does not fit"):
        prompting.build_sft_example(tokenizer, rec, max_len=120)


def test_dataset_counts_truncations(tokenizer):
    long = _record(report_id="long", findings="Lungs are clear. " * 80)
    ds, stats = prompting.build_sft_dataset(tokenizer, [_record(), long], max_len=200)
    assert stats.n_examples == 2 and stats.n_truncated == 1
    assert stats.truncated_report_ids == ["long"]
    assert stats.findings_tokens_dropped == ds[1]["findings_tokens_dropped"] > 0
    assert stats.total_tokens == sum(len(x) for x in ds["input_ids"]) == stats.prompt_tokens + stats.completion_tokens
    assert stats.max_len_seen <= 200
    assert ds.column_names[:3] == ["report_id", "input_ids", "labels"]
    with pytest.raises(ValueError, match="styles has 1 entries for 2 records"):
        prompting.build_sft_dataset(tokenizer, [_record(), long], max_len=200, styles=["a"])
