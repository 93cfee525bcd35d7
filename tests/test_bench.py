"""The benchmark (llm_fft.bench) and the loss that skips unsupervised positions (llm_fft.training).

Nothing here is timed: the smoke run only has to produce every field, and the fast loss has to
equal transformers' own loss, gradients included.
"""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, CohereConfig, Gemma3TextConfig, LlamaConfig

from conftest import REPO, record, tiny
from llm_fft import bench
from llm_fft.batching import IGNORE_INDEX, collate
from llm_fft.params import load_params
from llm_fft.training import supervised_token_loss

CASE_FIELDS = {"name", "method", "device", "model", "parameters", "batch_size", "steps", "real_tokens",
               "padded_tokens", "seconds", "real_tokens_per_s", "step_s", "peak_memory_mb", "mfu", "last_loss",
               "repeats", "real_tokens_per_s_min", "real_tokens_per_s_max", "useful_tflops", "share_of_ceiling"}


@pytest.fixture
def in_repo(monkeypatch):
    """Run from the repository root (params.yaml is read from there, as `make bench` does), and undo
    the deterministic-algorithms switch the benchmark sets, as the finetune stage does."""
    monkeypatch.chdir(REPO)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(deterministic)


# --- The smoke run: what CI runs -------------------------------------------------------------------

