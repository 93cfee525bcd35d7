r"""The question/answer dataset file: read and write it in four formats, and validate it strictly.

Formats (FORMATS):

custom_tokens  the seed's format, one block per pair (a value may span several lines):
                   <|question|>
                   별무리섬은 어느 바다에 있나요?
                   <|answer|>
                   제주도 남쪽 바다에 있습니다.
json           one JSON array of objects: [{"question": "...", "answer": "..."}, ...]
jsonl          JSON Lines: one {"question": "...", "answer": "..."} object per line; blank lines are
               skipped. In json and jsonl the keys are exactly "question" and "answer" (JSON_KEYS; no
               other key is allowed, so a misspelt key is an error rather than a silently dropped
               field) and both values are JSON strings. A file of dev or held-out questions may
               also give a "key" (the short fact a right answer must state, found in the answer).
separator      one pair per line, question<sep>answer, where <sep> is a regular expression (default
               DEFAULT_SEPARATOR, r" \| ": space, pipe, space; the seed's reference data uses a bare
               r"\|"). Blank lines, and lines whose first non-blank character is '#', are skipped.

Escape rule of the separator format: a backslash makes the next character literal.
    \|  a literal '|' (any character that is not a letter or digit works the same: '\#', '\ ')
    \\  a literal backslash
    \n  a line break inside a value
A separator match that covers an escaped character or its backslash does not count, so with the
default separator `a \| b | c` is the pair ('a | b', 'c'); a '#' that starts a question is written
'\#' so the line is not a comment, and list numbering that belongs to a question '1\. ' (unescaped,
'1. ', '2) ', '- ', '* ' or '• ' starting a question is an error: a chat's list pasted whole). A
header row ('질문 | 답', 'Question | Answer') is an error too. A backslash before any other letter
or digit, or at the end of a line, is an error (a Windows path must be written C:\\Users).
write_pairs applies the rule, so every value reads back exactly.

Every format: the file must be UTF-8 (a BOM is accepted and dropped); CRLF and lone CR read as line
breaks; each value is stripped of surrounding whitespace (inner whitespace is kept). Then the whole
file is validated and every problem is reported at once, each naming the file, the line (and for
json the item, as "$[3]") and a short excerpt: a block without <|answer|>, text or an <|answer|>
before the first <|question|>, two <|answer|> in a block, an empty question or answer, a marker or
marker-like text such as '<|anwser|>' or '<|endoftext|>' inside a value (the tokenizer could read it
as a special token), a control character inside a value, invalid JSON (line:column), a missing,
unknown, repeated or non-string key, a separator missing or matching more than once on a line, an
unknown escape, an empty file. The same question (normalised: whitespace collapsed, a final . ! ?
dropped) with two different answers is an error naming both places; an exact duplicate pair is kept
once (the first) with a warning.

A file of questions alone (read_questions: the unknown-question probe, questions the data does not
answer) has one question per line, blank lines and '#' comment lines skipped, no escapes.
"""

import bisect
import difflib
import json
import re
from collections import Counter
from pathlib import Path

from llm_fft.prompts import ANSWER_MARK, QUESTION_MARK
from llm_fft.text import normalize, same_question, states


class DatasetError(ValueError):
    """Bad input data; the message lists every problem with file and line."""


FORMATS = ("custom_tokens", "json", "jsonl", "separator")
DEFAULT_SEPARATOR = r" \| "
JSON_KEYS = ("question", "answer")  # exactly these: no optional keys, so a typo cannot hide a field
# In a file of evaluation questions (read_pairs(evaluation=True)) a JSON item may also carry "key":
# the short fact a right answer must state.
KEY = "key"
EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# What the separator writer puts between question and answer when the regex is a pattern
# (r"\s*\|\s*") rather than one fixed text: the first of these that the regex matches whole.
SEPARATOR_TEXTS = (" | ", "|", "\t")

