"""Stage generate_dataset: write data/dataset.txt, the held-out questions and a generation report.

    python -m stages.generate_dataset

Reads generate_dataset.*, dataset.* and seed in params.yaml. Backends:
  template  every training phrasing of every fact in the facts file (data/facts.yaml), offline and
            deterministic;
  file      your own dataset file (generate_dataset.file, any format of the README), validated and
            copied byte for byte, never rewritten;
  llm       a language model writes pairs about each fact's answer sentence, or about
            generate_dataset.llm_topic: a local transformers model (the embedded SmolLM2 by default)
            or an OpenAI-compatible /chat/completions server (vLLM, Ollama, llama.cpp, hosted APIs)
            whose API key is read from the environment variable named by llm_api_key_env, never
            from params. Every reply block is accepted or rejected with a reason (llm_fft/llm_writer.py).
The template backend takes the first questions_per_fact phrasings of each fact, pairs them in turn
with the fact's answer and its answer variants (answer_variants), and writes the facts' plain-text
statements (statements) for finetune to learn beside the pairs.
Writes data/dataset.txt, data/statements.jsonl, data/dev.jsonl and data/heldout.jsonl (the dev and
held-out questions with their answer and key fact, never trained on: dev chooses settings, held-out
only reports), data/unknown.jsonl (questions the data does not answer: does the model invent an
answer?), data/answer_variants.jsonl (the answers trained for each fact that has several: the
evaluations accept any of them word for word) and metrics/dataset.json (pairs requested, accepted,
rejected by reason; `coverage`: phrasings, answer sentences, statements, dev and held-out questions per
fact, with a warning, printed too, where the data is too thin to generalise: llm_fft.coverage).
Dev and held-out questions come from the data the model is taught: with the template and llm
backends the facts file's dev and held_out phrasings, with the file backend your own files
generate_dataset.dev_file and heldout_file (any dataset format; a json/jsonl item may give a "key").
A file of yours with no pairs gives no such questions; none is ever taken from another source.
With the file backend a language model (the llm_* settings) can also write held-out questions:
generate_dataset.heldout_paraphrases other phrasings of each training question, each with that
pair's answer, checked (llm_fft.llm_writer.judge_paraphrase: never a question already in the data)
and counted accepted/rejected in metrics/dataset.json.
Levers for a file of your own: generate_dataset.train_paraphrases asks the same language model for N other
phrasings of each training question, checked like the held-out ones and trained with its answer;
train_answer_variants asks it for N other wordings of each answer (each must keep the fact), given to the
pair's phrasings in turn; and
with no model (llm_fft.augment) generate_dataset.rewordings adds up to N
rule-based rewordings of each question's ending (…인가요? → …이에요? / …인지 알려 주세요.; What is X? → Tell
me what X is.), each checked against every training, dev, held-out and unknown question, and the file is
then written again with them (in dataset.format); statements_from_answers trains each answer as a
plain-text statement too.
The unknown questions likewise: the facts file's `unknown`, `unknown_dev` and `unknown_train` lists,
or with the file backend only generate_dataset.unknown_file, unknown_dev_file and unknown_train_file
(one question per line), never both. `unknown` goes to data/unknown.jsonl (both evaluations ask it),
`unknown_dev` to data/unknown_dev.jsonl (chooses the confidence gate), and the first refusal_ratio x
pairs of `unknown_train` to data/refusals.jsonl, each answered with the refusal (params `refusal`),
which parse_qa adds to the trained records (R-Tuning: the model learns to say it does not know).
"""

import hashlib
import json
import math
import sys
from pathlib import Path

import torch

