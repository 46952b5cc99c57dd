import json

import pytest

from tests.conftest import shared_fixture
from vital_hub.io import iter_json_records
from vital_hub.schema import (
    Location,
    RecordError,
    check_unique_ids,
    content_to_text,
    first_domain,
    llava_to_row,
    mention_texts,
    row_to_llava,
    text_to_content,
    validate_llava,
)


def record(**overrides):
    base = {
        "id": "32432162_F1",
        "image": "32432162_F1.jpg",
        "domain": {"chest_xray": False, "mri": False, "ct_scan": True, "histology": False, "gross": False},
        "conversations": [
            {"from": "human", "value": "What is shown?\n<image>"},
            {"from": "gpt", "value": "A CT of the chest."},
            {"from": "human", "value": "Any effusion?"},
            {"from": "gpt", "value": "A small right effusion."},
        ],
    }
    base.update(overrides)
    return base


FIGURE = {"bytes": b"jpeg", "path": "32432162_F1.jpg"}


@pytest.mark.parametrize("figure", [FIGURE, None], ids=["figure", "text-only"])
@pytest.mark.parametrize(
    "first", ["What is shown?\n<image>", "<image>\nWhat is shown?", "a<image>b", "What is shown?"]
)
def test_round_trip_keeps_image_placement_with_or_without_the_figure(first, figure):
    original = record()
    original["conversations"][0]["value"] = first
    row = llava_to_row(original, "c", figure)
    assert row_to_llava(row) == original
    assert json.dumps(row_to_llava(row)) == json.dumps(original)  # key order too


def test_row_shape_is_trl_messages():
    row = llava_to_row(record(), "biomed-vital-80k", FIGURE)
    assert row["image_id"] == "32432162_F1"
    assert row["source"] == "biomed-vital-80k"
    assert row["images"] == [FIGURE] and row["image_position"] == 1
    assert row["messages"][0] == {
        "role": "user",
        "content": [{"type": "text", "text": "What is shown?\n"}, {"type": "image", "text": None}],
    }
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]


def test_a_row_without_its_figure_is_a_text_only_trl_row():
    """Stock TRL counts image parts against `images`: a figure-less row must have neither (not `[None]`)."""
    row = llava_to_row(record(), "c")
    assert row["images"] == [] and row["image_position"] == 1
    assert row["messages"][0]["content"] == [{"type": "text", "text": "What is shown?\n"}]


def test_a_record_without_image_token_gets_its_figure_first_and_exports_without_it():
    original = record()
    original["conversations"][0]["value"] = "What is shown?"
    row = llava_to_row(original, "c", FIGURE)
    assert row["images"] == [FIGURE] and row["image_position"] is None
    assert row["messages"][0]["content"] == [
        {"type": "image", "text": None},
        {"type": "text", "text": "What is shown?"},
    ]
    assert row_to_llava(row) == original


def test_absent_domain_int_id_misspelled_key_and_extra_fields_round_trip():
    original = {"id": 7, "image": "x_F1.jpg", "conversatons": record()["conversations"], "fig_caption": "c", "n": [1]}
    row = llava_to_row(original, "c")
    assert row["domain"] is None
    back = row_to_llava(row)
    assert back["id"] == 7 and "domain" not in back
    assert back["conversations"] == original["conversatons"]
    assert back["fig_caption"] == "c" and back["n"] == [1]


def test_partial_domain_keeps_its_keys():
    original = record(domain={"mri": True, "gross": False})
    assert row_to_llava(llava_to_row(original, "c"))["domain"] == {"mri": True, "gross": False}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"conversations": []}, "empty conversation"),
        ({"conversations": [{"from": "human", "value": "q <image>"}]}, "odd number of turns"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}, "unknown role 'bot'"),
        ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]}, "do not alternate"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]}, "turn 1 is empty"),
        ({"image": ""}, "no image reference"),
        ({"id": ""}, "missing or empty 'id'"),
        ({"domain": {"xray": True}}, "unknown domain flags"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "see <image>"}]},
            "may only stand in the first question",
        ),
        (
            {"conversations": [{"from": "human", "value": "<image> q <image>"}, {"from": "gpt", "value": "a"}]},
            "appears 2 times",
        ),
    ],
)
def test_validation_names_file_record_and_reason(change, reason):
    bad = record(**change)
    with pytest.raises(RecordError) as err:
        validate_llava(bad, Location("data.json", 12))
    message = str(err.value)
    assert reason in message
    assert "data.json" in message and "record 12" in message