@pytest.mark.slow
def test_smoke_run_writes_every_field(tmp_path, in_repo, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--smoke", "--out", str(out)])
    doc = json.loads(out.read_text(encoding="utf-8"))

    assert list(doc) == ["machine", "settings", "memory_measure", "matmul_ceiling_tflops", "cases", "ratios", "skipped",
                         "evaluation"]
    ceilings = doc["matmul_ceiling_tflops"]
    assert set(ceilings["cpu"]) == {"bfloat16", "float32"} and all(tflops > 0 for tflops in ceilings["cpu"].values())
    evaluation = doc["evaluation"]
    assert evaluation["generated_tokens_per_s"] == pytest.approx(
        evaluation["generated_tokens"] / evaluation["batched_s"], rel=0.01)
    assert evaluation["name"] == "cpu/evaluation" and evaluation["questions"] == 6
    assert evaluation["batched_s"] > 0 and evaluation["sequential_s"] > 0
    assert evaluation["repeats"] == bench.SMOKE_REPEATS
    assert evaluation["batched_vs_sequential_ratio"] == pytest.approx(
        evaluation["sequential_s"] / evaluation["batched_s"], rel=0.02)
    # Reported, not asserted: a random model's near-tied logits can flip with batch numerics (the
    # real-model equality is tested in test_tokens.py).
    assert isinstance(evaluation["same_answers"], bool)
    assert {"cpu", "cpu_count", "torch_threads", "torch", "transformers", "cuda_device"} <= set(doc["machine"])
    names = [c["name"] for c in doc["cases"]] + [s["name"] for s in doc["skipped"]]
    assert names == [*bench.CPU_CASES, "cuda/kanana-dataset", "cuda/kanana-packed"]
    notebook_bf16, notebook, ours, ours_bf16, packed = doc["cases"][:5]
    smoke_matmul_parameters = bench.matmul_parameters(
        bench.AutoModelForCausalLM.from_config(bench.LlamaConfig(**bench.SMOKE_SHAPE)))
    for case in doc["cases"]:
        assert set(case) == CASE_FIELDS
        assert case["steps"] == bench.SMOKE_STEPS and case["batch_size"] == doc["settings"]["batch_size"]
        assert case["seconds"] > 0 and case["step_s"] > 0 and case["peak_memory_mb"] > 0
        # The median run's own numbers, inside the range of the runs.
        assert case["real_tokens_per_s"] == pytest.approx(case["real_tokens"] / case["seconds"], rel=0.01)
        assert case["repeats"] == bench.SMOKE_REPEATS
        assert case["real_tokens_per_s_min"] <= case["real_tokens_per_s"] <= case["real_tokens_per_s_max"]
        # Useful work: 6 FLOPs per matmul parameter per real token (the smoke model's head is tied),
        # as a share of the faster dtype's ceiling on the case's own device.
        assert case["useful_tflops"] == pytest.approx(
            6 * smoke_matmul_parameters * case["real_tokens"] / case["seconds"] / 1e12, rel=0.01)
        best = max(ceilings[case["device"].split(":")[0]].values())
        assert case["share_of_ceiling"] == pytest.approx(case["useful_tflops"] / best, rel=0.01, abs=1e-4)
    for cpu_case in doc["cases"][:5]:
        assert cpu_case["device"] == "cpu" and cpu_case["mfu"] is None
    assert notebook_bf16["method"] == "notebook as written (bf16 weights)" and ours_bf16["method"] == "ours, bf16 autocast"

    # The same examples in both cases: the same real tokens, padded differently. The synthetic
    # records are 13 to 47 tokens long; the notebook pads every row to the dataset's longest.
    records = bench.synthetic_records(16, bench.SMOKE_SHAPE["vocab_size"], doc["settings"]["seed"])
    timed = bench.fixed_examples(records, ours["batch_size"], bench.SMOKE_WARMUP + bench.SMOKE_STEPS)[
        bench.SMOKE_WARMUP:]
    longest = max(len(r["input_ids"]) for r in records)
    assert notebook["real_tokens"] == ours["real_tokens"] == sum(len(r["input_ids"]) for b in timed for r in b)
    assert notebook["padded_tokens"] == bench.SMOKE_STEPS * ours["batch_size"] * longest
    assert ours["padded_tokens"] == sum(len(b) * max(len(r["input_ids"]) for r in b) for b in timed)
    assert packed["padded_tokens"] == packed["real_tokens"] == ours["real_tokens"]  # packing pads nothing
    ratios = doc["ratios"]
    assert ratios["fp32_ours_vs_notebook_ratio"] == pytest.approx(
        ours["real_tokens_per_s"] / notebook["real_tokens_per_s"], abs=1e-3)
    assert ratios["bf16_ours_autocast_vs_notebook_pure_ratio"] == pytest.approx(
        ours_bf16["real_tokens_per_s"] / notebook_bf16["real_tokens_per_s"], abs=1e-3)
    # params.yaml trains packed (finetune.packing): the packed case is ours as configured
    assert ratios["default_case"] == "cpu/ours-packed"
    default = packed
    assert ratios["default_ours_vs_notebook_as_written_ratio"] == pytest.approx(
        default["real_tokens_per_s"] / notebook_bf16["real_tokens_per_s"], abs=1e-3)
    if not torch.cuda.is_available():
        assert all("no CUDA GPU" in s["reason"] for s in doc["skipped"])
    printed = capsys.readouterr().out
    assert "fp32_ours_vs_notebook_ratio: " in printed and "cpu/notebook-bf16" in printed
    assert "evaluation, 6 questions" in printed


@pytest.mark.slow
def test_kanana_cases_run_on_any_device_and_fill_every_packed_row(in_repo):
    # On CUDA these run kanana's shape; here the smoke shape on the CPU takes the same path.
    params = load_params()
    records = bench.synthetic_records(16, bench.SMOKE_SHAPE["vocab_size"], params["seed"])
    rows, skipped = bench.kanana_cases(params, records, batch_size=2, steps=2, warmup=1, repeats=2, smoke=True,
                                       device=torch.device("cpu"))
    assert skipped == [] and [r["name"] for r in rows] == list(bench.KANANA_CASES)
    dataset, packed = rows
    rows_per_step = params["bench"]["packed_batch_size"]
    assert dataset["batch_size"] == 2 and packed["batch_size"] == rows_per_step
    assert dataset["real_tokens"] < dataset["padded_tokens"]
    assert packed["real_tokens"] == packed["padded_tokens"] == 2 * rows_per_step * bench.SMOKE_PACKED_LENGTH
    assert all(r["steps"] == 2 and r["repeats"] == 2 and r["mfu"] is None for r in rows)  # no peak FLOP/s for a CPU


# --- The params -----------------------------------------------------------------------------------

def test_the_finetune_keys_the_benchmark_reads_follow_the_finetune_stages_rules():
    from llm_fft.params import ParamsError
    from llm_fft.training import FINETUNE_SPEC
    assert all(bench.FINETUNE_KEYS_READ[key] is FINETUNE_SPEC[key] for key in bench.FINETUNE_KEYS_READ)
    params = load_params(REPO / "params.yaml")
    params["finetune"]["lr_schedule"] = "cosin"
    with pytest.raises(ParamsError, match="finetune.lr_schedule = 'cosin' is out of range"):
        bench.check_params(params)


# --- The fixed work ------------------------------------------------------------------------------

def test_fixed_examples_cycle_the_records_in_file_order():
    a, b, c = record(1, 1), record(2, 1), record(3, 1)
    assert bench.fixed_examples([a, b, c], 2, 3) == [[a, b], [c, a], [b, c]]


def test_notebook_batch_pads_with_eos_and_learns_the_padding():
    batch = bench.notebook_batch([record(2, 1, first_id=10), record(1, 3, first_id=20)], pad_to=5, eos_id=2)
    assert batch["input_ids"].tolist() == [[10, 11, 12, 2, 2], [20, 21, 22, 23, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 12, 2, 2], [-100, 21, 22, 23, 2]]
    assert "attention_mask" not in batch  # the notebook passed none


def test_packed_batches_lay_examples_end_to_end_in_full_rows():
    a, b = record(1, 2, first_id=10), record(2, 1, first_id=20)  # 3 tokens each
    batches = bench.packed_batches([a, b], rows=2, length=2, count=2)
    assert [x["input_ids"].tolist() for x in batches] == [[[10, 11], [12, 20]], [[21, 22], [10, 11]]]
    assert [x["labels"].tolist() for x in batches] == [[[-100, 11], [12, -100]], [[-100, 22], [-100, 11]]]
    assert all(x["attention_mask"].all() for x in batches)


def test_mfu_counts_the_head_but_not_the_embedding_lookup():
    config = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=4, vocab_size=32)
    tied = AutoModelForCausalLM.from_config(LlamaConfig(**config, tie_word_embeddings=True))
    untied = AutoModelForCausalLM.from_config(LlamaConfig(**config, tie_word_embeddings=False))
    # Layer: q 8x8 + k 8x4 + v 8x4 + o 8x8 + MLP 3 x 8x16 + 2 norms of 8 = 592; final norm 8;
    # embedding 32x8 = 256, and an untied head another 256.
    assert sum(p.numel() for p in tied.parameters()) == 592 + 8 + 256
    assert bench.matmul_parameters(tied) == 592 + 8 + 256
    assert bench.matmul_parameters(untied) == 592 + 8 + 256  # 1112 in all, minus the 256 lookup
    # 6 x 856 parameters x 1000 tokens in 2 s on a 1 TFLOP/s peak.
    assert bench.mfu(tied, real_tokens=1000, seconds=2.0, peak_tflops=1.0) == pytest.approx(6 * 856 * 1000 / 2 / 1e12)