# Any <|word|>: a misspelt marker, or a special token of some tokenizer (<|endoftext|>, <|im_start|>).
_MARKER_LIKE = re.compile(r"<\|[^<>|\s]{1,40}\|>")
# Control characters other than tab and line break, and lone surrogates (only JSON \ud800 makes them).
_BAD_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


# The start of a question that is a Markdown list item ("1. ", "2) ", "- ", "* ", "• "): a chat's
# numbered list pasted whole. Written '1\. ' when it belongs to the question.
_LIST_MARKER = re.compile(r"(\d{1,3}[.)]|[-*•])\s")
# Both sides of a header row that a chat or a spreadsheet puts above the pairs ("질문 | 답").
_HEADER_WORDS = frozenset({"질문", "답", "답변", "정답", "q", "a", "question", "answer", "questions", "answers"})


def separator_problem(separator):
    """None when `separator` can split question from answer; otherwise why not, in words."""
    if not isinstance(separator, str) or not separator:
        return f"the separator must be a non-empty regular expression, got {separator!r}"
    try:
        pattern = re.compile(separator)
    except re.error as e:
        return f"separator {separator!r} is not a valid regular expression: {e}"
    if pattern.search("") is not None:
        return f"separator {separator!r} matches an empty text, so it cannot split a line"
    if pattern.search("\\") is not None:
        return f"separator {separator!r} matches a backslash, which is the escape character"
    return None


# For llm_fft.params.problems_in_section: the dataset section of params.yaml.
DATASET_SPEC = {
    "format": (str, lambda v: v in ("auto",) + FORMATS, f"one of auto, {', '.join(FORMATS)}"),
    "separator": (str, lambda v: separator_problem(v) is None,
                  r"a regular expression that matches a non-empty text without a backslash, e.g. ' \| '"),
}


def excerpt(text, width=40):
    """A short one-line repr of text for error messages."""
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[:width] + "…")


# ---------------------------------------------------------------- reading

def read_pairs(raw: bytes, filename, fmt="auto", separator=DEFAULT_SEPARATOR,
               evaluation=False) -> tuple[list[dict], list[str]]:
    """Parse and validate a dataset file's bytes -> (pairs, warnings).

    pairs: [{"question", "answer", "where"}] in file order, where = "file:line" (json:
    "file:line ($[3])", the line where item [3] starts). warnings: one line per exact duplicate pair
    that was merged into its first occurrence. fmt is one of FORMATS or "auto" (detect_format).
    evaluation: a file of dev or held-out questions: a json/jsonl item may carry a "key" (the short
    fact a right answer must state; it must appear in the answer), which the pair then has, and a file
    with nothing but blank and '#' comment lines holds no pairs rather than being an error.
    Raises DatasetError listing every problem, one per line, in file order; ValueError for a bad
    fmt or separator argument.
    """
    filename = str(filename)
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")
    text = _decode(raw, filename)
    if evaluation and not content_lines(text):
        return [], []
    optional_keys = (KEY,) if evaluation else ()
    if fmt == "auto":
        fmt = detect_format(text, filename)
    if not text.strip():
        raise DatasetError(f"{filename}: empty file: no question/answer pairs")
    if fmt == "custom_tokens":
        candidates, problems = _parse_custom_tokens(text, filename)
    elif fmt == "json":
        candidates, problems = _parse_json(text, filename, optional_keys)
    elif fmt == "jsonl":
        candidates, problems = _parse_jsonl(text, filename, optional_keys)
    else:
        candidates, problems = _parse_separator(text, filename, _compile_separator(separator))
    pairs, warnings, more_problems = _check_and_merge(candidates)
    problems += more_problems
    if not pairs and not problems:
        problems.append((0, f"{filename}: no question/answer pairs in the file"))
    if problems:
        # sorted is stable: problems on one line keep the order they were found in
        raise DatasetError("\n".join(message for _, message in sorted(problems, key=lambda p: p[0])))
    return pairs, [message for _, message in warnings]


