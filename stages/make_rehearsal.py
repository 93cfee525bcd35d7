"""Stage make_rehearsal: text the base model writes itself, mixed into training against forgetting.

    python -m stages.make_rehearsal

Reads rehearsal.* in params.yaml, the general openings in rehearsal.prompts (data/rehearsal_prompts.yaml),
data/retention.yaml (only to refuse an overlap with it) and models/base. The base model continues each
opening rehearsal.samples_per_prompt times (seeded sampling). Training on the model's own text pulls
fine-tuning back towards what the base model would say, without anyone's pretraining data
(self-synthesised rehearsal, Huang et al., ACL 2024); finetune.rehearsal_ratio sets how much is mixed in.
With rehearsal.facts, the file's keyed general facts are rehearsed too (selective self-rehearsal,
Gupta et al. 2024): the base model continues each greedily, and only a continuation that states one of
the fact's keys is kept, so fine-tuning is pulled back towards what the base model knew, never towards
its mistakes.
Writes data/rehearsal.jsonl (plain-text records, every token learned) and data/rehearsal_dev.jsonl (the
texts of every rehearsal.dev_every-th opening, never trained on: the dev measure of forgetting).
The retention probe (data/retention.yaml) measures forgetting in the report, so none of its passages
or prompts may be a rehearsal opening, and no rehearsed fact may have a key of the probe's facts (a
literal check: a translation of a probe fact, 런던 for London, is kept out of the file by hand).
"""

import sys
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from llm_fft.batching import IGNORE_INDEX
from llm_fft.files import to_jsonl, write_atomically
from llm_fft.metrics import holds_key
from llm_fft.model import load_pretrained
from llm_fft.params import ParamsError, fail_if_problems, load_params, pick_device, problems_in_section, shared_problems
from llm_fft.paths import BASE_MODEL, REHEARSAL, REHEARSAL_DEV
from llm_fft.prompts import tokenize_text
from llm_fft.retention import load_retention
from llm_fft.text import normalize