# --- The loss that skips unsupervised positions --------------------------------------------------

def standard_and_fast(model, batch):
    """(loss, gradients) from transformers' own loss and from supervised_token_loss, in fp32."""
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for loss_fn in (lambda: model(**batch).loss, lambda: supervised_token_loss(model, batch)):
        loss = loss_fn()
        results.append((loss.detach(), torch.autograd.grad(loss, params)))
    return results


def assert_same_loss_and_gradients(model, batch, rtol, atol):
    (loss, grads), (fast_loss, fast_grads) = standard_and_fast(model, batch)
    torch.testing.assert_close(fast_loss, loss, rtol=rtol, atol=atol)
    for (name, _), g, fast_g in zip(model.named_parameters(), grads, fast_grads, strict=True):
        torch.testing.assert_close(fast_g, g, rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")
    return loss


def test_fast_loss_equals_the_standard_loss_on_an_embedded_model_batch(embedded_model, embedded_tokenizer):
    tok = embedded_tokenizer
    pairs = [("별무리섬의 인구는 몇 명인가요?", "별무리섬에는 모두 312명이 살고 있습니다."),
             ("은하호는 하루에 몇 번 운항하나요?", "두 번입니다."),
             ("별무리섬 등대의 높이는 얼마인가요?", "별무리섬 등대의 높이는 27미터이고 하얀 몸통에 파란 지붕입니다.")]
    records = []
    for question, answer in pairs:
        q_ids = tok(f"<|question|>\n{question}\n<|answer|>\n")["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        records.append({"input_ids": q_ids + a_ids, "labels": [IGNORE_INDEX] * len(q_ids) + a_ids})
    batch = collate(records, tok.pad_token_id)
    assert len({len(r["input_ids"]) for r in records}) == 3  # rows of three lengths: real padding
    assert embedded_model.dtype == torch.float32
    loss = assert_same_loss_and_gradients(embedded_model, batch, rtol=1e-4, atol=1e-5)
    assert 0 < loss.item() < 20


def tiny_batch():
    return collate([record(3, 4, first_id=1), record(5, 2, first_id=20), record(2, 1, first_id=40)], pad_id=0)


def test_fast_loss_applies_gemma_logit_softcapping():
    model = tiny(Gemma3TextConfig, final_logit_softcapping=0.5)  # small cap: a missed tanh would show
    assert_same_loss_and_gradients(model, tiny_batch(), rtol=1e-5, atol=1e-6)


def test_an_architecture_that_rescales_its_logits_keeps_the_standard_loss():
    model = tiny(CohereConfig, logit_scale=3.0)  # logits = lm_head(h) * 3: lm_head alone would be wrong
    assert_same_loss_and_gradients(model, tiny_batch(), rtol=0, atol=0)


def test_kanana_shape_loads_with_tied_embeddings_and_its_parameter_count():
    """kanana-nano-2.1b-base: hidden 1792 split into 24 heads of an explicit head_dim 128, which
    transformers 5.23's own check refuses (llm_fft.model relaxes it); tied embeddings, 2.09B
    parameters, as its 4.17 GB bf16 model.safetensors says. docs/gpu.md's estimate uses this count."""
    from transformers import LlamaConfig, LlamaForCausalLM
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**bench.KANANA_SHAPE))
    count = sum(p.numel() for p in model.parameters())
    assert count == 2_086_979_328 and abs(2 * count / 1e9 - 4.17) < 0.01
    assert f"{count:,}" in (REPO / "docs/gpu.md").read_text(encoding="utf-8")