def read_questions(raw: bytes, filename, answered=None) -> list[dict]:
    """A file of questions only, one per line (the unknown-question probe's file: questions the data
    does not answer) -> [{"question", "where"}], where = "file:line". Blank lines and lines whose first
    non-blank character is '#' are skipped; a file of nothing else holds no questions. answered:
    {same_question(question): where the data asks it, in words (or a tuple (where, why it may not be here))}. A marker or marker-like text, a control
    character, the same question twice, or a question the data answers (compared by llm_fft.text.same_question) is an error naming
    the line; DatasetError lists every problem at once.
    """
    filename, answered = str(filename), answered or {}
    questions, problems, first = [], [], {}
    for line, content in enumerate(_decode(raw, filename).split("\n"), start=1):
        question, where = content.strip(), f"{filename}:{line}"
        if not question or question.startswith("#"):
            continue
        line_problems = _text_problems("question", question)
        if (earlier := first.get(same_question(question))) is not None:
            line_problems.append(f"question {excerpt(question)} is also at {earlier}: ask it once")
        elif (asked := answered.get(same_question(question))) is not None:
            where_asked, why = asked if isinstance(asked, tuple) else (asked, "the data answers it, so it is not unknown")
            line_problems.append(f"unknown question {excerpt(question)} is also {where_asked}: {why}")
        problems += [f"{where}: {p}" for p in line_problems]
        if not line_problems:
            first[same_question(question)] = where
            questions.append({"question": question, "where": where})
    if problems:
        raise DatasetError("\n".join(problems))
    return questions


def content_lines(text):
    """The lines of text that are neither blank nor '#' comments."""
    return [line for line in text.split("\n") if line.strip() and not line.lstrip().startswith("#")]


def detect_format(text: str, filename) -> str:
    """The format of a file from its extension (.json, .jsonl) and its content.

    Content: '[' first means json, '{' first jsonl, a <|question|> or <|answer|> marker
    custom_tokens, a '|' on a line that is not a comment separator. Raises DatasetError when the
    file is empty, when extension and content disagree, when it starts like JSON but is not valid
    JSON and every line has a '|' (broken JSON, or a separator file like "[공지] 질문 | 답"?), when
    it has a marker but every line has a '|' besides the markers and the first is no <|question|> (a
    separator file with a marker in a question?), or when nothing tells.
    """
    filename = str(filename)
    suffix = Path(filename).suffix.lower()
    by_name = EXTENSIONS.get(suffix)
    body = text.removeprefix("\ufeff").strip()
    if not body:
        raise DatasetError(f"{filename}: empty file: no question/answer pairs")
    if not content_lines(body):
        raise DatasetError(f"{filename}: no question/answer pairs: only '#' comment and blank lines")
    choices = f"name the format explicitly (one of {', '.join(FORMATS)})"
    by_content, evidence = _format_from_content(body, filename, choices)
    if by_name and by_content and by_name != by_content:
        raise DatasetError(f"{filename}: ambiguous format: the extension {suffix} says {by_name} but the "
                           f"content {evidence}, like {by_content}; rename the file or {choices}")
    if by_name or by_content:
        return by_name or by_content
    raise DatasetError(f"{filename}: cannot tell the format: the extension is not .json or .jsonl, and "
                       f"the content has no {QUESTION_MARK} marker, does not start with '[' or '{{' and "
                       f"has no '|'; {choices}: {excerpt(body)}")


