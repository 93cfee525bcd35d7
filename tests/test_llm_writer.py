"""The llm backend of generate_dataset: parsing and rejection with scripted replies, then the two
transports for real on the embedded model (in process, and over HTTP through a server on 127.0.0.1)."""

import json

import pytest
import torch

from llm_fft.formats import write_pairs
from llm_fft.llm_writer import (
    ANSWER_REJECT_REASONS,
    PARAPHRASE_REJECT_REASONS,
    REJECT_REASONS,
    HttpChat,
    LocalChat,
    Reply,
    TransportError,
    about_source,
    build_messages,
    write_answer_variants,
    write_pairs_with_llm,
    write_paraphrases,
)
from tests.openai_stub_server import ChatCompletionsServer

LIGHTHOUSE = "The lighthouse on Star Island is 27 metres tall."
PEOPLE = "Star Island has 312 inhabitants."
PLANTED_KEY = "sk-test-PLANTED-123"
KEY_ENV = "LLM_FFT_TEST_API_KEY"


class ScriptedAsk:
    """A transport that returns the given replies in order and records what it was asked."""
    transport = "scripted"
    model_name = "script"

    def __init__(self, replies):
        self.replies, self.calls = list(replies), []

    def __call__(self, messages, seed):
        self.calls.append((messages[-1]["content"], seed))
        return self.replies.pop(0)


def qa(question, answer):
    return f"<|question|>\n{question}\n<|answer|>\n{answer}\n"


def counts(**nonzero):
    return {reason: nonzero.get(reason, 0) for reason in REJECT_REASONS}


# --- parsing, rejection and retries, with scripted replies ------------------------------------

def test_every_candidate_is_accepted_or_rejected_with_its_reason():
    ask = ScriptedAsk([
        # fact 1, request 1: one good pair and four bad blocks
        Reply("Sure, here you go.\n"                                        # not_in_format
              + qa("How tall is the lighthouse?", "It is 27 metres tall.")  # accepted
              + "<|question|>\nWho keeps it?\n"                             # no_answer
              + qa("", "It is tall.")                                       # empty
              + qa(" how  tall is the Lighthouse? ", "The lighthouse is 27 metres tall."),  # duplicate
              False),
        # fact 1, request 2: fact 1 still wants one pair
        Reply(qa(LIGHTHOUSE, LIGHTHOUSE)                                       # not_a_question
              + qa("When did the post office open?", "It opened in 1950.")    # not_about_fact (the example)
              + qa("How tall is it in feet?", "The lighthouse is 88 feet tall.")  # not_about_fact (88)
              + qa("What is on Star Island?", "A lighthouse<|im_end|>")       # not_in_format
              + "<|question|>\nIs it tall?\n<|answer|>\nYes.\n<|answer|>\nNo.\n"  # not_in_format
              + qa("Where is the lighthouse?", "On Star Island.")             # accepted: fact 1 done
              + qa("What colour is it?", "The lighthouse is white."),         # beyond_requested
              False),
        # fact 2: three requests, the most allowed
        Reply("", False),                                                     # empty
        Reply("I do not know.", False),                                       # not_in_format
        Reply(qa("How many people live on Star Island?", "312 people.")       # accepted
              + qa("How many inhabitants does Star Island have?", "312.")     # held_out
              + qa("What has 312 inhabitants?", "Star Island\x07.")           # not_in_format (control char)
              + "<|question|>\nWho lives on Star", True),                     # cut_off
    ])
    logged = []
    pairs, report = write_pairs_with_llm([LIGHTHOUSE, PEOPLE], 2, ask, seed=123, max_attempts=3,
                                         held_out=["How many  inhabitants does Star Island have?"],
                                         log=logged.append)

    assert pairs == [("How tall is the lighthouse?", "It is 27 metres tall."),
                     ("Where is the lighthouse?", "On Star Island."),
                     ("How many people live on Star Island?", "312 people.")]
    assert report == {
        "backend": "llm", "transport": "scripted", "model": "script", "source": "facts",
        "sources": 2, "pairs_per_source": 2, "requested": 4, "accepted": 3,
        "rejected": counts(not_in_format=5, empty=2, no_answer=1, duplicate=1, not_a_question=1,
                           not_about_fact=2, beyond_requested=1, cut_off=1, held_out=1),
        "candidates": 18, "attempts": 5, "sources_short": 1,
    }
    assert report["accepted"] + sum(report["rejected"].values()) == report["candidates"]
    # Request k about a fact is seeded seed + k; fact 1 stopped once it had its two pairs.
    assert [seed for _, seed in ask.calls] == [123, 124, 123, 124, 125]
    assert [content.splitlines()[0] for content, _ in ask.calls] == (
        [f"Fact: {LIGHTHOUSE}"] * 2 + [f"Fact: {PEOPLE}"] * 3)
    assert ("fact 2/2: 1/2 pairs accepted in 3 request(s) "
            "(rejected: empty, not_in_format, held_out, not_in_format, cut_off)") in logged
    assert sum(line.startswith("  rejected (") for line in logged) == 15
    assert "  accepted: question 'Where is the lighthouse?', answer 'On Star Island.'" in logged
    # Every accepted pair is one the dataset writer takes.
    assert write_pairs(pairs, "custom_tokens").count("<|question|>") == 3


