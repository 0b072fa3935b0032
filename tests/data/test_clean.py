import pytest

from tuneloop.data.clean import clean_text, normalise_for_key, strip_html


def test_nfc_controls_and_whitespace() -> None:
    assert clean_text("Cafe\u0301\x00 \u200bbar\t\tbaz\x7f  ") == "Café bar baz"
    assert clean_text("a\r\nb\u2028c") == "a b c"  # classify text is one line


def test_chat_content_keeps_lines_and_indentation() -> None:
    code = "Here:\n\n\n\n```py\ndef f():\n    return  1   \n```  "
    assert clean_text(code, keep_lines=True) == "Here:\n\n```py\ndef f():\n    return 1\n```"


def test_html_tags_entities_and_scripts() -> None:
    assert clean_text("<p>Fish &amp; chips</p><script>alert(1)</script><br/>&eacute;t&#233;") == "Fish & chips été"
    assert strip_html("<div>a</div><div>b</div>") == "a\nb\n"


@pytest.mark.parametrize("text", ["if a < b and c > d", "x<y", "use <angle> brackets?", "AT&T rocks"])
def test_text_that_only_looks_like_html_survives(text: str) -> None:
    # "<angle>" is a well-formed tag, so it goes; the others are plain text
    expected = "use brackets?" if "angle" in text else text
    assert clean_text(text) == expected


def test_html_stripping_can_be_turned_off() -> None:
    assert clean_text("<b>bold</b> &amp;", html_tags=False) == "<b>bold</b> &amp;"


def test_key_ignores_case_and_spacing() -> None:
    assert normalise_for_key("Hello \n  World") == normalise_for_key("hello world")