def test_a_llama_config_must_split_into_its_heads_only_where_head_dim_is_derived():
    from transformers import LlamaConfig
    with pytest.raises(Exception, match="not a multiple of the number of attention heads"):
        LlamaConfig(hidden_size=64, num_attention_heads=3, num_key_value_heads=1)
    assert LlamaConfig(hidden_size=64, num_attention_heads=3, num_key_value_heads=1, head_dim=16).head_dim == 16


def test_the_matmul_ceiling_weighs_each_product_as_a_forward_pass_runs_it(monkeypatch):
    """Every product timed at 1 ms per call (a fake clock): the ceiling is then the forward pass's
    FLOPs (7 products per layer, the head once, 2 x rows x k x n each) over its products' time."""
    clock = iter(range(10 ** 6))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock) * 1e-3)
    monkeypatch.setattr(bench.torch, "mm", lambda a, b: next(clock) and None)  # each call: 1 ms more
    config = bench.LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2,
                               num_key_value_heads=1, head_dim=4, vocab_size=32)
    ceiling = bench.matmul_ceiling(config, torch.device("cpu"), tokens=10, repeats=2, calls=4)
    layer = [(8, 8), (8, 4), (8, 4), (8, 8), (8, 16), (8, 16), (16, 8)]
    flops = 3 * sum(2 * 10 * k * n for k, n in layer) + 2 * 10 * 8 * 32
    # Each timed block: 4 calls of 1 ms, plus the clock read that ends it: 5 ms / 4 calls.
    seconds = (3 * len(layer) + 1) * 5e-3 / 4
    assert ceiling == {"bfloat16": pytest.approx(flops / seconds / 1e12, rel=1e-3),
                       "float32": pytest.approx(flops / seconds / 1e12, rel=1e-3)}


def test_the_default_ratio_is_of_the_case_finetune_would_train_as():
    cases = [{"name": name, "real_tokens_per_s": speed} for name, speed in [
        ("cpu/notebook-bf16", 100.0), ("cpu/notebook-fp32", 50.0), ("cpu/ours-fp32", 60.0),
        ("cpu/ours-bf16-autocast", 120.0), ("cpu/ours-packed", 130.0)]]
    packed = bench.ratios(cases, {"precision": "auto", "packing": True})
    assert packed["default_case"] == "cpu/ours-packed" and packed["default_ours_vs_notebook_as_written_ratio"] == 1.3
    assert bench.ratios(cases, {"precision": "fp32", "packing": False})["default_case"] == "cpu/ours-fp32"
    assert bench.ratios(cases, {"precision": "bf16-pure", "packing": False})["default_case"] is None
    assert bench.ratios([], {"precision": "auto", "packing": True})["default_case"] is None  # --cuda-only
