"""Built-in prompts against the constraints the papers' printed prompts set (issue 12, item 3): each file names
the paper section it follows, in a `#:` header that never reaches the model; output length and form, inputs,
answer options, number of worked examples and answer fields as in PEFUSE appendix G, IP-CIR §3.2, CoLLM
tables 22–24 and InstructCIR table I. The wording is ours; these tests check the constraints, not the words."""

from __future__ import annotations

import re
from importlib import resources

import pytest

from cirflow.prompts import header, load_template, render
from cirflow.schemas.layout import parse_layout
from cirflow.tasks.builds.instructcir_texts import clean
from cirflow.tasks.ip_cir.plan_layout import split_template

FILES = sorted(p.name for p in resources.files("cirflow.prompts").iterdir() if p.name.endswith(".txt"))
PAPERS = ("PEFUSE", "IP-CIR", "CoLLM", "InstructCIR", "MVFT-JI", "CIReVL", "LDRE")
SECTION = re.compile(r"§\s*[\dIVX]|\btable \d|\btable [IVX]+\b|\bappendix [A-Z]\b|\bsupp\. §|\bB\.\d")
ONE_TO_THREE = re.compile(r"\b(1|one) to (3|three)\b[^.]*\bsentences\b", re.IGNORECASE)


def _raw(name: str) -> str:
    return resources.files("cirflow.prompts").joinpath(name).read_text()


def _load(name: str) -> str:
    kind, bench, _ = name.rsplit(".", 2)
    return load_template(kind, bench)[0]


def test_there_are_prompts():
    assert len(FILES) >= 27


@pytest.mark.parametrize("name", FILES)
def test_each_file_names_the_paper_section_it_follows_in_a_stripped_header(name):
    raw = _raw(name)
    assert raw.startswith("#: "), name
    (line,) = header(raw)
    assert any(p in line for p in PAPERS), line
    assert SECTION.search(line), line
    text = _load(name)
    assert "#:" not in text and line not in text  # the header never reaches the model (nor the stage key)
    assert text == raw.split("\n", 1)[1]


def test_override_files_are_stripped_too(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("#: my notes\nDescribe {modification}.\n#: more notes\n")
    assert load_template("compose_target_text", "cirr", str(f)) == ("Describe {modification}.\n", str(f))


@pytest.mark.parametrize("bench", ["cirr", "circo", "fashioniq", "genecis"])
def test_pefuse_composed_description_is_one_to_three_sentences_from_image_and_modification(bench):
    text = _load(f"compose_target_text.{bench}.txt")
    assert ONE_TO_THREE.search(text), bench  # appendix G: "Write 1 to 3 ... sentences"
    assert "attached image" in text and text.count("{modification}") == 1  # inputs: reference image + text
    assert not re.search(r"\bone (short )?sentence\b", text, re.IGNORECASE)
    # "without knowing the reference image or modification instructions"
    assert re.search(r"without (seeing |knowing )?the reference", text)


def test_genecis_prompt_has_no_rules_of_its_own():
    text = _load("compose_target_text.genecis.txt")
    assert "If the condition" not in text and "few concrete words" not in text
    assert "objects and their attributes" in text  # appendix G's GeneCIS focus


def test_circo_gets_the_modification_verbatim():
    prompt = render(_load("compose_target_text.circo.txt"), modification="has two dogs")
    assert "Instruction: has two dogs\n" in prompt


@pytest.mark.parametrize("bench", ["cirr", "circo", "fashioniq", "genecis"])
def test_gallery_captions_stay_within_three_sentences(bench):
    text = _load(f"caption_images.{bench}.txt")
    assert re.search(r"\b(one|1) (to|or) (two|three|2|3)\b[^.]*sentences", text)


@pytest.mark.parametrize("bench", ["cirr", "fashioniq"])
def test_collm_validation_allows_none_of_them(bench):
    text = _load(f"refine_validate.{bench}.txt")
    # table 24: -1 when several candidates match equally, and when the target is not among them
    assert text.count("answer -1") == 2
    assert re.search(r"equally", text) and re.search(r"none of the candidates", text)
    assert '{"choice": <candidate number from 1 to {n}, or -1>}' in text
    assert "Exactly one candidate" not in text  # the old prompt forced a choice
    prompt = render(text, modification="make it red", n="4")
    assert re.search(r'"(.*)"', prompt).group(1) == "make it red"  # the text under test is the first quote


@pytest.mark.parametrize("bench", ["cirr", "fashioniq"])
def test_collm_regeneration_goes_coarse_to_fine(bench):
    text = _load(f"refine_regenerate.{bench}.txt")
    assert "coarse to fine" in text and "{levels}" in text and "{good_examples}" in text


@pytest.mark.parametrize("bench", ["cirr", "circo", "fashioniq"])
def test_ip_cir_layout_prompt_has_three_examples_with_size_and_from(bench):
    system, user = split_template(_load(f"plan_layout.{bench}.txt"))
    assert [int(n) for n in re.findall(r"^Example (\d+)$", system, re.MULTILINE)] == [1, 2, 3]
    answers = [ln.removeprefix("Answer: ") for ln in system.splitlines() if ln.startswith("Answer: {")]
    assert len(answers) == 3
    assert '"size": 1 to 5, "from": 0 or 1' in system  # the answer format names both fields
    for a in answers:
        parsed = parse_layout(a)
        assert parsed.ok and not parsed.dropped, a
        for inst in parsed.layout.instances:
            assert inst.size in range(1, 6) and inst.from_reference in (0, 1), a
    assert "{caption}" in user and "{modification}" in user


def test_instructcir_prompt_ends_on_the_difference_slot():
    text = _load("instructcir_texts.reformulation.txt")
    assert text.rstrip().endswith("Difference:")
    assert "within 12 words" in text and "special characters" in text
    assert "{caption_a}" in text and "{caption_b}" in text and "Caption A:" in text


@pytest.mark.parametrize("answer, expected", [
    ("make the dress red", "make the dress red"),
    ("Difference: make the dress red", "make the dress red"),
    ("Difference:\nmake the dress red\nExplanation: the colour changed", "make the dress red"),
    ('  "make the dress red"  ', "make the dress red"),
])
def test_instructcir_parser_reads_the_difference_slot(answer, expected):
    assert clean(answer) == expected


def test_mtcir_prompt_asks_for_less_than_20_words_in_both_directions():
    text = _load("mtcir_texts.modification.txt")
    assert re.search(r"(fewer|less) than 20 words", text)
    assert '"forward"' in text and '"backward"' in text and "{categories}" in text
