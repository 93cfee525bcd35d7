"""How thoroughly the training data covers each fact, counted by generate_dataset before any training,
and the warnings a thin dataset gets (metrics/dataset.json `coverage`, make run's summary, the report).

A fact seen in few wordings is stored but not retrieved by other wordings (Allen-Zhu & Li, Physics of
Language Models 3.1; Ovadia et al. 2024). Measured here: data/facts.yaml trained with 2 questions and one
answer per fact stated the key fact of 8 of 26 held-out questions (another batch order: 3), against 12 to 17
of 26 with 6 to 8 questions, answer variants and statements (docs/learning-quality.md); a user's file of 16
pairs, one question each, got 1 of 8 (issue #27). So a fact with fewer than 3 phrasings is warned about:
both measured regimes below that failed.
"""

from statistics import median

from llm_fft.text import normalize, states

MIN_PHRASINGS = 3  # training phrasings per fact below which held-out questions were measured to fail


def from_facts(facts, questions_per_fact, answer_variants, statements):
    """One row per fact of the facts file, as the template backend trains it."""
    rows = []
    for fact in facts:
        phrasings = len(fact["questions"][:questions_per_fact or None])
        rows.append({"fact": fact["key"] or fact["answer"], "phrasings": phrasings,
                     "answers": min(phrasings, 1 + len(fact["answers"])) if answer_variants else 1,
                     "statements": len(fact["statements"]) if statements else 0,
                     "dev": len(fact["dev"]), "heldout": len(fact["held_out"])})
    return rows


def _fact_of(question):
    """What a dev or held-out question asks for: its key, or without one its whole answer (normalised)."""
    return normalize(question.get("key") or question["answer"])


def from_pairs(pairs, dev, heldout):
    """One row per fact that your dev and held-out questions ask for (a file of your own names no facts,
    and its pairs about one fact may each word the answer differently): the training pairs whose answer
    states that fact's key (or is its answer, for a question without a key) are its phrasings. Returns
    (rows, training pairs about none of those facts)."""
    asked = {}
    for name, questions in (("dev", dev), ("heldout", heldout)):
        for q in questions:
            asked.setdefault(_fact_of(q), {"dev": 0, "heldout": 0, "key": q.get("key")})[name] += 1
    answers = [normalize(p["answer"]) for p in pairs]
    rows, used = [], set()
    for fact, counts in asked.items():
        about = [i for i, a in enumerate(answers) if (states(a, fact) if counts["key"] else fact == a)]
        used.update(about)
        rows.append({"fact": fact, "phrasings": len(about), "answers": len({answers[i] for i in about}),
                     "statements": 0, "dev": counts["dev"], "heldout": counts["heldout"]})
    return rows, len(pairs) - len(used)


def diagnose(rows, pairs_about_no_asked_fact=None):
    """The counts of metrics/dataset.json `coverage` and its warnings (a list of sentences). rows: from_facts
    or from_pairs; pairs_about_no_asked_fact: from_pairs' second value (None for the facts file)."""
    if not rows:
        return {"facts": 0, "warnings": ["No dev or held-out question asks for a trained fact, so nothing "
                                         "measures whether the model learned the facts rather than the strings: "
                                         "give generate_dataset.dev_file and heldout_file some (docs/prompts)."]}
    unasked = [r for r in rows if r["phrasings"] == 0]
    thin = [r for r in rows if 0 < r["phrasings"] < MIN_PHRASINGS]
    one = sum(r["phrasings"] == 1 for r in rows)
    summary = {
        "facts": len(rows),
        "facts_with_one_phrasing": one,
        f"facts_with_fewer_than_{MIN_PHRASINGS}_phrasings": len(thin),
        "phrasings_per_fact": {"min": min(r["phrasings"] for r in rows), "median": median(r["phrasings"] for r in rows),
                               "max": max(r["phrasings"] for r in rows)},
        "facts_with_several_answers": sum(r["answers"] > 1 for r in rows),
        "facts_with_statements": sum(r["statements"] > 0 for r in rows),
        "facts_with_dev_questions": sum(r["dev"] > 0 for r in rows),
        "facts_with_heldout_questions": sum(r["heldout"] > 0 for r in rows),
        "facts_stated_by_no_training_pair": len(unasked),
    }
    if pairs_about_no_asked_fact is not None:
        summary["training_pairs_about_no_asked_fact"] = pairs_about_no_asked_fact
    warnings = []
    if thin:
        examples = ", ".join(repr(r["fact"]) for r in thin[:3]) + (", ..." if len(thin) > 3 else "")
        warnings.append(f"{len(thin)} of {len(rows)} facts have fewer than {MIN_PHRASINGS} training phrasings "
                        f"({examples}): expect held-out questions about them to fail, as measured (2 questions and "
                        "one answer per fact: 8 of 26 held-out right on data/facts.yaml; one question per fact: 1 of "
                        "8 on a user's file). Ask for each fact in at least 5 different training questions, as "
                        "docs/prompts/dataset.en.md and dataset.ko.md do; with a file of your own, "
                        "generate_dataset.rewordings=4 and statements_from_answers=true also help (held-out right "
                        "0.07 -> 0.32 on data/one-phrasing, 3 seeds: docs/learning-quality.md).")
    if unasked:
        warnings.append(f"{len(unasked)} facts asked by dev or held-out questions are stated by no training pair "
                        f"({', '.join(repr(r['fact']) for r in unasked[:3])}{', ...' if len(unasked) > 3 else ''}): "
                        "the model cannot learn them from this data.")
    return {**summary, "warnings": warnings}
