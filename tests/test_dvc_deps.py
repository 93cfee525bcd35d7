"""dvc.yaml lists, for every stage, exactly the project modules its script imports (transitively: the
llm_fft modules, and the other stages' scripts check_params imports for their specs).

A module missing from a stage's deps means an edit to it does not rerun the stage (stale results); an
extra one means an edit reruns a stage it cannot affect (a retrain for nothing).
"""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "llm_fft"
PACKAGES = (PACKAGE, "stages")


def imported_modules(path):
    """The llm_fft modules and stage scripts one file imports, as repo-relative paths (llm_fft/x.py)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            names = [node.module] if node.module not in PACKAGES else [f"{node.module}.{a.name}" for a in node.names]
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
    paths = {f"{name.replace('.', '/')}.py" for name in found}
    return {p for p in paths if (REPO / p).is_file()}


def transitive_modules(script):
    seen, todo = set(), [script]
    while todo:
        for module in imported_modules(REPO / todo.pop()) - seen:
            seen.add(module)
            todo.append(module)
    return seen


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_list_exactly_the_modules_it_imports(name):
    stage = STAGES[name]
    command = stage["cmd"].split()  # python -m stages.NAME
    assert command[:2] == ["python", "-m"], f"{name}: run a stage as a module, so the repo's own llm_fft is imported"
    script = command[2].replace(".", "/") + ".py"
    assert script.startswith("stages/") and script in stage["deps"], f"{name}: its script is not a dep"
    declared = {d for d in stage["deps"] if d.split("/")[0] in PACKAGES and d != script}
    imported = transitive_modules(script)
    assert declared == imported, (f"{name}: dvc.yaml lists modules it does not import: {sorted(declared - imported)}; "
                                  f"imports modules dvc.yaml does not list: {sorted(imported - declared)}")


def test_the_walk_follows_imports_through_modules():
    # final_eval imports evaluation, which imports metrics, which imports text: all three are found.
    assert {"llm_fft/evaluation.py", "llm_fft/metrics.py", "llm_fft/text.py"} <= transitive_modules("stages/final_eval.py")
    assert "llm_fft/metrics.py" not in transitive_modules("stages/finetune.py")


def test_finetune_lists_each_key_that_changes_the_weights_and_none_that_does_not():
    from llm_fft.training import CHANGES_NO_NUMBERS, FINETUNE_SPEC
    listed = {p for p in STAGES["finetune"]["params"] if isinstance(p, str) and p.startswith("finetune")}
    assert listed == {f"finetune.{k}" for k in FINETUNE_SPEC if k not in CHANGES_NO_NUMBERS}
    assert CHANGES_NO_NUMBERS and set(CHANGES_NO_NUMBERS) <= set(FINETUNE_SPEC)


def test_interpolate_lists_the_evaluate_keys_it_checks_and_no_other():
    # So that -S evaluate.gate_wrong_cost=... (or any key of the gate and the probes) reruns final_eval
    # alone, not interpolate's generations; load_for_evaluation(decoding_only=True) checks these.
    from llm_fft.evaluation import DECODING_KEYS
    listed = {p for p in STAGES["interpolate"]["params"] if isinstance(p, str) and p.split(".")[0] in ("evaluate", "refusal")}
    assert listed == {f"evaluate.{k}" for k in DECODING_KEYS}


def test_the_package_docstring_lists_every_module_once():
    import llm_fft
    listed = [line.split()[0] for line in llm_fft.__doc__.splitlines() if " -- " in line]
    assert sorted(listed) == sorted(p.stem for p in (REPO / PACKAGE).glob("*.py") if p.stem != "__init__")