def test_missing_image_key_is_an_error():
    bad = record()
    del bad["image"]
    with pytest.raises(RecordError, match="no image reference"):
        validate_llava(bad)


def test_duplicate_ids_are_rejected_with_both_positions():
    items = [(Location("f.json", i), {"id": rid}) for i, rid in enumerate(["a", "b", "a"])]
    with pytest.raises(RecordError) as err:
        list(check_unique_ids(items))
    assert "record 2" in str(err.value) and "first seen at record 0" in str(err.value) and "'a'" in str(err.value)


def test_text_content_split_is_lossless():
    for text in ["<image>", "a<image>b", "<image>\n\nq ", "no image"]:
        assert content_to_text(text_to_content(text)) == text


def test_mention_shapes():
    assert mention_texts(None) == []
    assert mention_texts(["a", " "]) == ["a"]
    assert mention_texts([{"tokens": "t", "entities": []}]) == ["t"]
    assert mention_texts("single") == ["single"]


def test_first_domain_uses_llava_med_priority():
    assert first_domain({"ct_scan": True, "histology": True}) == "histology"
    assert first_domain({"gross": False}) is None
    assert first_domain(None) is None


def test_real_demonstrations_round_trip():
    path = shared_fixture("biomed_vital", "clinician_demonstrations.json")
    good, rejected = 0, {}
    for where, demo in iter_json_records(path):
        original = {k: v for k, v in demo.items() if k != "imgs"}
        original["image"] = demo["imgs"]
        try:
            row = llava_to_row(original, "demos", where=where)
        except RecordError as err:
            rejected[demo["id"]] = str(err)
            continue
        assert row_to_llava(row) == original
        good += 1
    # Two of the real demonstrations have two answers in a row; they must be reported, not silently accepted.
    assert good == 56
    assert sorted(rejected) == [34, 49]
    assert "do not alternate" in rejected[34] and "clinician_demonstrations.json" in rejected[34]


def test_real_qa50_round_trip():
    path = shared_fixture("llava_med", "llava_med_eval_qa50_qa.jsonl")
    count = 0
    for where, question in iter_json_records(path):
        original = {
            "id": question["question_id"],
            "image": question["image"],
            "domain": question["domain"],
            "conversations": [
                {"from": "human", "value": question["text"]},
                {"from": "gpt", "value": question["gpt4_answer"]},
            ],
            "fig_caption": question["fig_caption"],
            "in_text_mention": question["in_text_mention"],
            "type": question["type"],
        }
        assert row_to_llava(llava_to_row(original, "qa50", where=where)) == original
        count += 1
    assert count == 193


def test_row_batch_builder_equals_row_by_row_conversion():
    import pyarrow as pa

    from vital_hub.schema import RowBatchBuilder, row_arrow_schema

    records = [
        record(),
        {
            "id": 3,
            "image": "a_F1.jpg",
            "conversatons": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
            "fig_caption": "c",
        },
        record(id="p", domain={"mri": True, "gross": False}),
        {
            "id": "n",
            "image": "n.jpg",
            "conversations": [{"from": "human", "value": "no image"}, {"from": "gpt", "value": "a"}],
        },
    ]
    images = [{"bytes": b"jpeg", "path": "32432162_F1.jpg"}, None, None, {"bytes": b"", "path": "n.jpg"}]
    builder = RowBatchBuilder()
    for item, image in zip(records, images, strict=True):
        builder.append(item, "c", image)
    expected = pa.Table.from_pylist(
        [llava_to_row(item, "c", image) for item, image in zip(records, images, strict=True)],
        schema=row_arrow_schema(),
    )
    table = builder.table()
    assert table.equals(expected)
    assert table.schema.equals(expected.schema, check_metadata=True)
    back = [row_to_llava(row) for row in table.to_pylist()]
    assert back[1]["conversations"] == records[1]["conversatons"]
    assert [b["conversations"] for b in back[2:]] == [r["conversations"] for r in records[2:]]
