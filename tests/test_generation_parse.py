"""The reply parser keeps multi-line answers, markup and numbered turns, and never drops a reply silently."""

import pytest

from vital_hub.generation.parse import parse_reply


def values(parsed):
    return [turn["value"] for turn in parsed.conversations]


def test_plain_labels_with_multi_line_answers():
    text = "User: What is shown?\nAssistant: A CT scan.\nIt shows the chest.\n\n- a bullet\nUser: Any mass?\nAssistant: No."
    parsed = parse_reply(text, min_rounds=2)
    assert parsed.status == "ok"
    assert values(parsed) == [
        "What is shown?\n<image>",
        "A CT scan.\nIt shows the chest.\n\n- a bullet",
        "Any mass?",
        "No.",
    ]
    assert [t["from"] for t in parsed.conversations] == ["human", "gpt", "human", "gpt"]


@pytest.mark.parametrize(
    "text",
    [
        "**User:** What organ?\n**Assistant:** The liver.\n**User:** Which lobe?\n**Assistant:** The right lobe.",
        "**User**: What organ?\n**Assistant**: The liver.\n**User**: Which lobe?\n**Assistant**: The right lobe.",
        "1. User: What organ?\n2. Assistant: The liver.\n3. User: Which lobe?\n4. Assistant: The right lobe.",
        "Q1: What organ?\nA1: The liver.\nQ2: Which lobe?\nA2: The right lobe.",
        "Question 1: What organ?\nAnswer 1: The liver.\nQuestion 2: Which lobe?\nAnswer 2: The right lobe.",
        "### User\nWhat organ?\n### Assistant\nThe liver.\n### User\nWhich lobe?\n### Assistant\nThe right lobe.",
        "Here is the conversation:\n\nHuman: What organ?\nGPT: The liver.\nHuman: Which lobe?\nGPT: The right lobe.",
        "- **User:** What organ?\n- **Assistant:** The liver.\n- **User:** Which lobe?\n- **Assistant:** The right lobe.",
    ],
)
def test_markup_and_numbering_variants_give_the_same_conversation(text):
    parsed = parse_reply(text, min_rounds=2)
    assert parsed.status == "ok", parsed.problem
    assert values(parsed) == ["What organ?\n<image>", "The liver.", "Which lobe?", "The right lobe."]


def test_label_alone_then_answer_label_is_one_turn():
    parsed = parse_reply("User: Size?\nAssistant:\nAnswer: About 2 cm.", min_rounds=1)
    assert values(parsed) == ["Size?\n<image>", "About 2 cm."]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty reply"),
        ("The image shows a chest X-ray with an opacity.", "no `User:`"),
        ("Assistant: Hello.\nUser: Hi?", "turn 1 is from the assistant"),
        ("User: One?\nUser: Two?\nAssistant: Yes.", "turn 2 is from the user"),
        ("User: Only one?\nAssistant: Yes.", "1 complete rounds, fewer than the 3 required"),
    ],
)
def test_unparsable_replies_are_unparsed_with_a_reason(text, problem):
    parsed = parse_reply(text, min_rounds=3)
    assert parsed.status == "unparsed"
    assert problem in parsed.problem
    assert parsed.conversations == []


def test_trailing_question_without_answer_is_dropped():
    parsed = parse_reply("User: A?\nAssistant: a.\nUser: B?\nAssistant: b.\nUser: C?", min_rounds=2)
    assert parsed.status == "ok"
    assert values(parsed)[-2:] == ["B?", "b."]


def test_truncated_reply_drops_its_last_round():
    text = "User: A?\nAssistant: a.\nUser: B?\nAssistant: b.\nUser: C?\nAssistant: the answer was cut"
    parsed = parse_reply(text, min_rounds=2, finish_reason="length")
    assert values(parsed) == ["A?\n<image>", "a.", "B?", "b."]
    assert parse_reply(text, min_rounds=3, finish_reason="length").status == "unparsed"


def test_image_token_in_reply_text_is_removed():
    parsed = parse_reply("User: <image> What is it?\nAssistant: A <image> scan.", min_rounds=1)
    assert values(parsed) == ["What is it?\n<image>", "A  scan."]


def test_dual_answers_numbered_and_lettered():
    text = (
        "User: What modality?\nAnswer 1: CT.\nAnswer 2: Computed tomography,\naxial view.\n\n"
        "**User:** Where is the lesion?\n**Answer A:** Left lobe.\n**Answer B:** In the left hepatic lobe.\n"
        "User: Size?\nAnswer 1: 2 cm"
    )
    parsed = parse_reply(text, mode="dual-answer", min_rounds=2)
    assert parsed.status == "ok", parsed.problem
    assert parsed.dual_answers == [
        {"question": "What modality?", "answer_a": "CT.", "answer_b": "Computed tomography,\naxial view."},
        {"question": "Where is the lesion?", "answer_a": "Left lobe.", "answer_b": "In the left hepatic lobe."},
    ]
    assert values(parsed) == ["What modality?\n<image>", "CT.", "Where is the lesion?", "Left lobe."]


def test_dual_answer_with_one_answer_in_the_middle_is_unparsed():
    text = "User: A?\nAnswer 1: a1\nUser: B?\nAnswer 1: b1\nAnswer 2: b2"
    parsed = parse_reply(text, mode="dual-answer", min_rounds=1)
    assert parsed.status == "unparsed"
    assert "question 1" in parsed.problem