def _format_from_content(body, filename, choices):
    """-> (format or None, the evidence in words) for a stripped, non-empty body."""
    lines = content_lines(body)
    if body[0] in "[{":
        fmt = "json" if body[0] == "[" else "jsonl"
        try:
            json.loads(body if fmt == "json" else lines[0])
        except json.JSONDecodeError as e:
            if all("|" in line for line in lines):
                # Guessing either way could turn broken JSON into pairs, or a separator file into errors.
                raise DatasetError(f"{filename}: ambiguous format: the content starts with {body[0]!r} like "
                                   f"{fmt} but is not valid JSON ({e.msg}), and every line has a '|' like "
                                   f"the separator format; {choices}") from None
        return fmt, f"starts with {body[0]!r}"
    if QUESTION_MARK in body or ANSWER_MARK in body:
        marked = [line.strip() for line in lines if QUESTION_MARK in line or ANSWER_MARK in line]
        unmarked = [line.replace(QUESTION_MARK, "").replace(ANSWER_MARK, "") for line in lines]
        if not lines[0].lstrip().startswith(QUESTION_MARK) and all("|" in line for line in unmarked):
            # A separator file with a marker inside a question: custom_tokens' errors would all be wrong.
            raise DatasetError(f"{filename}: ambiguous format: a {QUESTION_MARK}/{ANSWER_MARK} marker like custom_tokens "
                               f"({excerpt(marked[0])}), but every line has a '|' like the separator format and "
                               f"the first is no {QUESTION_MARK} (a marker inside a question?); {choices}")
        return "custom_tokens", f"has {QUESTION_MARK}/{ANSWER_MARK} markers"
    if any("|" in line for line in lines):
        return "separator", "has '|' separators"
    return None, None


def _decode(raw, filename):
    """UTF-8 text with the BOM dropped and every line break as LF; DatasetError naming the first bad byte."""
    if not isinstance(raw, (bytes, bytearray)):
        raise TypeError(f"read_pairs needs the file's bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = _newlines_to_lf(raw[:e.start].decode("utf-8")).count("\n") + 1
        utf16 = " (it starts with a UTF-16 byte-order mark)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise DatasetError(f"{filename}:{line}: not UTF-8 text{utf16}: byte 0x{raw[e.start]:02x} at offset "
                           f"{e.start} ({e.reason}), near {raw[max(0, e.start - 16):e.start + 16]!r}; "
                           f"save the file as UTF-8") from None
    return _newlines_to_lf(text.removeprefix("\ufeff"))


def _newlines_to_lf(text):
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _line_finder(text):
    """pos -> 1-based line number of text[pos]."""
    newlines = [m.start() for m in re.finditer("\n", text)]
    return lambda pos: bisect.bisect_left(newlines, pos) + 1


# Each parser returns (candidates, problems): candidates are (line, where, question, answer) with
# the values as written (checked and stripped later, the same way for every format); problems are
# (line, message), the line only for sorting.

def _parse_custom_tokens(text, filename):
    """Split on <|question|>, then each block on its one <|answer|> (the seed's parse, made strict)."""
    line_of = _line_finder(text)
    starts = [m.start() for m in re.finditer(re.escape(QUESTION_MARK), text)]
    candidates, problems = [], []
    head = text[:starts[0]] if starts else text
    stray = re.search(r"\S", head)
    if stray:
        answer_at = head.find(ANSWER_MARK)
        if answer_at >= 0:
            line = line_of(answer_at)
            problems.append((line, f"{filename}:{line}: {ANSWER_MARK} before the first {QUESTION_MARK}: "
                                   f"{excerpt(head[answer_at:])}"))
        else:
            line = line_of(stray.start())
            problems.append((line, f"{filename}:{line}: text before the first {QUESTION_MARK}"
                                   f"{_misspelt_hint(head, QUESTION_MARK)}: {excerpt(head)}"))
    for start, end in zip(starts, starts[1:] + [len(text)]):
        line = line_of(start)
        body_start = start + len(QUESTION_MARK)
        block = text[body_start:end]
        answers = [m.start() for m in re.finditer(re.escape(ANSWER_MARK), block)]
        if not answers:
            problems.append((line, f"{filename}:{line}: block has no {ANSWER_MARK}"
                                   f"{_misspelt_hint(block, ANSWER_MARK)}: {excerpt(block)}"))
        elif len(answers) > 1:
            second = line_of(body_start + answers[1])
            problems.append((second, f"{filename}:{second}: a second {ANSWER_MARK} in the block that starts "
                                     f"at line {line}: {excerpt(block)}"))
        else:
            question, answer = block.split(ANSWER_MARK)
            candidates.append((line, f"{filename}:{line}", question, answer))
    return candidates, problems


