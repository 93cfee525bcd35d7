"""Stage generate_dataset: write data/dataset.txt (custom-token format) from the facts source.

    python stages/generate_dataset.py

Reads generate_dataset.* in params.yaml. The 'template' backend renders the tracked facts file
(data/facts.yaml) offline and deterministically; other backends plug in beside it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # python stages/x.py: import llm_fft from the repo

from llm_fft.data import DatasetError, load_facts, render_custom_tokens
from llm_fft.files import write_atomically
from llm_fft.params import fail_if_problems, load_params, problems_in_section

OUT_FILE = Path("data/dataset.txt")
BACKENDS = ("template",)
SPEC = {
    "backend": (str, lambda v: v in BACKENDS, f"one of {', '.join(BACKENDS)}"),
    "facts": (str, lambda v: Path(v).is_file(), "path of an existing facts YAML file"),
}


def main():
    params = load_params()
    fail_if_problems(problems_in_section(params, "generate_dataset", SPEC))
    cfg = params["generate_dataset"]
    try:
        pairs = load_facts(cfg["facts"])
    except DatasetError as e:
        sys.exit(f"error: bad facts file:\n{e}")
    write_atomically(OUT_FILE, render_custom_tokens(pairs))
    print(f"wrote {OUT_FILE}: {len(pairs)} question/answer pairs from {cfg['facts']}")


if __name__ == "__main__":
    main()