SPEC = {
    "prompts": (str, lambda v: Path(v).is_file(), "path of an existing YAML file with a list 'prompts'"),
    "samples_per_prompt": (int, lambda v: v >= 1, "an integer >= 1"),
    "new_tokens": (int, lambda v: v >= 1, "an integer >= 1 (tokens)"),
    "temperature": ((int, float), lambda v: v >= 0, "a number >= 0 (0 = greedy, one sample per prompt)"),
    "top_p": ((int, float), lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "dev_every": (int, lambda v: v >= 2, "an integer >= 2"),
    "batch_size": (int, lambda v: v >= 1, "an integer >= 1"),
    "seed": (int, lambda v: v >= 0, "an integer >= 0"),
    "facts": (bool, None, "true or false (rehearse the keyed general facts the base model states right)"),
    "fact_new_tokens": (int, lambda v: v >= 1, "an integer >= 1 (tokens)"),
}


def read_prompts(path, retention):
    """(openings, keyed facts) from the prompts file, checked all at once: non-empty strings, none twice,
    none touching the retention probe (its passages, prompts and general-knowledge openings); each fact
    {prompt, keys}, with no key of the probe's facts (rehearsing one would inflate general facts kept)."""
    try:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        prompts, facts = content.get("prompts"), content.get("facts", [])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as e:
        sys.exit(f"error: {path}: cannot read rehearsal prompts: {e}")
    if not isinstance(prompts, list) or not prompts:
        sys.exit(f"error: {path}: expected a mapping with a non-empty list 'prompts'")
    if not isinstance(facts, list):
        sys.exit(f"error: {path}: 'facts' must be a list of {{prompt: text, keys: [texts]}}")
    probe = [normalize(t) for t in retention["text"] + retention["prompts"] + [f["prompt"] for f in retention["facts"]]]
    probe_keys = {normalize(k).casefold() for f in retention["facts"] for k in f["keys"]}
    problems, seen = [], set()

    def check_opening(where, prompt, expected="a non-empty string"):
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{where}: expected {expected}")
            return
        text = normalize(prompt)
        if text in seen:
            problems.append(f"{where}: {prompt!r} is there twice")
        seen.add(text)
        if any(text in p or p in text for p in probe):
            problems.append(f"{where}: {prompt!r} overlaps the retention probe (data/retention.yaml), which "
                            "must stay unseen to measure forgetting")

    for i, prompt in enumerate(prompts):
        check_opening(f"{path}: prompts[{i}]", prompt)
    for i, fact in enumerate(facts):
        where = f"{path}: facts[{i}]"
        if not isinstance(fact, dict) or set(fact) != {"prompt", "keys"} or not isinstance(fact["keys"], list) \
                or not fact["keys"] or not all(isinstance(k, str) and k.strip() for k in fact["keys"]):
            problems.append(f"{where}: expected {{prompt: text, keys: [non-empty texts]}}")
            continue
        check_opening(where, fact["prompt"], "a non-empty string as its prompt")
        shared = [k for k in fact["keys"] if normalize(k).casefold() in probe_keys]
        if shared:
            problems.append(f"{where}: key {shared[0]!r} is a key of the retention probe's facts, which must stay "
                            "unseen to measure general facts kept")
    fail_if_problems(problems, what="rehearsal prompts")
    return [p.strip() for p in prompts], [{"prompt": f["prompt"].strip(), "keys": f["keys"]} for f in facts]


@torch.inference_mode()
def continue_prompts(model, tokenizer, prompts, cfg, device):
    """One record per (prompt, sample): the prompt's ids and the model's continuation, up to and
    including an EOS if it writes one. Sampled in seeded batches (greedy when temperature is 0)."""
    jobs = [(i, p) for i, p in enumerate(prompts) for _ in range(cfg["samples_per_prompt"] if cfg["temperature"] else 1)]
    sampling = {"do_sample": True, "temperature": float(cfg["temperature"]), "top_p": float(cfg["top_p"])} \
        if cfg["temperature"] else {"do_sample": False}
    torch.manual_seed(cfg["seed"])
    records = []
    for start in tqdm(range(0, len(jobs), cfg["batch_size"]), desc="make_rehearsal", unit="batch"):
        batch_jobs = jobs[start:start + cfg["batch_size"]]
        prompt_ids = [tokenize_text(tokenizer, p)["input_ids"] for _, p in batch_jobs]
        batch = tokenizer.pad({"input_ids": prompt_ids}, padding_side="left", return_tensors="pt").to(device)
        output = model.generate(**batch, max_new_tokens=cfg["new_tokens"], pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **sampling)
        for (prompt_index, _prompt), ids, new_ids in zip(batch_jobs, prompt_ids,
                                                        output[:, batch["input_ids"].shape[1]:].tolist()):
            if tokenizer.eos_token_id in new_ids:
                new_ids = new_ids[:new_ids.index(tokenizer.eos_token_id) + 1]
            bos = int(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
            records.append({"prompt_index": prompt_index, "text": tokenizer.decode(ids + new_ids, skip_special_tokens=True),
                            "input_ids": ids + new_ids, "labels": [IGNORE_INDEX] * bos + ids[bos:] + new_ids})
    return records


def known_facts(records, facts, tokenizer):
    """The greedy continuations (continue_prompts records, one per fact) that state one of their fact's
    keys: the facts the base model knows, and only those are rehearsed."""
    kept = []
    for record, fact in zip(records, facts):
        opening = len(tokenize_text(tokenizer, fact["prompt"])["input_ids"])
        continuation = tokenizer.decode(record["input_ids"][opening:], skip_special_tokens=True)
        if any(holds_key(continuation, key) for key in fact["keys"]):
            kept.append(record)
    return kept


def rehearsal_sets(records, known, openings, dev_every):
    """(train, dev): the openings' texts split so that whole openings go to dev (a dev text never shares
    its opening with a trained one), and the known facts' texts, numbered after the openings, to train
    only: they are what the base model must not forget, not a measure of it. Every text gets its id."""
    dev = [r for r in records if r["prompt_index"] % dev_every == dev_every - 1]
    train = [r for r in records if r["prompt_index"] % dev_every != dev_every - 1]
    known = [{**r, "prompt_index": r["prompt_index"] + openings} for r in known]
    for i, r in enumerate(records + known):
        r["id"] = i
    return train + known, dev


def main():
    params = load_params()
    fail_if_problems(problems_in_section(params, "rehearsal", SPEC) + shared_problems(params, keys=["device"]))
    cfg = params["rehearsal"]
    prompts, facts = read_prompts(cfg["prompts"], load_retention())
    if cfg["facts"] and not facts:
        raise ParamsError(f"rehearsal.facts is true, but {cfg['prompts']} has no 'facts' list")
    device = pick_device(params["device"])
    # bf16 on CUDA (half the memory and time; the base model's own weights are bf16 on the hub), fp32
    # on the CPU, where the committed rehearsal text was written.
    model, tokenizer = load_pretrained(BASE_MODEL, torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    records = continue_prompts(model.eval(), tokenizer, prompts, cfg, device)
    known = []
    if cfg["facts"]:  # greedy: the base model's own most likely statement of what it knows
        greedy = {**cfg, "temperature": 0, "new_tokens": cfg["fact_new_tokens"]}
        known = known_facts(continue_prompts(model, tokenizer, [f["prompt"] for f in facts], greedy, device),
                            facts, tokenizer)
    train, dev = rehearsal_sets(records, known, len(prompts), cfg["dev_every"])
    write_atomically(REHEARSAL_DEV, to_jsonl(dev))
    write_atomically(REHEARSAL, to_jsonl(train))
    tokens = sum(len(r["input_ids"]) for r in train)
    print(f"wrote {REHEARSAL}: {len(train)} texts ({tokens} tokens) and {REHEARSAL_DEV}: {len(dev)} texts, "
          f"from {len(prompts)} openings"
          + (f", and {len(known)} of {len(facts)} keyed general facts the base model states right" if cfg["facts"] else ""))


if __name__ == "__main__":
    try:
        main()
    except ParamsError as e:  # the library raises; the stage says why in one message and exits non-zero
        sys.exit(f"error: {e}")