def test_retries_stop_at_max_attempts():
    ask = ScriptedAsk([Reply("no pairs here", False)] * 6)
    pairs, report = write_pairs_with_llm([LIGHTHOUSE, PEOPLE], 1, ask, seed=0, max_attempts=3,
                                         log=lambda line: None)
    assert pairs == []
    assert len(ask.calls) == 6 and report["attempts"] == 6
    assert report["rejected"] == counts(not_in_format=6)
    assert report["sources_short"] == 2


def test_topic_mode_asks_once_for_all_pairs_in_the_topics_language():
    ask = ScriptedAsk([Reply(qa("별무리섬의 인구는 몇 명인가요?", "312명입니다.")
                             + qa("2 더하기 2는?", "4입니다.")               # not about the topic
                             + qa("별무리섬은 어디에 있나요?", "제주도 남쪽에 있습니다."), False)])
    pairs, report = write_pairs_with_llm("별무리섬", 2, ask, seed=7, max_attempts=2, log=lambda line: None)
    assert pairs == [("별무리섬의 인구는 몇 명인가요?", "312명입니다."),
                     ("별무리섬은 어디에 있나요?", "제주도 남쪽에 있습니다.")]
    assert (report["source"], report["requested"], report["attempts"]) == ("topic", 2, 1)
    assert report["rejected"] == counts(not_about_fact=1)
    messages = build_messages("별무리섬", 2, is_topic=True)
    assert messages[-1]["content"] == "Topic: 별무리섬\nWrite 2 pairs."
    assert "한빛마을" in messages[2]["content"]  # the Korean worked example, as the assistant's turn


def test_bad_arguments_are_reported_together():
    with pytest.raises(ValueError) as error:
        write_pairs_with_llm([], 0, ScriptedAsk([]), seed=0, max_attempts=0)
    message = str(error.value)
    assert "facts must be" in message and "n_pairs must be" in message and "max_attempts must be" in message


@pytest.mark.parametrize("answer, fact, expected", [
    ("312명입니다.", "별무리섬에는 모두 312명이 살고 있습니다.", True),        # number and stem shared
    ("별무리섬의 인구입니다.", "별무리섬에는 모두 312명이 살고 있습니다.", True),  # 별무리섬의 ~ 별무리섬에는
    ("한빛마을의 우체국은 1950년에 문을 열었습니다.", "가장 높은 산은 해오름봉입니다.", False),  # the example
    ("윤가람입니다.", "가장 높은 산은 해오름봉입니다.", False),              # another fact's name
    ("There are 312 people on Star Island.", PEOPLE, True),
    ("The island has 120 people.", PEOPLE, False),                         # 120 is invented
    ("It is not.", LIGHTHOUSE, False),                                      # only short words
    ("The schools are small.", "The island's school is called Mulgyeol.", True),  # school ~ schools
])
def test_about_source(answer, fact, expected):
    assert about_source("q", answer, fact, is_topic=False) is expected