from llm_fft import augment, coverage
from llm_fft.facts import load_facts, load_unknown
from llm_fft.files import to_jsonl, write_atomically
from llm_fft.formats import DATASET_SPEC, EXTENSIONS, DatasetError, read_pairs, read_questions, write_pairs
from llm_fft.llm_writer import (
    HttpChat,
    LocalChat,
    TransportError,
    write_answer_variants,
    write_pairs_with_llm,
    write_paraphrases,
)
from llm_fft.model import ModelNotFound, load_base, prepare_tokenizer
from llm_fft.params import (
    ParamsError,
    fail_if_problems,
    load_params,
    problems_in_section,
    seed_everything,
    shared_problems,
)
from llm_fft.paths import (
    ANSWER_VARIANTS,
    DATASET_METRICS,
    DEV_QUESTIONS,
    HELDOUT_QUESTIONS,
    REFUSALS,
    STATEMENTS,
    TRAINED_DATASET,
    UNKNOWN_DEV_QUESTIONS,
    UNKNOWN_QUESTIONS,
)
from llm_fft.text import same_question

BACKENDS = ("template", "file", "llm")
SPEC = {
    "backend": (str, lambda v: v in BACKENDS, f"one of {', '.join(BACKENDS)}"),
    "facts": (str, lambda v: Path(v).is_file(), "path of an existing facts YAML file"),
    "file": (str, lambda v: Path(v).is_file(), "path of an existing dataset file"),
    "dev_file": (str, lambda v: Path(v).is_file(), "path of an existing file of dev pairs (it may hold none)"),
    "heldout_file": (str, lambda v: Path(v).is_file(), "path of an existing file of held-out pairs (it may hold none)"),
    "unknown_file": (str, lambda v: Path(v).is_file(), "path of an existing file of unknown questions (it may hold none)"),
    "llm_transport": (str, lambda v: v in ("local", "http"), "local or http"),
    "llm_model": (str, bool, "local: 'embedded', a hub id or a folder; http: the served model's name"),
    "llm_base_url": (str, lambda v: v.startswith(("http://", "https://")), "an http:// or https:// URL"),
    "llm_api_key_env": (str, None, "the NAME of an environment variable ('' = send no key)"),
    "llm_timeout_s": ((int, float), lambda v: v > 0, "seconds > 0"),
    "llm_pairs_per_fact": (int, lambda v: v >= 1, "an integer >= 1"),
    "llm_max_attempts": (int, lambda v: v >= 1, "an integer >= 1"),
    "llm_temperature": ((int, float), lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
    "llm_max_new_tokens": (int, lambda v: v >= 8, "an integer >= 8 (tokens)"),
    "llm_topic": (str, None, "'' (pairs about each fact) or a topic"),
    "questions_per_fact": (int, lambda v: v >= 0, "an integer >= 0 (0 = every phrasing)"),
    "answer_variants": (bool, None, "true or false"),
    "statements": (bool, None, "true or false"),
    "heldout_paraphrases": (int, lambda v: v >= 0, "an integer >= 0 (paraphrases per training pair; 0 = none)"),
    "train_paraphrases": (int, lambda v: v >= 0, "an integer >= 0 (paraphrases per training pair; 0 = none)"),
    "train_answer_variants": (int, lambda v: v >= 0, "an integer >= 0 (answer wordings per training pair; 0 = none)"),
    "unknown_dev_file": (str, lambda v: Path(v).is_file(), "path of an existing file of dev unknown questions (it may hold none)"),
    "unknown_train_file": (str, lambda v: Path(v).is_file(),
                           "path of an existing file of training unknown questions (it may hold none)"),
    "refusal_ratio": ((int, float), lambda v: 0 <= v <= 1,
                      "a number in [0, 1] (refusal pairs per question/answer pair; 0 = none)"),
    "rewordings": (int, lambda v: 0 <= v <= 4, "an integer from 0 to 4 (rule-based rewordings per pair; 0 = none)"),
    "statements_from_answers": (bool, None, "true or false"),
}
FILE_ONLY = ("heldout_paraphrases", "train_paraphrases", "train_answer_variants", "rewordings",
             "statements_from_answers")  # levers for a file of your own
# The file backend's files, and the sha256 (line ends as LF) of the examples data/ ships for each: a
# run that replaced some with your own data and left others would measure your model on the example's island.
FILE_KEYS = ("file", "dev_file", "heldout_file", "unknown_file", "unknown_dev_file", "unknown_train_file")
EXAMPLE_DIGESTS = {
    "file": "cb1114bf5b4551f37a7c5cd77000e042b7dc6f1e624477379122d5b6ee7f2629",
    "dev_file": "b6a24b99ec190aa2e192dc3e03c74374541c0adcbe12bbef4acb9fa83c92defe",
    "heldout_file": "f8116ae43389ba08fb6b9a4f3abf511d741b7163879e362e98236d54fcbeb7b6",
    "unknown_file": "8dfedfd43a7e152aaca4cbc90018a7df3eea09da260de83e225dd370b47113a5",
    "unknown_dev_file": "d29578457c48f4d12164be01bd0911792bfd38ee97cda2fbc26bf095de8f40ba",
    "unknown_train_file": "42eb6cfe78979a2fa95155dd69966f28eeda48cf05ae358f9fe59a2bf75f6464",
}


def llm_transport(cfg):
    """The ask(messages, seed) callable of the chosen transport."""
    if cfg["llm_transport"] == "http":
        return HttpChat(cfg["llm_base_url"], cfg["llm_model"], cfg["llm_api_key_env"], cfg["llm_timeout_s"],
                        cfg["llm_max_new_tokens"], cfg["llm_temperature"])
    model, tokenizer = load_base(cfg["llm_model"], "main", False, torch.float32)
    return LocalChat(model.eval(), prepare_tokenizer(tokenizer), cfg["llm_model"], cfg["llm_max_new_tokens"],
                     cfg["llm_temperature"])


def from_template(facts, fmt, questions_per_fact, answer_variants):
    """The first questions_per_fact phrasings of every fact (0: all), each paired with one answer:
    the fact's answer, or with answer_variants its answer and variants in turn, so the model does
    not learn the fact as one fixed string. Returns (dataset, report, the answers trained for each
    fact that got more than one)."""
    pairs, variants = [], []
    for fact in facts:
        answers = [fact["answer"], *fact["answers"]] if answer_variants else [fact["answer"]]
        questions = fact["questions"][:questions_per_fact or None]
        pairs += [(q, answers[i % len(answers)]) for i, q in enumerate(questions)]
        if len(trained := answers[:len(questions)]) > 1:
            variants.append({"answers": trained})
    return write_pairs(pairs, output_format(fmt), fmt["separator"]), {
        "requested": len(pairs), "accepted": len(pairs), "rejected": {}}, variants


def from_file(path, fmt):
    """The user's file, validated and returned byte for byte, and its pairs."""
    raw = Path(path).read_bytes()
    pairs, warnings = read_pairs(raw, path, fmt["format"], fmt["separator"])
    for warning in warnings:  # exact duplicates, merged by parse_qa the same way
        print(f"warning: {warning}")
    return raw, {"requested": len(pairs) + len(warnings), "accepted": len(pairs),
                 "rejected": {"duplicate": len(warnings)}}, pairs


def questions_from_files(cfg, fmt, trained):
    """(dev, held-out) from the user's files (file backend), each pair a question never trained on:
    a dev or held-out question that is also a training question (text.same_question), or a held-out question
    that is also a dev question, is an error naming both places."""
    sets, problems, seen = {}, [], {same_question(p["question"]): ("training", p["where"]) for p in trained}
    for name, path in (("dev", cfg["dev_file"]), ("held-out", cfg["heldout_file"])):
        # A .json/.jsonl/.ndjson file is detected as such (and checked against its content), whatever
        # dataset.format forces on your dataset file (separator: a tab-separated dataset beside my_dev.jsonl).
        file_format = "auto" if Path(path).suffix.lower() in EXTENSIONS else fmt["format"]
        try:
            pairs, warnings = read_pairs(Path(path).read_bytes(), path, file_format, fmt["separator"],
                                         evaluation=True)
        except DatasetError as e:  # reported with the other file's problems
            problems.append(str(e))
            continue
        for warning in warnings:
            print(f"warning: {warning}")
        for pair in pairs:
            if (earlier := seen.get(same_question(pair["question"]))) is not None:
                why = ("dev and held-out questions are never trained on" if earlier[0] == "training"
                       else "dev chooses the settings, held-out tests them: keep them apart")
                problems.append(f"{pair['where']}: {name} question {pair['question']!r} is also a {earlier[0]} "
                                f"question ({earlier[1]}): {why}")
        seen.update({same_question(p["question"]): (name, p["where"]) for p in pairs})
        sets[name] = pairs
    if problems:
        raise DatasetError("\n".join(problems))
    return sets["dev"], sets["held-out"]


def unknowns_from_files(cfg, trained, dev, heldout):
    """The three lists of unknown questions from the user's files (file backend): unknown_file (asked
    by the evaluations), unknown_dev_file (choose the gate) and unknown_train_file (taught with the
    refusal). One that is also a training, dev or held-out question, or in another list, is an error
    naming both places."""
    answered = {same_question(p["question"]): f"a training question ({p['where']})" for p in trained}
    for name, pairs in (("dev", dev), ("held-out", heldout)):
        answered.update({same_question(p["question"]): f"a {name} question ({p['where']})" for p in pairs})
    lists, problems = {}, []
    for name, key in (("unknown", "unknown_file"), ("unknown_dev", "unknown_dev_file"),
                      ("unknown_train", "unknown_train_file")):
        try:
            lists[name] = read_questions(Path(cfg[key]).read_bytes(), cfg[key], answered)
        except DatasetError as e:
            problems.append(str(e))
            continue
        answered.update({same_question(q["question"]): (f"an unknown question ({q['where']})", "ask it once, in one file")
                         for q in lists[name]})
    if problems:
        raise DatasetError("\n".join(problems))
    return {name: [q["question"] for q in questions] for name, questions in lists.items()}


def example_digest(path):
    """sha256 of a file with its line ends as LF (a checkout with CRLF is the same example)."""
    return hashlib.sha256(Path(path).read_bytes().replace(b"\r\n", b"\n")).hexdigest()


def examples_left(cfg):
    """A warning naming the file backend's files that are still the shipped examples (about 별무리섬)
    while others are your own; none when all or none are."""
    left = [key for key in FILE_KEYS if example_digest(cfg[key]) == EXAMPLE_DIGESTS[key]]
    if not left or len(left) == len(FILE_KEYS):
        return []
    own = [key for key in FILE_KEYS if key not in left]
    # Skipping these two also needs a setting elsewhere: said here, before training, not by a later stage.
    also = {"dev_file": "no dev questions also needs finetune.select_epoch: last and interpolate.weights: [1.0]",
            "unknown_train_file": "no training unknown questions needs generate_dataset.refusal_ratio: 0"}
    return [f"{', '.join(cfg[key] for key in left)} {'is' if len(left) == 1 else 'are'} still the example "
            f"(questions about its island, 별무리섬) beside your own {', '.join(cfg[key] for key in own)}: "
            "write questions about your own data there, or leave only # comments in a file to skip what it "
            "measures (generate_dataset." + "; ".join([", ".join(left), *(also[key] for key in left if key in also)])
            + ")."]


def evaluation_questions_from_files(cfg, fmt, trained):
    """(dev, held-out, {unknown lists}) from the user's files (file backend), the problems of every
    file in one DatasetError."""
    problems, dev, heldout, unknown = [], [], [], {}
    try:
        dev, heldout = questions_from_files(cfg, fmt, trained)
    except DatasetError as e:
        problems.append(str(e))
    try:
        unknown = unknowns_from_files(cfg, trained, dev, heldout)
    except DatasetError as e:
        problems.append(str(e))
    if problems:
        raise DatasetError("\n".join(problems))
    without_where = [[{k: v for k, v in p.items() if k != "where"} for p in pairs] for pairs in (dev, heldout)]
    return *without_where, unknown


def refusal_pairs(unknown_train, ratio, pairs, refusal, source):
    """The refusal pairs taught beside the question/answer pairs (R-Tuning): the first round(ratio x
    pairs) training unknown questions, each answered with the refusal. Asking for more than the list
    holds is an error, never a silent cap."""
    wanted = math.floor(ratio * pairs + 0.5)  # half up, not Python's round half to even
    if wanted > len(unknown_train):
        raise DatasetError(f"{source}: generate_dataset.refusal_ratio = {ratio} asks for {wanted} refusal pairs "
                           f"({pairs} pairs), but the training unknown questions are {len(unknown_train)}: add "
                           "questions no fact answers, or lower the ratio")
    return [{"question": q, "answer": refusal} for q in unknown_train[:wanted]]


def from_llm(cfg, facts, unknown, fmt, seed):
    """Pairs a language model wrote about the facts (or the topic), each one checked; a pair asking a
    dev, held-out or unknown question is rejected (those are kept for the evaluation)."""
    seed_everything(seed)
    source = cfg["llm_topic"] or [fact["answer"] for fact in facts]
    pairs, report = write_pairs_with_llm(source, cfg["llm_pairs_per_fact"], llm_transport(cfg), seed,
                                         cfg["llm_max_attempts"],
                                         held_out=[q for fact in facts for q in fact["held_out"] + fact["dev"]]
                                         + [q for questions in unknown.values() for q in questions])
    if not pairs:
        sys.exit(f"error: the llm backend got no usable pair from {cfg['llm_model']!r} (rejected: "
                 f"{report['rejected']}); nothing written. A stronger model may be needed (the "
                 "embedded 135M model cannot write Korean pairs).")
    report.pop("backend")
    return write_pairs(pairs, output_format(fmt), fmt["separator"]), report


def paraphrased(cfg, per_pair, trained, dev, heldout, unknown, seed):
    """Pairs a language model wrote (llm_* settings): per_pair other phrasings of each training question
    with its answer, none of them a question already in the data. (pairs, report)"""
    seed_everything(seed)
    taken = [p["question"] for p in trained + dev + heldout] + [q for questions in unknown.values() for q in questions]
    return write_paraphrases([{"question": p["question"], "answer": p["answer"]} for p in trained],
                             per_pair, llm_transport(cfg), seed, cfg["llm_max_attempts"], taken)


def answer_varied(cfg, own_pairs, asked, seed):
    """Other wordings of each of your answers, written by a language model (llm_* settings) and checked
    to keep the fact. ({answer: [variants]}, report)"""
    seed_everything(seed)
    return write_answer_variants([{"question": p["question"], "answer": p["answer"]} for p in own_pairs],
                                 cfg["train_answer_variants"], llm_transport(cfg), seed, cfg["llm_max_attempts"], asked)


def spread_answers(pairs, own, variants):
    """Your own pairs (the first own of pairs) keep their answers; each phrasing added after them
    (rewordings, paraphrases) takes the wordings of its answer in turn, then the answer itself, as the
    template backend spreads a fact's answers: one question is never trained with two answers.
    Returns (pairs, the answers trained per answer that got more than one, wordings unused because
    too few phrasings were added)."""
    given, spread = {}, list(pairs[:own])
    for pair in pairs[own:]:
        answers = [*variants.get(pair["answer"], []), pair["answer"]]
        turn = given[pair["answer"]] = given.get(pair["answer"], 0) + 1
        spread.append({**pair, "answer": answers[(turn - 1) % len(answers)]})
    trained = [{"answers": [answer, *more[:given[answer]]]} for answer, more in variants.items() if given.get(answer)]
    unused = sum(max(0, len(more) - given.get(answer, 0)) for answer, more in variants.items())
    return spread, trained, unused


def output_format(fmt):
    return "custom_tokens" if fmt["format"] == "auto" else fmt["format"]


def main():
    params = load_params()
    problems = (problems_in_section(params, "generate_dataset", SPEC) + shared_problems(params, keys=["seed"])
                + problems_in_section(params, "dataset", DATASET_SPEC))
    if not problems and params["generate_dataset"]["backend"] != "file":
        problems += [f"generate_dataset.{key} works with backend file (your own data); the facts file has its own "
                     "phrasings, held_out questions and statements: set it to 0 or false"
                     for key in FILE_ONLY if params["generate_dataset"][key]]
    gd = params.get("generate_dataset", {})
    if not problems and not gd["llm_temperature"]:
        problems += [f"generate_dataset.{key} = {gd[key]} with llm_temperature 0: greedy replies to one request are "
                     f"the same, so at most one of the {gd[key]} per pair would be new; set llm_temperature above 0 "
                     "(e.g. 0.7) or ask for 1" for key in ("heldout_paraphrases", "train_paraphrases",
                                                            "train_answer_variants") if gd[key] > 1]
    if not problems and gd["train_paraphrases"] and gd["heldout_paraphrases"] and not gd["llm_temperature"]:
        problems.append("generate_dataset.train_paraphrases and heldout_paraphrases with llm_temperature 0: greedy "
                        "replies to the same question are the same, so every training phrasing would repeat a "
                        "held-out one and be rejected; set llm_temperature above 0 (e.g. 0.7)")
    problems += shared_problems(params, keys=["refusal"])
    fail_if_problems(problems)
    cfg, fmt = params["generate_dataset"], params["dataset"]
    try:
        variants = []  # only the template backend knows which answers state the same fact
        if cfg["backend"] == "file":  # your own data, judged on your own questions (or not at all)
            facts = []
            dataset, report, pairs = from_file(cfg["file"], fmt)
            dev, heldout, unknown = evaluation_questions_from_files(cfg, fmt, pairs)
            if cfg["heldout_paraphrases"]:  # never trained on: the test of your own data
                written, report["heldout_paraphrases"] = paraphrased(cfg, cfg["heldout_paraphrases"], pairs, dev,
                                                                     heldout, unknown, params["seed"])
                heldout += written
            own_pairs = pairs  # the coverage counts your phrasings, not the ones added here
            evaluation = [p["question"] for p in dev + heldout] + unknown["unknown"] + unknown["unknown_dev"]
            if cfg["train_paraphrases"]:  # other request seeds than the held-out ones'
                written, report["train_paraphrases"] = paraphrased(cfg, cfg["train_paraphrases"], pairs, dev, heldout,
                                                                   unknown, params["seed"] + cfg["llm_max_attempts"])
                # Trained, so also never a near-copy of a question that tests or chooses (counted).
                close = [w for w in written if augment.too_close(w["question"], evaluation)]
                report["train_paraphrases"]["accepted"] -= len(close)
                report["train_paraphrases"]["rejected"]["too_close_to_an_evaluation_question"] = len(close)
                pairs = pairs + [w for w in written if w not in close]
            if cfg["rewordings"]:  # checked against every question like a phrasing of yours
                taken = [p["question"] for p in pairs] + evaluation + unknown["unknown_train"]
                reworded, report["rewordings"] = augment.reword_pairs(pairs, cfg["rewordings"], taken, evaluation)
                pairs = pairs + reworded
            if cfg["train_answer_variants"]:  # spread over the phrasings above: add rewordings or paraphrases
                written, report["train_answer_variants"] = answer_varied(
                    cfg, own_pairs, dev + heldout, params["seed"] + 2 * cfg["llm_max_attempts"])
                pairs, variants, unused = spread_answers(pairs, len(own_pairs), written)
                report["train_answer_variants"]["unused_for_want_of_phrasings"] = unused
        else:
            facts, unknown = load_facts(cfg["facts"]), load_unknown(cfg["facts"])
            if cfg["backend"] == "llm":
                dataset, report = from_llm(cfg, facts, unknown, fmt, params["seed"])
            else:
                dataset, report, variants = from_template(facts, fmt, cfg["questions_per_fact"],
                                                          cfg["answer_variants"])
            dev, heldout = ([{"question": q, "answer": f["answer"], "key": f["key"]} for f in facts for q in f[name]]
                            for name in ("dev", "held_out"))
        refusals = refusal_pairs(unknown["unknown_train"], cfg["refusal_ratio"], report["accepted"], params["refusal"],
                                 cfg["unknown_train_file"] if cfg["backend"] == "file" else cfg["facts"])
    except DatasetError as e:
        sys.exit(f"error: bad input data:\n{e}")
    except (TransportError, ModelNotFound, ValueError) as e:
        sys.exit(f"error: the language model ({cfg['llm_transport']} transport, {cfg['llm_model']!r}): {e}")

    if cfg["backend"] == "file" and pairs != own_pairs:  # your file, then what was added, in one file
        try:
            dataset = write_pairs(pairs, output_format(fmt), fmt["separator"])
        except ValueError as e:
            sys.exit(f"error: cannot write your pairs and the added ones in dataset.format {output_format(fmt)}: {e}")
    # Statements are about the facts file's facts; a dataset file of your own brings its answers as statements.
    statements = [{"text": t} for fact in facts for t in fact["statements"]] if cfg["statements"] else []
    if cfg["statements_from_answers"]:
        statements = augment.statements_from_answers(pairs)
    if cfg["backend"] == "template":
        data_coverage = coverage.diagnose(coverage.from_facts(facts, cfg["questions_per_fact"], cfg["answer_variants"],
                                                              cfg["statements"]))
    else:  # the pairs name no fact: the dev and held-out questions say which facts are asked for
        if cfg["backend"] == "llm":
            pairs = read_pairs(dataset.encode("utf-8"), TRAINED_DATASET, output_format(fmt), fmt["separator"])[0]
        data_coverage = coverage.diagnose(*coverage.from_pairs(own_pairs if cfg["backend"] == "file" else pairs,
                                                               dev, heldout))
    if cfg["backend"] == "file":
        data_coverage["warnings"] += examples_left(cfg)
    for warning in data_coverage["warnings"]:
        print(f"warning: {warning}")
    write_atomically(HELDOUT_QUESTIONS, to_jsonl(heldout))
    write_atomically(DEV_QUESTIONS, to_jsonl(dev))
    write_atomically(STATEMENTS, to_jsonl(statements))
    write_atomically(UNKNOWN_QUESTIONS, to_jsonl([{"question": q} for q in unknown["unknown"]]))
    write_atomically(UNKNOWN_DEV_QUESTIONS, to_jsonl([{"question": q} for q in unknown["unknown_dev"]]))
    write_atomically(REFUSALS, to_jsonl(refusals))
    write_atomically(ANSWER_VARIANTS, to_jsonl(variants))
    asked_from = cfg["facts"] if cfg["backend"] != "file" else {"dev": cfg["dev_file"], "heldout": cfg["heldout_file"]}
    write_atomically(DATASET_METRICS, json.dumps({"backend": cfg["backend"], **report, "statements": len(statements),
                                         "dev_questions": len(dev), "heldout_questions": len(heldout),
                                         "unknown_questions": len(unknown["unknown"]),
                                         "unknown_dev_questions": len(unknown["unknown_dev"]),
                                         "unknown_train_questions": len(unknown["unknown_train"]),
                                         "refusal_pairs": len(refusals),
                                         "dev_and_heldout_from": asked_from, "coverage": data_coverage},
                                        indent=2, ensure_ascii=False) + "\n")
    write_atomically(TRAINED_DATASET, dataset)
    reworded = "".join(f" + {report[key]['accepted']} {what}" for key, what in (
        ("train_paraphrases", "paraphrases"), ("rewordings", "rule rewordings")) if key in report)
    if "train_answer_variants" in report:
        written = report["train_answer_variants"]
        reworded += (f", {written['accepted'] - written['unused_for_want_of_phrasings']} other wordings of answers "
                     f"trained on them ({written['unused_for_want_of_phrasings']} unused: too few phrasings; "
                     f"{written['skipped_nothing_to_check']} answers with nothing to check left alone)")
    print(f"wrote {TRAINED_DATASET}: {report['accepted']} question/answer pairs{reworded} ({cfg['backend']} backend), "
          f"{STATEMENTS}: {len(statements)} statements, {DEV_QUESTIONS}: {len(dev)} dev, {HELDOUT_QUESTIONS}: {len(heldout)} "
          f"held-out, {UNKNOWN_QUESTIONS}: {len(unknown['unknown'])} unknown and {UNKNOWN_DEV_QUESTIONS}: {len(unknown['unknown_dev'])} "
          f"dev unknown questions, {REFUSALS}: {len(refusals)} refusal pairs, report in {DATASET_METRICS}")


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