def _misspelt_hint(text, marker):
    near = _MARKER_LIKE.search(text)
    return f" (is {near[0]!r} a misspelt {marker}?)" if near else ""


def _parse_json(text, filename, optional_keys=()):
    try:
        data = json.loads(text, object_pairs_hook=_JsonObject.from_pairs)
    except json.JSONDecodeError as e:
        bad_line = text.split("\n")[e.lineno - 1]
        return [], [(e.lineno, f"{filename}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}: {excerpt(bad_line)}")]
    if not isinstance(data, list):
        return [], [(1, f"{filename}:1: expected a JSON array of {{\"question\": ..., \"answer\": ...}} "
                        f"objects, got {_json_type(data)}: {excerpt(text)}")]
    candidates, problems = [], []
    for index, (line, item) in enumerate(zip(_json_item_lines(text), data)):
        where = f"{filename}:{line} ($[{index}])"
        pair, item_problems = _pair_from_json(item, where, optional_keys)
        problems += [(line, p) for p in item_problems]
        if pair:
            candidates.append((line, where, *pair))
    return candidates, problems


def _json_item_lines(text):
    """The line where each item of the (valid) top-level JSON array starts."""
    decoder = json.JSONDecoder()
    pos = _JSON_SPACE.match(text).end() + 1  # after '['
    line, counted_to, lines = 1, 0, []
    while True:
        pos = _JSON_SPACE.match(text, pos).end()
        if text[pos] == "]":
            return lines
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        lines.append(line)
        _, pos = decoder.raw_decode(text, pos)
        pos = _JSON_SPACE.match(text, pos).end()
        if text[pos] == ",":  # else it is the closing ']'
            pos += 1


def _parse_jsonl(text, filename, optional_keys=()):
    candidates, problems = [], []
    for line, content in enumerate(text.split("\n"), 1):
        if not content.strip():
            continue
        where = f"{filename}:{line}"
        try:
            item = json.loads(content, object_pairs_hook=_JsonObject.from_pairs)
        except json.JSONDecodeError as e:
            problems.append((line, f"{where}:{e.colno}: invalid JSON: {e.msg}: {excerpt(content)}"))
            continue
        pair, item_problems = _pair_from_json(item, where, optional_keys)
        problems += [(line, p) for p in item_problems]
        if pair:
            candidates.append((line, where, *pair))
    return candidates, problems


class _JsonObject(dict):
    """A decoded JSON object that remembers keys written twice (json.loads keeps only the last)."""

    @classmethod
    def from_pairs(cls, pairs):
        obj = cls(pairs)
        obj.repeated = [key for key, n in Counter(key for key, _ in pairs).items() if n > 1]
        return obj


def _pair_from_json(item, where, optional_keys=()):
    """-> ((question, answer, {optional key: value}) or None, problems) for one decoded JSON item."""
    if not isinstance(item, dict):
        return None, [f"{where}: expected an object {{\"question\": ..., \"answer\": ...}}, got "
                      f"{_json_type(item)}: {excerpt(json.dumps(item, ensure_ascii=False))}"]
    shown = excerpt(json.dumps(item, ensure_ascii=False))
    problems = [f"{where}: key {key!r} appears twice: {shown}" for key in getattr(item, "repeated", [])]
    allowed = JSON_KEYS + tuple(optional_keys)
    for key in item:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(f"{where}: unknown key {key!r} ({hint}allowed: {', '.join(allowed)}): {shown}")
        elif key in optional_keys and not isinstance(item[key], str):
            problems.append(f"{where}: {key!r} must be a string, got {_json_type(item[key])}: "
                            f"{excerpt(json.dumps(item[key], ensure_ascii=False))}")
    for key in JSON_KEYS:
        if key not in item:
            problems.append(f"{where}: missing key {key!r}: {shown}")
        elif not isinstance(item[key], str):
            problems.append(f"{where}: {key!r} must be a string, got {_json_type(item[key])}: "
                            f"{excerpt(json.dumps(item[key], ensure_ascii=False))}")
    if problems:
        return None, problems
    return (item["question"], item["answer"], {k: item[k] for k in optional_keys if k in item}), []


