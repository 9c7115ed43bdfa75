"""Seeded random-string fuzzing of the two text parsers users feed by hand: the HumanML3D caption files
(`datasets.motion_dataset.parse_captions`, then the entry builder that slices motions by their start/end tags) and
the `text#length` prompts files (`utils.prompts`). Whatever the input: never a traceback, always either a parse
(lines skipped are counted) or one error line naming the file and the line."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from datasets.motion_dataset import Caption, DatasetError, MotionCorpus, get_spec, parse_captions
from utils.prompts import Prompt, PromptsError, parse_prompts, read_prompts

CAPTION_CASES = 3000
PROMPT_CASES = 3000
PROMPT_FILE_CASES = 500

# pieces that the parsers treat specially, mixed with plain characters
_TOKENS = ["#", "#", "#", "/", " ", "  ", "\t", "\n", "\r\n", "\r", "0", "1", "2.5", "-1", "1e400", "-1e400", "nan",
           "inf", "-inf", "NaN", "0.0", "10.0", "1e-3", ".", "e", "a person walks", "a/DET", "walk/VERB", "#0.0#0.0",
           "\ufeff", "\x00", "\x1b", "\u2028", "\x85", "é", "人", "🙂", "\\", "'", '"', "%s", "{}", "9" * 30, ""]


def random_text(rng: random.Random, max_pieces: int = 25) -> str:
    out = []
    for _ in range(rng.randint(0, max_pieces)):
        if rng.random() < 0.7:
            out.append(rng.choice(_TOKENS))
        else:
            out.append("".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(1, 5))))
    return "".join(out)


_TAGS = ["0.0", "0", "nan", "1.5", "3.0", "4.25", "-1", "-2.0", "100", "1e400", "inf", " 2 ", "", "x", "0x10",
         "1_000", "٣", "2.", ".5", "+1"]


def random_caption_line(rng: random.Random) -> str:
    """Mostly well-formed `caption#tokens#start#end` lines with random fields, plus free random text."""
    if rng.random() < 0.25:
        return random_text(rng)
    fields = [random_text(rng, 6), random_text(rng, 6),
              rng.choice(_TAGS) if rng.random() < 0.8 else random_text(rng, 2),
              rng.choice(_TAGS) if rng.random() < 0.8 else random_text(rng, 2)]
    fields += [random_text(rng, 2) for _ in range(rng.choice([0, 0, 0, 1, 2]))]
    return "#".join(fields)


def one_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message and len(message) < 2000


def _corpus_for(texts: list[list[Caption]]) -> MotionCorpus:
    """A corpus of len(texts) motions of 120 frames each with the given parsed captions (entries not built)."""
    spec = get_spec("t2m")
    lengths = [120] * len(texts)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    data = np.zeros((int(offsets[-1]), spec.dim), np.float32)
    ids = [f"{i:06d}" for i in range(len(texts))]
    return MotionCorpus(root=Path("/fuzz"), split="train", spec=spec, ids=ids, data=data, offsets=offsets,
                        texts=texts)


def test_fuzz_caption_parser_and_entry_builder():
    rng = random.Random(11)
    parsed = errors = 0
    parsed_files = []
    for case in range(CAPTION_CASES):
        text = "\n".join(random_caption_line(rng) for _ in range(rng.randint(1, 4)))
        try:
            caps = parse_captions(text, f"texts/{case:06d}.txt")
        except DatasetError as err:
            msg = str(err)
            assert one_line(msg), repr(msg)
            assert f"texts/{case:06d}.txt line " in msg and "expected" in msg, msg
            errors += 1
            continue
        assert all(isinstance(c, Caption) and np.isfinite(c.start) and np.isfinite(c.end) for c in caps)
        assert all(not c.caption.startswith("\ufeff") for c in caps[:1])
        parsed += 1
        parsed_files.append(caps)
    assert parsed > 100 and errors > 300               # both paths were exercised
    # the entry builder turns every parsed caption into an entry or a counted skip, never an exception
    for chunk in range(0, len(parsed_files), 200):
        corpus = _corpus_for(parsed_files[chunk:chunk + 200])
        corpus._build_entries()
        total = sum(len(c) for c in parsed_files[chunk:chunk + 200])
        used = sum(len(e.captions) for e in corpus.entries)
        skipped = sum(len(v) for v in corpus.skipped.values())
        empty = sum(1 for c in parsed_files[chunk:chunk + 200] if not c)
        assert used + len(corpus.skipped.get("subclip_out_of_range", [])) == total
        assert skipped >= empty
        for e in corpus.entries:
            assert 0 <= e.start <= e.end <= 120 and e.length >= corpus.spec.min_length


def test_caption_tags_that_are_not_finite_numbers_are_one_line_errors():
    for tag in ("inf", "-inf", "1e400"):
        with pytest.raises(DatasetError, match=r"t\.txt line 1: expected a finite number of seconds as start"):
            parse_captions(f"a person walks#a/DET#{tag}#0.0", "t.txt")
    assert parse_captions("a person walks#a/DET#nan#nan", "t.txt")[0].whole_clip     # NaN reads as 0 (reference)


def test_fuzz_prompt_lines():
    rng = random.Random(12)
    ok = errors = 0
    for case in range(PROMPT_CASES):
        text = random_text(rng, 12)
        try:
            prompts = parse_prompts(text, "p.txt", max_length=196)
        except PromptsError as err:
            msg = str(err)
            assert one_line(msg), repr(msg)
            assert msg.startswith("p.txt") and "expected" in msg, msg
            errors += 1
            continue
        assert len(prompts) >= 1 and prompts.skipped >= 0
        for p in prompts:
            assert isinstance(p, Prompt) and p.text and p.text == " ".join(p.text.split())
            assert p.length is None or 1 <= p.length <= 196
        ok += 1
    assert ok > 300 and errors > 300


def test_fuzz_prompt_files_of_random_bytes(tmp_path):
    rng = random.Random(13)
    for case in range(PROMPT_FILE_CASES):
        path = tmp_path / f"p{case}.txt"
        if rng.random() < 0.5:
            data = bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 60)))
        else:
            data = random_text(rng, 10).encode("utf-8", "surrogatepass")
        path.write_bytes(data)
        try:
            read_prompts(path)
        except PromptsError as err:
            assert one_line(str(err)) and str(path) in str(err), str(err)


def test_prompt_file_format():
    prompts = parse_prompts("\ufeff# my prompts\na person walks#120\n\n  someone  waves  \nshe counts #1, #2#40\n",
                            "p.txt")
    assert list(prompts) == [Prompt("a person walks", 120), Prompt("someone waves", None),
                             Prompt("she counts #1, #2", 40)]
    assert prompts.skipped == 2
    for bad, message in (("a person walks#", "p.txt:1: length '' in 'a person walks#' is not a whole number"),
                         ("a person walks#12.5", "p.txt:1: length '12.5'"),
                         ("#120", None), ("walks#0", "p.txt:1: length 0 in 'walks#0': expected an integer >= 1"),
                         ("x\n  #3\nwalks#-4", "p.txt:3: length '-4'"),
                         ("walks\x00#3", "p.txt:1: control character '\\x00'")):
        if message is None:                       # a line starting with '#' is a comment: nothing left
            with pytest.raises(PromptsError, match=r"p\.txt: no prompts \(1 blank or comment line"):
                parse_prompts(bad, "p.txt")
            continue
        with pytest.raises(PromptsError) as err:
            parse_prompts(bad, "p.txt")
        assert message in str(err.value)
    with pytest.raises(PromptsError, match=r"p\.txt:1: length 500 in 'walks#500': expected at most 196 frames"):
        parse_prompts("walks#500", "p.txt", max_length=196)


def test_read_prompts_file_errors(tmp_path):
    with pytest.raises(PromptsError, match=r"prompts file .*nope\.txt not found"):
        read_prompts(tmp_path / "nope.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9#40\n".encode("latin-1"))
    with pytest.raises(PromptsError, match=r"latin1\.txt: byte 3 is not UTF-8 text"):
        read_prompts(tmp_path / "latin1.txt")
    (tmp_path / "ok.txt").write_text("a person jumps#60\n")
    assert read_prompts(tmp_path / "ok.txt") == [Prompt("a person jumps", 60)]
