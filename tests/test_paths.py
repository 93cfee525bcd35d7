"""llm_fft/paths.py names every pipeline file once: no stage or module spells one itself, dvc.yaml
names no other, and the tests name no file the pipeline does not have."""

import ast
import fnmatch
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from llm_fft import paths
from llm_fft.ask import one_line

REPO = Path(__file__).resolve().parents[1]
PIPELINE_FILE = re.compile(r"(data|models|metrics)/[\w./-]+")
NAMED = {str(v) for k, v in vars(paths).items() if k.isupper() and isinstance(v, Path)}
OUTSIDE_DVC = {paths.CHECKPOINTS, paths.CHECKPOINT, paths.BENCH, paths.BENCH_SMOKE, paths.SEEDS,  # resume, make bench
               paths.GPU_CHECK}
# DVCLive's folder holds finetune's metrics and plots, which dvc.yaml names
INSIDE_DVC_OUTPUTS = {paths.FINETUNE_LIVE}


def path_literals(path):
    """Every string constant in a Python file that is a pipeline path and nothing else."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.value.rstrip("/") for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and PIPELINE_FILE.fullmatch(n.value)}


def known(name):
    """A named path, or a file or folder inside one (models/finetuned/config.json)."""
    return any(name == p or name.startswith(p + "/") for p in NAMED)


def dvc_paths():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    found = set()
    for stage in stages.values():
        for field in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(field, []):
                name = entry if isinstance(entry, str) else next(iter(entry))
                if PIPELINE_FILE.fullmatch(name):
                    found.add(name)
    return found


def test_no_stage_or_module_spells_a_pipeline_path_itself():
    code = [*REPO.glob("stages/*.py"), *(p for p in REPO.glob("llm_fft/*.py") if p.name != "paths.py")]
    spelled = {f"{p.relative_to(REPO)}: {name}" for p in code for name in path_literals(p)}
    assert not spelled, f"use llm_fft.paths instead: {sorted(spelled)}"


def test_dvc_yaml_and_paths_name_the_same_files():
    assert dvc_paths() - NAMED == set(), "dvc.yaml names a pipeline file that llm_fft/paths.py does not"
    unused = {str(p) for p in map(Path, NAMED) if not any(str(p) == d or str(p).startswith(d + "/")
                                                         for d in dvc_paths())} - set(map(str, OUTSIDE_DVC | INSIDE_DVC_OUTPUTS))
    assert unused == set(), "llm_fft/paths.py names a file that no stage of dvc.yaml has"


def test_the_tests_name_only_files_the_pipeline_has():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split())
    for test in REPO.glob("tests/*.py"):
        for name in path_literals(test):
            # besides the pipeline's files: committed inputs, and the user's own files a test writes
            assert known(name) or name in tracked or name.startswith("data/my_"), f"{test.name}: {name}"


def test_each_file_has_one_name():
    values = [str(v) for k, v in vars(paths).items() if k.isupper() and isinstance(v, Path)]
    assert len(values) == len(set(values))


def test_make_clean_deletes_every_pipeline_output_but_the_committed_metrics():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    outputs = {entry if isinstance(entry, str) else next(iter(entry))
               for stage in stages.values() for entry in stage.get("outs", [])}
    recipe = (REPO / "Makefile").read_text(encoding="utf-8").split("\nclean:", 1)[1].split("\n\n", 1)[0]
    removed = next(line.split()[2:] for line in recipe.splitlines() if line.strip().startswith("rm -rf"))
    left = {o for o in outputs if not o.startswith("metrics/") and not any(fnmatch.fnmatch(o, r) for r in removed)}
    assert not left, f"make clean leaves {sorted(left)}"


# Not the Q, BASE or flags of a make that runs these tests (make test: "Entering directory" lines).
MAKE_ENV = {k: v for k, v in os.environ.items() if k not in ("Q", "BASE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def make_ask_command(*assignments, target="ask"):
    """The arguments `make <target> <assignments>` would run python with (setup taken as done): the
    recipe make prints, run by the shell with a python that prints its arguments."""
    run = subprocess.run(["make", "-n", "-o", "setup", target, *assignments], cwd=REPO, capture_output=True,
                         text=True, env=MAKE_ENV)
    assert run.returncode == 0, run.stderr
    [recipe] = [line for line in run.stdout.splitlines() if "llm_fft.ask" in line]
    shell = subprocess.run(["bash", "-c", 'python() { printf "%s\\0" python "$@"; }; ' + recipe],
                           capture_output=True, text=True, check=True)
    return shell.stdout.split("\0")[:-1]


@pytest.mark.parametrize("question", ["What does $HOME mean?", "가격은 $5인가요?", 'Is it "A" or "B"?',
                                      "It's `ls`?", r"a\b $$(x) $(shell echo no) 100%"])
def test_make_ask_passes_the_question_as_typed(question):
    assert make_ask_command(f"Q={question}")[-4:] == ["python", "-m", "llm_fft.ask", question]


def test_make_ask_joins_a_question_typed_over_lines():
    # make would end the command at a raw line break: the shell saw an unterminated quote.
    typed = make_ask_command("Q=별무리섬의 인구는\n  몇 명인가요?\n")[-1]
    assert typed == "별무리섬의 인구는\n  몇 명인가요?\n" and one_line(typed) == "별무리섬의 인구는 몇 명인가요?"


def test_ask_joins_a_question_typed_over_lines_and_keeps_a_one_line_one_as_typed():
    assert one_line("별무리섬의 인구는\r\n  몇 명인가요?\n") == "별무리섬의 인구는 몇 명인가요?"
    assert one_line("  Who  founded Zorp? ") == "Who  founded Zorp?"  # spaces inside as typed


def test_make_run_notes_a_params_file_that_differs_from_the_last_commit(tmp_path):
    # dvc exp run leaves its -S values in params.yaml: a later plain `make run` would quietly run them.
    run = subprocess.run(["make", "-n", "-o", "setup", "run"], cwd=REPO, capture_output=True, text=True, env=MAKE_ENV)
    assert run.returncode == 0, run.stderr
    check = run.stdout.split("\ndvc repro\n")[0]
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "params.yaml").write_text("seed: 123\n", encoding="utf-8")
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)

    def said():
        return subprocess.run(["bash", "-c", check], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    assert said() == ""
    (tmp_path / "params.yaml").write_text("seed: 1\n", encoding="utf-8")
    assert said().startswith("note: params.yaml differs from the last commit")
    for folder in (tmp_path / "new", tmp_path / "not-git"):  # no commit yet; no repository at all
        folder.mkdir()
        (folder / "params.yaml").write_text("seed: 1\n", encoding="utf-8")
    subprocess.run(["git", "init", "-q", str(tmp_path / "new")], check=True)
    assert subprocess.run(["bash", "-c", check], cwd=tmp_path / "new", capture_output=True, text=True).stdout == ""
    outside = {**MAKE_ENV, "GIT_CEILING_DIRECTORIES": str(tmp_path)}
    assert subprocess.run(["bash", "-c", check], cwd=tmp_path / "not-git", capture_output=True, text=True,
                          env=outside).stdout == ""


def test_make_ask_base_is_1_or_nothing():
    assert "--base" in make_ask_command("Q=x", "BASE=1")
    assert "--base" not in make_ask_command("Q=x", "BASE=0")
    assert "--base" not in make_ask_command(target="chat")
    run = subprocess.run(["make", "-n", "-o", "setup", "chat", "BASE=yes"], cwd=REPO, capture_output=True, text=True,
                         env=MAKE_ENV)
    assert run.returncode != 0 and "BASE=yes: write BASE=1 for the base model" in run.stderr


def test_ask_names_what_changed_since_the_evaluation_it_repeats(tmp_path):
    from llm_fft.ask import changed_since
    lock = tmp_path / "dvc.lock"
    # As DVC writes it: sections and dotted keys (finetune.lr: ask does not read it); models/final as measured and written.
    lock.write_text("""stages:
  interpolate:
    outs:
    - path: models/final
      md5: aaa.dir
  final_eval:
    deps:
    - path: models/final
      md5: aaa.dir
    params:
      params.yaml:
        refusal: 모르겠습니다.
        evaluate:
          batch_size: 64
          gate: true
        prompt.style: custom_tokens
        finetune.lr: 5e-05
""", encoding="utf-8")
    params = {"refusal": "모르겠습니다.", "evaluate": {"batch_size": 64, "gate": True}, "prompt": {"style": "custom_tokens"},
              "finetune": {"lr": 5e-05}}
    final = ("models/final", "interpolate")
    assert changed_since("final_eval", params, lock, final) == []
    params["evaluate"]["batch_size"] = 8  # ask answers one at a time: no difference to it
    assert changed_since("final_eval", params, lock, final) == []
    params["evaluate"]["gate"] = False
    params["prompt"]["style"] = "plain"
    assert changed_since("final_eval", params, lock, final) == ["evaluate.gate: True -> False",
                                                                "prompt.style: 'custom_tokens' -> 'plain'"]
    lock.write_text(lock.read_text(encoding="utf-8").replace("md5: aaa.dir", "md5: bbb.dir", 1), encoding="utf-8")
    assert changed_since("final_eval", params, lock, final)[-1] == (
        "models/final: rewritten by interpolate after final_eval measured it (a repro that stopped between them?)")
    assert changed_since("baseline_eval", params, lock) == []  # not run yet: nothing to compare
    assert changed_since("final_eval", params, tmp_path / "none.lock") == []
