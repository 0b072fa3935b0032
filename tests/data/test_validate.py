from typing import Any

import pytest

from tuneloop.data.validate import Invalid, detect_format, to_example

USER, BOT = {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}


def invalid(obj: dict[str, Any], fmt: str) -> Invalid:
    with pytest.raises(Invalid) as e:
        to_example(obj, fmt)
    return e.value


def test_messages_keep_roles_and_other_scalars_go_to_meta() -> None:
    ex = to_example({"messages": [{"role": "system", "content": "Be brief."}, USER, BOT], "lang": "en", "tags": ["x"]}, "messages")
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]
    assert ex.meta == {"lang": "en"}  # lists are not scalar


def test_openai_text_parts_are_joined() -> None:
    ex = to_example({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, BOT]},
                    "messages")
    assert ex.messages[0]["content"] == "ab"
    err = invalid({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, BOT]}, "messages")
    assert err.kind == "unsupported content" and "image_url" in err.reason


def test_sharegpt_maps_speakers() -> None:
    ex = to_example({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]},
                    "sharegpt")
    assert ex.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]


def test_alpaca_joins_instruction_and_input() -> None:
    ex = to_example({"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}, "alpaca")
    assert ex.messages == [{"role": "user", "content": "Translate.\n\nBonjour"}, {"role": "assistant", "content": "Hello"}]
    assert to_example({"instruction": "Say hi.", "input": "", "output": "hi"}, "alpaca").messages[0]["content"] == "Say hi."


def test_prompt_completion() -> None:
    ex = to_example({"prompt": "2+2=", "completion": "4", "id": 7}, "prompt_completion")
    assert ex.messages == [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}]
    assert ex.meta == {"id": 7}


def test_text_label_labels_become_strings() -> None:
    assert to_example({"text": "t", "label": 1}, "text_label").label == "1"
    assert to_example({"text": "t", "label": 1.0}, "text_label").label == "1"
    assert to_example({"text": "t", "label": True}, "text_label").label == "true"
    assert to_example({"text": "t", "label": " spam "}, "text_label").label == "spam"
    ex = to_example({"body": "t", "y": "a", "gender": "f", "age": 30}, "text_label", text_field="body", label_field="y")
    assert (ex.text, ex.label, ex.meta) == ("t", "a", {"gender": "f", "age": 30})


@pytest.mark.parametrize(("obj", "fmt", "kind", "words"), [
    ({"text": "t"}, "text_label", "missing field 'label'", "--label-field"),
    ({"text": "t", "label": None}, "text_label", "missing field 'label'", "label"),
    ({"text": "t", "label": float("nan")}, "text_label", "missing field 'label'", "label"),
    ({"text": "t", "label": ""}, "text_label", "empty field 'label'", "empty"),
    ({"text": "t", "label": 0.5}, "text_label", "wrong type for 'label'", "fraction"),
    ({"text": "t", "label": ["a"]}, "text_label", "wrong type for 'label'", "list"),
    ({"label": "a"}, "text_label", "missing field 'text'", "--text-field"),
    ({"text": "   ", "label": "a"}, "text_label", "empty field 'text'", "empty"),
    ({"text": 42, "label": "a"}, "text_label", "wrong type for 'text'", "int"),
    ({"messages": "hi"}, "messages", "wrong type for 'messages'", "list"),
    ({"messages": []}, "messages", "empty field 'messages'", "empty"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages", "unknown role", "'bot'"),
    ({"messages": [{"content": "x"}]}, "messages", "missing field 'role'", "no role"),
    ({"messages": [USER, {"role": "assistant", "content": ""}]}, "messages", "empty field 'content'", "message 2"),
    ({"messages": [USER, {"role": "assistant", "content": 3}]}, "messages", "wrong type for 'content'", "int"),
    ({"messages": [USER]}, "messages", "no assistant turn", "no assistant turn"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "sharegpt", "unknown role", "'alien'"),
    ({"instruction": "do"}, "alpaca", "missing field 'output'", "output"),
    ({"instruction": "do", "input": 5, "output": "x"}, "alpaca", "wrong type for 'input'", "int"),
    ({"prompt": "p"}, "prompt_completion", "missing field 'completion'", "completion"),
])
def test_each_problem_has_a_kind_and_a_readable_reason(obj: dict[str, Any], fmt: str, kind: str, words: str) -> None:
    err = invalid(obj, fmt)
    assert err.kind == kind
    assert words in err.reason


def test_turns_after_the_last_answer_are_trimmed_and_counted() -> None:
    ex = to_example({"messages": [USER, BOT, {"role": "user", "content": "And?"}]}, "messages")
    assert ex.messages[-1]["role"] == "assistant" and ex.trimmed == 1


def test_format_detection_from_a_rows_fields() -> None:
    assert detect_format({"prompt": "a", "completion": "b"}) == "prompt_completion"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"instruction": "x"}) == "alpaca"
    assert detect_format({"text": "a"}) is None
