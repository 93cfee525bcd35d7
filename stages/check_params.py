"""Stage check_params: every key of params.yaml checked, whichever stage reads it.

    python -m stages.check_params

Reads the whole of params.yaml (dvc.yaml tracks all of it here, nowhere else) and writes nothing.
Each stage checks its own section, but only when it reruns, and a stage reruns only for the keys it
declares: a misspelt key added to a section (`dvc exp run -S +finetune.epoch=2`, or by hand) or a
section no stage knows would otherwise change no stage, and the experiment would run, unchanged, under
the new name. Here it is an error with the closest valid name; in a whole `dvc repro` or `dvc exp run`
this stage runs first (first in dvc.yaml, tested), before any other stage's work.
"""

import difflib
import sys

from llm_fft.bench import BENCH_SPEC
from llm_fft.evaluation import EVAL_SPEC
from llm_fft.formats import DATASET_SPEC
from llm_fft.model import MODEL_SPEC
from llm_fft.params import SHARED_SPEC, ParamsError, fail_if_problems, load_params, problems_in_section, shared_problems
from llm_fft.prompts import PROMPT_SPEC
from llm_fft.training import FINETUNE_SPEC
from stages import generate_dataset, interpolate, make_rehearsal, parse_qa, teacher_distributions

SECTIONS = {
    "model": MODEL_SPEC, "prompt": PROMPT_SPEC, "dataset": DATASET_SPEC, "generate_dataset": generate_dataset.SPEC,
    "parse_qa": parse_qa.SPEC, "rehearsal": make_rehearsal.SPEC, "teacher_distributions": teacher_distributions.SPEC,
    "evaluate": EVAL_SPEC, "finetune": FINETUNE_SPEC, "interpolate": interpolate.SPEC, "bench": BENCH_SPEC,
}


def problems_in_params(params):
    """Every problem of params.yaml: unknown top-level keys, then each section's (llm_fft.params)."""
    if not isinstance(params, dict):
        return ["params.yaml: not a mapping of keys to values"]
    known = [*SHARED_SPEC, *SECTIONS]
    problems = []
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            problems.append(f"params.yaml: {key} is not a known key" + (f" (did you mean '{close[0]}'?)" if close else ""))
    problems += shared_problems(params)
    for section, spec in SECTIONS.items():
        problems += problems_in_section(params, section, spec)
    return problems


def main():
    try:
        fail_if_problems(problems_in_params(load_params()))
    except ParamsError as e:
        sys.exit(f"error: {e}")
    print(f"params.yaml: every key known and valid ({len(SHARED_SPEC)} shared keys, {len(SECTIONS)} sections)")


if __name__ == "__main__":
    main()
