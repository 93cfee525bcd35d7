"""llm_fft.seeds without DVC: each seed's numbers are collected, summarised, and written after every
seed, so a series that fails or is stopped keeps the seeds it finished."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from llm_fft import seeds


def fake_runs(monkeypatch, tmp_path, results):
    """Run seeds.main in tmp_path with `dvc exp run` replaced: the i-th call writes results[i]'s
    final.json (or fails, for None)."""
    monkeypatch.chdir(tmp_path)
    calls = iter(results)

    def run(command):
        assert command[:4] == ["dvc", "exp", "run", "-S"]
        result = next(calls)
        if result is None:
            return SimpleNamespace(returncode=1)
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics/final.json").write_text(json.dumps(result), encoding="utf-8")
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(seeds, "provenance", lambda: {"commit": "abc", "machine": "test"})


def test_mean_min_max_over_seeds(monkeypatch, tmp_path, capsys):
    fake_runs(monkeypatch, tmp_path, [{"heldout": {"states_key_fact": 0.5}}, {"heldout": {"states_key_fact": 0.7}}])
    monkeypatch.setattr(sys, "argv", ["seeds", "--name", "x", "--seeds", "1", "2", "-S", "finetune.lr=1e-4"])
    seeds.main()
    written = json.loads((tmp_path / "metrics/seeds/x.json").read_text(encoding="utf-8"))
    assert written["seeds"] == [1, 2] and "unfinished" not in written
    assert written["settings"] == ["finetune.lr=1e-4"]
    assert written["summary"]["final.heldout.states_key_fact"] == {"mean": 0.6, "min": 0.5, "max": 0.7}
    assert [run["seed"] for run in written["runs"]] == [1, 2]
    assert "final.heldout.states_key_fact" in capsys.readouterr().out


def test_the_mean_is_not_rounded_to_the_metrics_own_decimals():
    # 3 seeds abstaining on 11, 11 and 12 of 12 questions: the mean 0.94447 is 0.944 at 3 decimals,
    # and 0.945 if it had first been rounded to the 4 decimals each run's metric has.
    mean = seeds.summarise([{"abstained": 0.9167}, {"abstained": 0.9167}, {"abstained": 1.0}])["abstained"]["mean"]
    assert mean == 0.944467 and f"{mean:.3f}" == "0.944"


def test_a_failed_seed_keeps_the_seeds_before_it(monkeypatch, tmp_path):
    fake_runs(monkeypatch, tmp_path, [{"heldout": {"states_key_fact": 0.5}}, None])
    monkeypatch.setattr(sys, "argv", ["seeds", "--name", "x", "--seeds", "1", "2", "3"])
    with pytest.raises(SystemExit, match="seed 2 failed.*holds the seeds before it"):
        seeds.main()
    written = json.loads((tmp_path / "metrics/seeds/x.json").read_text(encoding="utf-8"))
    assert written["seeds"] == [1] and written["unfinished"] == [2, 3]
    assert written["summary"]["final.heldout.states_key_fact"]["mean"] == 0.5


def test_a_record_that_exists_is_never_replaced(monkeypatch, tmp_path):
    fake_runs(monkeypatch, tmp_path, [{"heldout": {"states_key_fact": 0.5}}])
    (tmp_path / "metrics/seeds").mkdir(parents=True)
    record = json.dumps({"seeds": [123, 1, 2], "commit": "abc", "runs": []})
    (tmp_path / "metrics/seeds/lr1e-4.json").write_text(record, encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["seeds", "--name", "lr1e-4", "--seeds", "1"])
    with pytest.raises(SystemExit, match=r"lr1e-4.json exists \(seeds 123 1 2, commit abc\): choose another NAME"):
        seeds.main()
    assert (tmp_path / "metrics/seeds/lr1e-4.json").read_text(encoding="utf-8") == record


def test_a_series_stopped_midway_is_finished_by_the_same_command_and_only_by_it(monkeypatch, tmp_path):
    fake_runs(monkeypatch, tmp_path, [{"heldout": {"states_key_fact": 0.5}}, None])
    monkeypatch.setattr(sys, "argv", ["seeds", "--name", "x", "--seeds", "1", "2", "-S", "finetune.lr=1e-4"])
    with pytest.raises(SystemExit, match="the same command runs the rest"):
        seeds.main()
    stopped = (tmp_path / "metrics/seeds/x.json").read_text(encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["seeds", "--name", "x", "--seeds", "1", "2"])  # other settings
    with pytest.raises(SystemExit, match=r"stopped midway .*seeds \[2\] not run"):
        seeds.main()
    assert (tmp_path / "metrics/seeds/x.json").read_text(encoding="utf-8") == stopped
    fake_runs(monkeypatch, tmp_path, [{"heldout": {"states_key_fact": 0.7}}])  # one run left: seed 2 alone
    monkeypatch.setattr(sys, "argv", ["seeds", "--name", "x", "--seeds", "1", "2", "-S", "finetune.lr=1e-4"])
    seeds.main()
    written = json.loads((tmp_path / "metrics/seeds/x.json").read_text(encoding="utf-8"))
    assert written["seeds"] == [1, 2] and "unfinished" not in written
    assert written["summary"]["final.heldout.states_key_fact"] == {"mean": 0.6, "min": 0.5, "max": 0.7}


def test_make_seeds_runs_the_seeds_of_the_committed_records_by_default():
    # 123 1 2: every record in metrics/seeds/ ran them, so a new setting compares seed by seed.
    run = subprocess.run(["make", "-n", "-o", "setup", "seeds", "NAME=x"], cwd=Path(__file__).parent.parent,
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                              if k not in ("SEEDS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")})
    assert "python -m llm_fft.seeds --name x --seeds 123 1 2" in run.stdout, run.stdout + run.stderr


def test_a_first_seed_that_fails_writes_nothing(monkeypatch, tmp_path):
    fake_runs(monkeypatch, tmp_path, [None])
    monkeypatch.setattr(sys, "argv", ["seeds", "--name", "x", "--seeds", "1"])
    with pytest.raises(SystemExit, match="nothing written"):
        seeds.main()
    assert not (tmp_path / "metrics/seeds/x.json").exists()