# --- HTTP errors, against a stub server (no model) -------------------------------------------

def test_http_connection_refused_is_a_clear_error():
    with ChatCompletionsServer(canned=(200, b"{}")) as server:
        base_url = server.base_url
    # The server is closed now: nothing listens on its port.
    ask = HttpChat(base_url, "m", None, timeout=5, max_new_tokens=8, temperature=0.0)
    with pytest.raises(TransportError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1/chat/completions"):
        ask([{"role": "user", "content": "hi"}], 0)


def test_http_error_names_the_status_and_never_the_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    echo = json.dumps({"error": f"bad key: Bearer {PLANTED_KEY}"}).encode()  # a server echoing the key
    with ChatCompletionsServer(canned=(401, echo)) as server:
        ask = HttpChat(server.base_url, "m", KEY_ENV, timeout=5, max_new_tokens=8, temperature=0.0)
        with pytest.raises(TransportError) as error:
            ask([{"role": "user", "content": "hi"}], 0)
    assert "answered HTTP 401" in str(error.value) and "bad key: Bearer ***" in str(error.value)
    assert PLANTED_KEY not in str(error.value)


def test_http_missing_key_and_bad_json_are_explained(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ChatCompletionsServer(canned=(401, b"{}")) as server:
        ask = HttpChat(server.base_url, "m", KEY_ENV, timeout=5, max_new_tokens=8, temperature=0.0)
        missing = f"no API key was sent: environment variable {KEY_ENV} is not set"
        with pytest.raises(TransportError, match=missing):
            ask([{"role": "user", "content": "hi"}], 0)
        assert "Authorization" not in server.requests[0][0]
    with ChatCompletionsServer(canned=(200, b"<html>not json</html>")) as server:
        ask = HttpChat(server.base_url, "m", None, timeout=5, max_new_tokens=8, temperature=0.0)
        with pytest.raises(TransportError, match="did not answer with an OpenAI chat completion"):
            ask([{"role": "user", "content": "hi"}], 0)


# --- the embedded model, for real ------------------------------------------------------------
# Two English facts: SmolLM2-135M knows no Korean (see the report for its yield on Korean facts).
FACTS = [PEOPLE, LIGHTHOUSE]
SEED, TEMPERATURE, MAX_NEW_TOKENS, MAX_ATTEMPTS = 123, 0.7, 48, 2


@pytest.fixture(scope="module")
def one_thread():
    """Generate on one CPU thread: on a busy shared 2-core machine it was 4x faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_run(one_thread, embedded_model, embedded_tokenizer):
    ask = LocalChat(embedded_model, embedded_tokenizer, "embedded", MAX_NEW_TOKENS, TEMPERATURE)
    return write_pairs_with_llm(FACTS, 1, ask, SEED, MAX_ATTEMPTS)


@pytest.mark.slow
def test_local_transport_writes_pairs_with_the_embedded_model(local_run, embedded_model, embedded_tokenizer):
    pairs, report = local_run
    assert len(pairs) >= 1
    assert report["accepted"] == len(pairs)
    assert report["accepted"] + sum(report["rejected"].values()) == report["candidates"]
    assert (report["transport"], report["model"]) == ("local", "embedded")
    assert len(FACTS) <= report["attempts"] <= len(FACTS) * MAX_ATTEMPTS
    # Same seed and model: the same pairs, though sampled at temperature 0.7.
    ask = LocalChat(embedded_model, embedded_tokenizer, "embedded", MAX_NEW_TOKENS, TEMPERATURE)
    assert write_pairs_with_llm(FACTS, 1, ask, SEED, MAX_ATTEMPTS) == local_run


@pytest.mark.slow
def test_http_transport_serves_the_same_pairs_and_never_leaks_the_key(
        local_run, embedded_model, embedded_tokenizer, monkeypatch, capfd, tmp_path):
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)

    def chat(body):  # the server answers with the embedded model, with the request's settings
        ask = LocalChat(embedded_model, embedded_tokenizer, "embedded",
                        body["max_tokens"], body["temperature"])
        return ask(body["messages"], body["seed"])

    with ChatCompletionsServer(chat, model_name="embedded") as server:
        ask = HttpChat(server.base_url, "embedded", KEY_ENV, timeout=120,
                       max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE)
        pairs, report = write_pairs_with_llm(FACTS, 1, ask, SEED, MAX_ATTEMPTS)

    headers, body = server.requests[0]
    assert headers["Authorization"] == f"Bearer {PLANTED_KEY}"
    assert (body["model"], body["seed"], body["temperature"], body["max_tokens"]) == (
        "embedded", SEED, TEMPERATURE, MAX_NEW_TOKENS)
    assert len(server.requests) == report["attempts"]
    # Over HTTP the server ran the same model with the same seed: the same pairs as in process.
    assert pairs == local_run[0]
    assert report == {**local_run[1], "transport": "http"}

    # Write what the stage writes, then look for the key everywhere the run left a trace.
    (tmp_path / "dataset.txt").write_text(write_pairs(pairs, "custom_tokens"), encoding="utf-8")
    (tmp_path / "dataset.json").write_text(json.dumps(report), encoding="utf-8")
    captured = capfd.readouterr()
    traces = [p.read_text(encoding="utf-8") for p in tmp_path.iterdir()]
    traces += [captured.out, captured.err, repr(vars(ask))]
    assert "fact 1/2" in captured.out and "POST /v1/chat/completions" in captured.err  # logs were captured
    assert not [t for t in traces if PLANTED_KEY in t]


def test_every_paraphrase_is_accepted_or_rejected_with_its_reason():
    pairs = [{"question": "How tall is the lighthouse on Star Island?", "answer": LIGHTHOUSE},
             {"question": "How many people live on Star Island?", "answer": PEOPLE}]
    ask = ScriptedAsk([
        Reply("What is the height of the Star", True),                       # cut_off
        Reply("   ", False),                                                 # empty
        Reply("How tall?\nHow tall is it?", False),                          # not_in_format
        Reply("The lighthouse is tall.", False),                             # not_a_question
        Reply("What colour is the sky?", False),                             # not_about_pair
        Reply("How many people live on Star Island?", False),                # taken (pair 2's question)
        Reply("What is the height of the Star Island lighthouse?", False),   # accepted: pair 1 is done
        Reply("what is the height of  the star island lighthouse?", False),  # duplicate (case, spacing)
        Reply("What is the population of Star Island?", False),              # accepted
    ])
    written, report = write_paraphrases(pairs, 1, ask, seed=7, max_attempts=8, taken=[p["question"] for p in pairs],
                                        log=lambda line: None)
    assert written == [{"question": "What is the height of the Star Island lighthouse?", "answer": LIGHTHOUSE},
                       {"question": "What is the population of Star Island?", "answer": PEOPLE}]
    assert report["rejected"] == {"cut_off": 1, "empty": 1, "not_in_format": 1, "not_a_question": 1,
                                  "not_about_pair": 1, "taken": 1, "duplicate": 1}
    assert tuple(report["rejected"]) == PARAPHRASE_REJECT_REASONS
    assert (report["requested"], report["accepted"], report["attempts"]) == (2, 2, 9)
    assert [seed for _, seed in ask.calls] == [7, 8, 9, 10, 11, 12, 13, 7, 8]  # request k of a pair: seed + k
    assert ask.calls[0][0] == f"Question: {pairs[0]['question']}\nAnswer: {LIGHTHOUSE}"


def test_every_answer_wording_is_accepted_or_rejected_with_its_reason():
    """Without a key the wording keeps the answer's numbers and most of its words; with one (from a dev
    or held-out pair of the same answer) it states the key."""
    pairs = [{"question": "How tall is the lighthouse on Star Island?", "answer": LIGHTHOUSE},
             {"question": "How many people live on Star Island?", "answer": PEOPLE}]
    asked = [{"question": "What is the island's population?", "answer": PEOPLE, "key": "312"}]
    ask = ScriptedAsk([
        Reply("The lighthouse on Star Island is", True),                     # cut_off
        Reply("", False),                                                    # empty
        Reply("It is tall.\nVery tall.", False),                             # not_in_format
        Reply("Is the lighthouse 27 metres tall?", False),                   # a_question
        Reply("The lighthouse on Star Island is 28 metres tall.", False),    # loses_the_fact: 27 is gone
        Reply("It stands tall.", False),                                     # loses_the_fact: most words gone
        Reply("the lighthouse on star island is 27 metres  tall", False),    # same_answer (case, spacing, .)
        Reply("Star Island's lighthouse stands 27 metres tall.", False),     # accepted: pair 1 is done
        Reply("Star Island is home to many people.", False),                 # loses_the_fact: no key 312
        Reply("312 people live on Star Island.", False),                     # accepted
    ])
    written, report = write_answer_variants(pairs, 1, ask, seed=7, max_attempts=8, asked=asked, log=lambda line: None)
    assert written == {LIGHTHOUSE: ["Star Island's lighthouse stands 27 metres tall."],
                       PEOPLE: ["312 people live on Star Island."]}
    assert report["rejected"] == {"cut_off": 1, "empty": 1, "not_in_format": 1, "a_question": 1,
                                  "loses_the_fact": 3, "same_answer": 1}
    assert tuple(report["rejected"]) == ANSWER_REJECT_REASONS
    assert (report["requested"], report["accepted"], report["attempts"]) == (2, 2, 10)
    assert ask.calls[0][0] == f"Question: {pairs[0]['question']}\nAnswer: {LIGHTHOUSE}"


def test_answer_wordings_are_asked_once_per_answer_and_never_for_one_with_nothing_to_check():
    """Two questions with one answer share one request; "Yes." (no key, number or content word) is
    never sent, since any reply would pass for it; a wording that adds a number, or states the key in
    other capitals than the evaluation accepts, loses the fact."""
    school = "The school is on Moon Hill."
    pairs = [{"question": "How tall is the lighthouse?", "answer": LIGHTHOUSE},
             {"question": "What height is the lighthouse?", "answer": LIGHTHOUSE},
             {"question": "Is the lighthouse open to visitors?", "answer": "Yes."},
             {"question": "Where is the school?", "answer": school}]
    asked = [{"question": "Where would I find the school?", "answer": school, "key": "Moon Hill"}]
    ask = ScriptedAsk([
        Reply("Built in 1890, the lighthouse on Star Island is 27 metres tall.", False),  # loses_the_fact: 1890
        Reply("Star Island's lighthouse is 27 metres tall.", False),                      # accepted
        Reply("The school stands on moon hill.", False),                                  # loses_the_fact: capitals
        Reply("You will find the school on Moon Hill.", False),                           # accepted
    ])
    written, report = write_answer_variants(pairs, 1, ask, seed=7, max_attempts=3, asked=asked, log=lambda line: None)
    assert written == {LIGHTHOUSE: ["Star Island's lighthouse is 27 metres tall."],
                       school: ["You will find the school on Moon Hill."]}
    assert [content for content, _ in ask.calls] == [f"Question: How tall is the lighthouse?\nAnswer: {LIGHTHOUSE}"] * 2 \
        + [f"Question: Where is the school?\nAnswer: {school}"] * 2
    assert {k: v for k, v in report["rejected"].items() if v} == {"loses_the_fact": 2}
    assert (report["requested"], report["accepted"], report["attempts"], report["skipped_nothing_to_check"]) \
        == (2, 2, 4, 1)
