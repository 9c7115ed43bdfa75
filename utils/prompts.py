"""Prompt files for generation: one prompt per line, `text` or `text#length` (length in frames).

    a person walks forward and then jumps#120
    someone waves with the left hand
    # a comment line

    prompts = read_prompts("prompts.txt")          # [Prompt("a person walks forward and then jumps", 120), ...]

The length is the part after the last '#', so a caption may itself contain '#'. A line without '#' has no length
(the generator estimates it). Blank lines and lines starting with '#' are skipped and counted (`ReadPrompts.skipped`).
A UTF-8 byte-order mark is ignored. Everything else that does not fit (an empty text, a length that is not a whole
number of frames >= 1 or above `max_length`, control characters, a file that is not UTF-8 text, a file without any
prompt) is a `PromptsError` of one line naming `file:line` and what was expected.
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple


class PromptsError(ValueError):
    """A prompts file (or line) that does not fit the `text#length` format."""


class Prompt(NamedTuple):
    text: str
    length: int | None          # frames; None = let the generator estimate it


class ReadPrompts(list):
    """The prompts of a file (a list of Prompt) with the count of skipped blank / comment lines (`skipped`)."""

    def __init__(self, prompts=(), skipped: int = 0):
        list.__init__(self, prompts)
        self.skipped = skipped


_LENGTH = re.compile(r"[0-9]+")


def _bad_char(text: str) -> str | None:
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs") and ch != "\t":
            return ch
    return None


def parse_prompt_line(line: str, where: str, max_length: int | None = None) -> Prompt:
    """One non-blank, non-comment line -> Prompt; `where` ("file:line") prefixes every error."""
    shown = repr(line if len(line) <= 80 else line[:77] + "...")
    bad = _bad_char(line)
    if bad is not None:
        raise PromptsError(f"{where}: control character {bad!r} in {shown}; expected printable text")
    text, sep, length_text = line.rpartition("#")
    if not sep:
        text, length_text = line, ""
    text = " ".join(text.split())
    if not text:
        raise PromptsError(f"{where}: no text before '#' in {shown}; expected 'text' or 'text#length'")
    if not sep:
        return Prompt(text, None)
    length_text = length_text.strip()
    if not _LENGTH.fullmatch(length_text):
        raise PromptsError(f"{where}: length {length_text!r} in {shown} is not a whole number of frames; expected "
                           f"'text#length' with length an integer >= 1 (or no '#length')")
    length = int(length_text)
    if length < 1:
        raise PromptsError(f"{where}: length {length} in {shown}: expected an integer >= 1 frames")
    if max_length is not None and length > max_length:
        raise PromptsError(f"{where}: length {length} in {shown}: expected at most {max_length} frames")
    return Prompt(text, length)


def parse_prompts(content: str, source: str = "<prompts>", max_length: int | None = None) -> ReadPrompts:
    """Parse the text of a prompts file; `source` names it in errors. Raises PromptsError (one line)."""
    prompts, skipped = [], 0
    content = content.removeprefix("\ufeff")
    for lineno, raw in enumerate(content.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            skipped += 1
            continue
        prompts.append(parse_prompt_line(line, f"{source}:{lineno}", max_length))
    if not prompts:
        raise PromptsError(f"{source}: no prompts ({skipped} blank or comment line(s)); expected one 'text' or "
                           f"'text#length' per line")
    return ReadPrompts(prompts, skipped)


def read_prompts(path: str | os.PathLike, max_length: int | None = None) -> ReadPrompts:
    """The prompts of a UTF-8 file (see the module docstring). Raises PromptsError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise PromptsError(f"prompts file {path} not found" + (" (it is a folder)" if path.is_dir() else "")
                           + "; expected a text file with one 'text' or 'text#length' per line")
    try:
        content = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PromptsError(f"{path}: byte {err.start} is not UTF-8 text; expected a UTF-8 text file with one "
                           f"'text#length' per line") from None
    except OSError as err:
        raise PromptsError(f"{path}: cannot be read ({err.strerror or err})") from None
    return parse_prompts(content, str(path), max_length)