def _json_type(value):
    for kind, name in ((dict, "an object"), (list, "an array"), (str, "a string"), (bool, "a boolean"),
                       ((int, float), "a number")):  # bool before int: True is an int in Python
        if isinstance(value, kind):
            return name
    return "null"


def _parse_separator(text, filename, pattern):
    candidates, problems = [], []
    for line, content in enumerate(text.split("\n"), 1):
        if not content.strip() or content.lstrip().startswith("#"):
            continue
        where = f"{filename}:{line}"
        escaped, escape_problem = _escaped_positions(content)
        if escape_problem:
            problems.append((line, f"{where}: {escape_problem}: {excerpt(content)}"))
            continue
        matches = _separator_matches(content, pattern, escaped)
        if not matches:
            bare_pipe = "|" in content.replace("\\|", "") and pattern.pattern != r"\|"
            hint = r" (the line has a bare '|': is the separator r'\|'?)" if bare_pipe else ""
            problems.append((line, f"{where}: no separator '{pattern.pattern}' in the line{hint}: "
                                   f"{excerpt(content)}"))
        elif len(matches) > 1:
            columns = ", ".join(str(m.start() + 1) for m in matches)
            problems.append((line, f"{where}: ambiguous: separator '{pattern.pattern}' matches "
                                   f"{len(matches)} times (columns {columns}); escape a literal one "
                                   f"with a backslash: {excerpt(content)}"))
        else:
            question, answer = content[:matches[0].start()], content[matches[0].end():]
            if marker := _LIST_MARKER.match(question.strip()):
                problems.append((line, f"{where}: the question starts with list numbering or a bullet "
                                       f"'{marker.group(1)}': delete it, or escape it "
                                       f"('1\\. ') if it belongs to the question: {excerpt(content)}"))
            elif _is_header_row(question, answer):
                problems.append((line, f"{where}: a header row, not a pair: delete the line or start it "
                                       f"with '#': {excerpt(content)}"))
            else:
                candidates.append((line, where, _unescape(question), _unescape(answer)))
    return candidates, problems


def _is_header_row(question, answer):
    return all(v.strip().rstrip(":").strip().casefold() in _HEADER_WORDS for v in (question, answer))


def _compile_separator(separator):
    problem = separator_problem(separator)
    if problem:
        raise ValueError(problem)
    return re.compile(separator)


def _escaped_positions(line):
    """-> (indices of escaping backslashes and escaped characters, problem or None)."""
    escaped, i = set(), 0
    while i < len(line):
        if line[i] != "\\":
            i += 1
            continue
        if i + 1 == len(line):
            return escaped, "a backslash at the end of the line (write \\\\ for a backslash)"
        following = line[i + 1]
        if following.isalnum() and following != "n":
            return escaped, (f"unknown escape '\\{following}' at column {i + 1} "
                             f"(write \\\\ for a backslash, \\n for a line break)")
        escaped.update((i, i + 1))
        i += 2
    return escaped, None


def _separator_matches(line, pattern, escaped):
    """Left-to-right, non-overlapping separator matches that cover no escaped position."""
    matches, pos = [], 0
    while (match := pattern.search(line, pos)) is not None:
        if match.end() == match.start():
            raise ValueError(f"separator '{pattern.pattern}' matched an empty text in {excerpt(line)}")
        if escaped.intersection(range(match.start(), match.end())):
            pos = match.start() + 1  # a valid match may still start inside this one
        else:
            matches.append(match)
            pos = match.end()
    return matches


def _unescape(text):
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], text)


def _clean(value):
    return _newlines_to_lf(value).strip()


