"""The retention probe (data/retention.yaml): general text, general prompts and general-knowledge
facts that nobody trains on, read by make_rehearsal (to keep its openings apart) and both evaluations."""

from pathlib import Path

import yaml

from llm_fft.paths import RETENTION


def load_retention(path=RETENTION):
    """The retention probe (data/retention.yaml): general passages and prompts, and the general
    knowledge probe's facts ([] when absent), checked."""
    retention = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(retention, dict) or not all(
            isinstance(retention.get(k), list) and retention[k] and all(isinstance(t, str) and t.strip()
                                                                       for t in retention[k])
            for k in ("text", "prompts")):
        raise ValueError(f"{path}: expected non-empty lists of strings 'text' and 'prompts'")
    facts = retention.setdefault("facts", [])
    bad = [i for i, f in enumerate(facts if isinstance(facts, list) else [None])
           if not isinstance(f, dict) or set(f) != {"prompt", "keys"} or not isinstance(f["prompt"], str)
           or not f["prompt"].strip() or not isinstance(f["keys"], list) or not f["keys"]
           or not all(isinstance(k, str) and k.strip() for k in f["keys"])]
    if bad:
        raise ValueError(f"{path}: facts[{bad[0]}]: expected {{prompt: text, keys: [non-empty texts]}} "
                         f"({len(bad)} bad entries)")
    return retention