def _value_problems(question, answer):
    """What is wrong with one (already stripped) pair, the same checks for every format."""
    problems = []
    if not question:
        problems.append(f"empty question (answer {excerpt(answer)})" if answer else "empty question and answer")
    elif not answer:
        problems.append(f"empty answer to {excerpt(question)}")
    for name, value in (("question", question), ("answer", answer)):
        problems += _text_problems(name, value)
    return problems


def _text_problems(name, value):
    """What is wrong with one value (a question or an answer) whatever the file it is in."""
    problems = []
    marker = _MARKER_LIKE.search(value)
    if marker and marker[0] in (QUESTION_MARK, ANSWER_MARK):
        problems.append(f"marker {marker[0]} inside the {name}: {excerpt(value)}")
    elif marker:
        problems.append(f"marker-like text {marker[0]!r} inside the {name} (a misspelt marker? "
                        f"special-token text is not allowed in pairs): {excerpt(value)}")
    bad = _BAD_CHARACTER.search(value)
    if bad:
        problems.append(f"control character U+{ord(bad[0]):04X} inside the {name}: {excerpt(value)}")
    # A chat's reply pasted whole: its ``` fence lines would silently join a multi-line value.
    if any(line.strip().startswith("```") for line in value.split("\n")):
        problems.append(f"a Markdown code fence (```) inside the {name}: delete the lines the chat "
                        f"added around the dataset: {excerpt(value)}")
    return problems


def _check_and_merge(candidates):
    """Strip and check every candidate, merge exact duplicates, refuse conflicting answers.

    -> (pairs, warnings, problems), warnings and problems as (line, message). Questions and
    answers are compared by llm_fft.text.same_question and normalize.
    """
    pairs, warnings, problems, first = [], [], [], {}
    for line, where, question, answer, *optional in candidates:
        question, answer = _clean(question), _clean(answer)
        extra = {k: _clean(v) for k, v in (optional[0] if optional else {}).items()}
        value_problems = _value_problems(question, answer)
        if KEY in extra and not (extra[KEY] and states(answer, extra[KEY])):
            value_problems.append(f"key {excerpt(extra[KEY])} does not appear in the answer {excerpt(answer)}"
                                  if extra[KEY] else f"empty key for {excerpt(question)}")
        if value_problems:
            problems += [(line, f"{where}: {p}") for p in value_problems]
            continue
        earlier = first.get(same_question(question))
        if earlier is None:
            first[same_question(question)] = pair = {"question": question, "answer": answer, **extra, "where": where}
            pairs.append(pair)
        elif normalize(answer) == normalize(earlier["answer"]):
            warnings.append((line, f"{where}: duplicate of the pair at {earlier['where']}, kept once: "
                                   f"{excerpt(question)}"))
        else:
            problems.append((line, f"{where}: question {excerpt(question)} is also at {earlier['where']} "
                                   f"with another answer: {excerpt(earlier['answer'])} there, "
                                   f"{excerpt(answer)} here"))
    return pairs, warnings, problems


# ---------------------------------------------------------------- writing

def write_pairs(pairs, fmt, separator=DEFAULT_SEPARATOR) -> str:
    """The text of a dataset file in format fmt that read_pairs reads back to the same pairs.

    pairs: (question, answer) tuples, or dicts with "question" and "answer" (other keys, such as
    "where", are ignored). Values are stripped, then checked as read_pairs checks a file; a pair
    that read_pairs would refuse or merge (empty, markers, duplicate, conflict) raises DatasetError
    naming it as pairs[i]. ValueError for a bad fmt, or a separator the writer cannot use.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r}: expected one of {', '.join(FORMATS)}")
    pairs = _pairs_to_write(pairs)
    if fmt == "custom_tokens":
        return "".join(f"{QUESTION_MARK}\n{q}\n{ANSWER_MARK}\n{a}\n\n" for q, a in pairs)
    objects = [{"question": q, "answer": a} for q, a in pairs]
    if fmt == "json":
        return json.dumps(objects, ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects)
    pattern = _compile_separator(separator)
    joint = _separator_text(pattern)
    return "".join(_separator_line(q, a, pattern, joint) + "\n" for q, a in pairs)


def _pairs_to_write(pairs):
    candidates, problems = [], []
    for i, pair in enumerate(pairs):
        where = f"pairs[{i}]"
        if isinstance(pair, dict):
            values = (pair.get("question"), pair.get("answer"))
        elif isinstance(pair, (tuple, list)) and len(pair) == 2:
            values = tuple(pair)
        else:
            problems.append((i, f"{where}: expected (question, answer) or a dict with both, got {pair!r}"))
            continue
        if not all(isinstance(v, str) for v in values):
            problems.append((i, f"{where}: question and answer must be strings, got {values!r}"))
            continue
        candidates.append((i, where, *values))
    pairs_out, duplicates, more_problems = _check_and_merge(candidates)
    problems += more_problems + [(i, f"{message} (the reader would merge it)") for i, message in duplicates]
    if problems:
        raise DatasetError("\n".join(message for _, message in sorted(problems, key=lambda p: p[0])))
    return [(p["question"], p["answer"]) for p in pairs_out]


def _separator_text(pattern):
    """The fixed text to write between question and answer: the regex read literally if it matches it."""
    literal = re.sub(r"\\(\W)", r"\1", pattern.pattern.replace(r"\t", "\t"))
    for text in (literal, *SEPARATOR_TEXTS):
        if pattern.fullmatch(text):
            return text
    raise ValueError(f"cannot write with separator '{pattern.pattern}': it is not one fixed text and "
                     f"matches none of {SEPARATOR_TEXTS!r}; use a separator like r' \\| '")


def _separator_line(question, answer, pattern, joint):
    """question + joint + answer, escaped so the separator matches exactly once, at the joint."""
    if _is_header_row(question, answer):
        raise ValueError(f"the pair ({question!r}, {answer!r}) reads as a header row in the separator "
                         "format; write it in another format")
    fields = [question.replace("\\", "\\\\").replace("\n", "\\n"),
              answer.replace("\\", "\\\\").replace("\n", "\\n")]
    if fields[0].startswith("#"):
        fields[0] = "\\" + fields[0]  # else the line reads as a comment
    if marker := _LIST_MARKER.match(fields[0]):  # else it reads as a pasted list's numbering
        fields[0] = fields[0][:marker.end(1) - 1] + "\\" + fields[0][marker.end(1) - 1:]
    while True:
        line = fields[0] + joint + fields[1]
        joint_span = (len(fields[0]), len(fields[0]) + len(joint))
        escaped, _ = _escaped_positions(line)
        matches = [m.span() for m in _separator_matches(line, pattern, escaped)]
        stray = [span for span in matches if span != joint_span]
        if not stray:
            break
        position = _escapable_position(line, stray[0], joint_span, escaped)
        if position is None:
            raise ValueError(f"cannot write {excerpt(line)} with separator '{pattern.pattern}': it matches "
                             f"letters or digits inside a value, which cannot be escaped")
        field = 0 if position < joint_span[0] else 1
        offset = position if field == 0 else position - joint_span[1]
        fields[field] = fields[field][:offset] + "\\" + fields[field][offset:]
    if matches != [joint_span]:  # only a regex that looks around could get here
        raise ValueError(f"cannot write {excerpt(line)} with separator '{pattern.pattern}': after "
                         f"escaping it no longer matches between question and answer")
    return line


def _escapable_position(line, span, joint_span, escaped):
    """A position inside span, in a value, to escape: punctuation first, then whitespace."""
    inside = [i for i in range(*span)
              if not joint_span[0] <= i < joint_span[1] and i not in escaped and not line[i].isalnum()]
    punctuation = [i for i in inside if not line[i].isspace()]
    return (punctuation or inside or [None])[0]
