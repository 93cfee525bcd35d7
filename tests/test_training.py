"""finetune's opt-in training modes (llm_fft.training, llm_fft.batching.collate_packed): packing with
boundary-aware attention, length-grouped batches, gradient checkpointing, torch.compile and pure bf16.

Each mode must train the same thing as the default, so each is checked against it on tiny random
models: same loss and gradients (or, for pure bf16, the documented rounding risk).
"""

import contextlib
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import Gemma3TextConfig, LlamaConfig
from transformers.trainer_pt_utils import LengthGroupedSampler

from conftest import record, tiny
from llm_fft.batching import collate, collate_packed
from llm_fft.training import make_optimizer, master_dtype, speed_up, supervised_token_loss, train_step

EXAMPLES = [record(3, 4, 1), record(5, 2, 20), record(2, 6, 40)]


def loss_and_grads(model, batch, loss_fn=supervised_token_loss):
    loss = loss_fn(model, batch)
    return loss.detach(), torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])


def assert_close_results(a, b, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    for g_a, g_b in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(g_a, g_b, rtol=rtol, atol=atol)


MODELS = {
    "llama": lambda: tiny(LlamaConfig),
    # Gemma 3 mixes sliding-window and full attention layers; a window of 3 is shorter than the
    # examples, so both kinds of mask are exercised.
    "gemma3": lambda: tiny(Gemma3TextConfig, sliding_window=3, layer_types=["sliding_attention", "full_attention"]),
}


@pytest.mark.parametrize("name", MODELS)
def test_a_packed_batch_trains_exactly_like_the_padded_batch(name):
    model = MODELS[name]()
    packed = collate_packed(EXAMPLES)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in EXAMPLES))  # no padding at all
    assert "attention_mask" not in packed
    padded = loss_and_grads(model, collate(EXAMPLES, pad_id=0))
    assert_close_results(loss_and_grads(model, packed), padded)
    # transformers' own loss on the packed row agrees too (the fallback path of supervised_token_loss).
    assert_close_results(loss_and_grads(model, packed, lambda m, b: m(**b).loss), padded)


@pytest.mark.parametrize("name", MODELS)
def test_num_items_divides_the_summed_loss_as_transformers_does(name):
    # finetune with N processes: each divides its sum by the whole batch's count over N.
    model, batch = MODELS[name](), collate(EXAMPLES, pad_id=0)
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    mean = supervised_token_loss(model, batch)
    ours = supervised_token_loss(model, batch, num_items=2.5)
    standard = model(**batch, num_items_in_batch=2.5).loss  # the path DDP and FSDP models take
    torch.testing.assert_close(ours, mean * supervised / 2.5)
    torch.testing.assert_close(standard, ours)


@pytest.mark.parametrize("name", MODELS)
def test_without_restarting_positions_the_examples_would_see_each_other(name):
    # The control for the test above: the same row read as one long sequence gives another loss,
    # so equal losses there mean the attention really stopped at each example's boundary.
    model = MODELS[name]()
    packed = collate_packed(EXAMPLES)
    one_sequence = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    leaked = loss_and_grads(model, one_sequence)[0]
    assert abs(leaked - loss_and_grads(model, collate(EXAMPLES, pad_id=0))[0]) > 1e-3


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    batch = collate(EXAMPLES, pad_id=0)
    plain = loss_and_grads(tiny(LlamaConfig), batch)
    checkpointed = speed_up(tiny(LlamaConfig), gradient_checkpointing=True, compile_decoder=False)
    assert checkpointed.is_activation_checkpointing
    assert_close_results(loss_and_grads(checkpointed, batch), plain)


@pytest.mark.slow
def test_compiled_decoder_gives_the_same_loss_and_gradients():
    batch = collate(EXAMPLES, pad_id=0)
    plain = loss_and_grads(tiny(LlamaConfig), batch)
    compiled = speed_up(tiny(LlamaConfig), gradient_checkpointing=False, compile_decoder=True)
    assert compiled.get_decoder()._compiled_call_impl is not None
    assert_close_results(loss_and_grads(compiled, batch), plain, rtol=1e-4, atol=1e-5)
    # Compiled in place: the weights keep their names, so save_pretrained writes a normal model.
    assert set(compiled.state_dict()) == set(tiny(LlamaConfig).state_dict())


def test_length_grouped_batches_hold_every_example_once_with_less_padding():
    lengths = [30, 47, 31, 45, 33, 46, 29, 44, 35, 40, 32, 41] * 4  # like data/trained_qa.jsonl: 29 to 47 tokens
    batch_size = 4

    def padded_tokens(order):
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    shuffled = list(torch.randperm(len(lengths), generator=torch.Generator().manual_seed(124)))
    grouped = list(LengthGroupedSampler(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(124)))
    assert sorted(grouped) == list(range(len(lengths)))
    assert padded_tokens(grouped) < padded_tokens(shuffled)
    assert padded_tokens(grouped) - sum(lengths) < (padded_tokens(shuffled) - sum(lengths)) / 2


def test_pure_bf16_trains_but_rounds_small_updates_away():
    assert master_dtype("bf16-autocast") == master_dtype("fp32") == master_dtype("auto") == torch.float32
    assert master_dtype("bf16-pure") == torch.bfloat16
    batch = collate(EXAMPLES, pad_id=0)
    unchanged = {}
    for precision in ("fp32", "bf16-pure"):
        model = tiny(LlamaConfig).to(master_dtype(precision))
        # Embedding rows of tokens absent from the batch get no gradient and rightly stay put.
        weights = [p for name, p in model.named_parameters() if "embed_tokens" not in name]
        before = [p.detach().clone() for p in weights]
        optimizer = make_optimizer(model, lr=1e-5, weight_decay=0.0)  # fused AdamW runs on bf16 weights too
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        loss, _ = train_step(model, batch, optimizer, scheduler, 1.0, contextlib.nullcontext())
        assert 0 < loss < 10
        moved = sum((p.detach() != b).sum().item() for p, b in zip(weights, before))
        unchanged[precision] = 1 - moved / sum(b.numel() for b in before)
    # Adam's first step moves every weight by ~lr: fp32 keeps all of those updates, bf16 loses most.
    assert unchanged["fp32"] < 0.01
    assert unchanged["bf16-pure"] > 0.5


def test_each_epoch_mixes_every_task_example_with_a_fresh_seeded_rehearsal_draw():
    from llm_fft.training import epoch_examples
    task = [{"id": f"t{i}"} for i in range(10)]
    rehearsal = [{"id": f"r{i}"} for i in range(3)]
    assert epoch_examples(task, rehearsal, 0, seed=1, epoch=1) == task  # ratio 0: the task alone
    assert epoch_examples(task, [], 0.5, seed=1, epoch=1) == task  # no rehearsal text: nothing to mix in
    first = epoch_examples(task, rehearsal, 0.5, seed=1, epoch=1)
    assert first[:10] == task and len(first) == 15  # round(0.5 x 10) rehearsal texts
    drawn = [r["id"] for r in first[10:]]
    assert sorted(drawn[:3]) == ["r0", "r1", "r2"]  # a short pool is used whole before any text repeats
    assert epoch_examples(task, rehearsal, 0.5, seed=1, epoch=1) == first  # seeded
    others = [[r["id"] for r in epoch_examples(task, rehearsal, 0.5, seed=s, epoch=e)[10:]] for s, e in ((1, 2), (2, 1))]
    assert drawn not in others  # another epoch or seed draws another order


def test_a_weight_snapshot_is_a_copy_that_training_leaves_alone():
    from llm_fft.training import snapshot_weights
    model = tiny(LlamaConfig)
    snapshot = snapshot_weights(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    assert all(not torch.equal(snapshot[name], tensor) for name, tensor in model.state_dict().items())


def test_a_checkpoint_of_another_run_is_refused_by_raising_not_exiting(tmp_path):
    from llm_fft.training import TrainingError, load_checkpoint, save_checkpoint
    path = tmp_path / "checkpoint.pt"
    assert load_checkpoint(path, {"finetune.lr": 3e-4}) is None  # none yet: start from the beginning
    scheduler = torch.optim.lr_scheduler.LambdaLR(make_optimizer(torch.nn.Linear(2, 2), 1e-3, 0.0), lambda step: 1.0)
    save_checkpoint(path, {"finetune.lr": 3e-4, "seed": 1}, 3, [], {}, {}, scheduler)
    assert load_checkpoint(path, {"finetune.lr": 3e-4, "seed": 1})["step"] == 3
    # The stage turns the error into its `error: ...` line; the library only raises.
    with pytest.raises(TrainingError, match=r"\(differs in: finetune\.lr\); refusing to resume it"):
        load_checkpoint(path, {"finetune.lr": 1e-4, "seed": 1})


def with_teacher(teacher, records, k):
    """The records as finetune holds rehearsal texts: each with its rows of the teacher's stored distributions."""
    from llm_fft.distill import load_teacher, save_teacher, teacher_top_k
    with tempfile.TemporaryDirectory() as folder:  # through the file, as the stage writes and finetune reads it
        path = Path(folder) / "teacher.safetensors"
        save_teacher(path, teacher_top_k(teacher, records, k, batch_size=2, pad_id=0, device="cpu"), records)
        return [{**r, "teacher": t} for r, t in zip(records, load_teacher(path, records))]


def perturbed(model, scale=0.05):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def full_kl_by_hand(model, teacher, batch):
    """KL(teacher || model) over the whole vocabulary, summed over the supervised positions."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    supervised = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        p_log = torch.log_softmax(teacher(**inputs).logits[:, :-1][supervised], -1)
    q_log = torch.log_softmax(model(**inputs).logits[:, :-1][supervised], -1)
    return (p_log.exp() * (p_log - q_log)).sum()


def test_the_stored_kl_is_the_live_teachers_when_k_covers_the_vocabulary():
    from llm_fft.distill import batch_teacher
    from llm_fft.training import distillation_loss
    teacher = tiny(LlamaConfig).eval().requires_grad_(False)
    model = perturbed(tiny(LlamaConfig))  # tiny() seeds: the same weights as the teacher, then moved
    rows = with_teacher(teacher, EXAMPLES, k=64)  # the whole vocabulary of tiny()
    batch = collate(rows, pad_id=0)
    expected = full_kl_by_hand(model, teacher, batch) / 10
    loss = distillation_loss(model, batch, batch_teacher(rows, "cpu"), num_items=10)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert loss.item() > 0
    loss.backward()
    assert all(p.grad is not None for name, p in model.named_parameters() if "embed_tokens" not in name)
    # Against the teacher itself it is zero.
    unmoved = tiny(LlamaConfig)
    assert distillation_loss(unmoved, batch, batch_teacher(rows, "cpu")).item() == pytest.approx(0.0, abs=1e-6)


def test_a_top_k_teacher_gives_a_smaller_kl_that_vanishes_only_at_the_teacher():
    from llm_fft.distill import batch_teacher
    from llm_fft.training import distillation_loss
    teacher = tiny(LlamaConfig).eval().requires_grad_(False)
    model = perturbed(tiny(LlamaConfig))
    full = with_teacher(teacher, EXAMPLES, k=64)
    top = with_teacher(teacher, EXAMPLES, k=4)
    batch = collate(top, pad_id=0)
    assert len(top[0]["teacher"][0][0]) == 4
    with torch.no_grad():
        full_loss = distillation_loss(model, batch, batch_teacher(full, "cpu")).item()
        top_loss = distillation_loss(model, batch, batch_teacher(top, "cpu")).item()
        at_teacher = distillation_loss(tiny(LlamaConfig), batch, batch_teacher(top, "cpu")).item()
    # Merging the other tokens into one outcome can only lose information (the KL's data
    # processing inequality), and keeps some: the rest term makes it more than the top tokens' part.
    assert 0 < top_loss < full_loss
    assert at_teacher == pytest.approx(0.0, abs=1e-6)


def test_distilled_rows_ignore_padding_and_rows_without_labels():
    from llm_fft.distill import batch_teacher
    from llm_fft.training import distillation_loss
    teacher = tiny(LlamaConfig).eval().requires_grad_(False)
    model = perturbed(tiny(LlamaConfig))
    rows = with_teacher(teacher, EXAMPLES, k=8)
    # Padding after an example (longer neighbours) changes nothing: masked by position, not by token id.
    alone, padded = collate(rows[:1], pad_id=0), {k: v[:1] for k, v in collate(rows, pad_id=0).items()}
    with torch.no_grad():
        torch.testing.assert_close(distillation_loss(model, alone, batch_teacher(rows[:1], "cpu")),
                                   distillation_loss(model, padded, batch_teacher(rows[:1], "cpu")))
    # A row without labels (Processes.unlabelled under DDP: a copy of a rehearsal row, teacher rows and
    # all) brings no teacher rows and adds nothing, beside another row or alone in its process.
    unlabelled = {**rows[1], "labels": [-100] * len(rows[1]["labels"])}
    with torch.no_grad():
        torch.testing.assert_close(
            distillation_loss(model, collate([rows[0], unlabelled], 0), batch_teacher([rows[0], unlabelled], "cpu")),
            distillation_loss(model, collate(rows[:1], 0), batch_teacher(rows[:1], "cpu")))
    lone = distillation_loss(model, collate([unlabelled], 0), batch_teacher([unlabelled], "cpu"), num_items=5)
    assert lone.item() == 0.0
    lone.backward()  # it still takes part in backward, as every process must under DDP


def test_stored_distributions_of_other_texts_or_an_unreadable_file_are_refused(tmp_path):
    from llm_fft.distill import load_teacher, save_teacher, teacher_top_k
    teacher = tiny(LlamaConfig).eval().requires_grad_(False)
    path = tmp_path / "teacher.safetensors"
    save_teacher(path, teacher_top_k(teacher, EXAMPLES, 8, batch_size=2, pad_id=0, device="cpu"), EXAMPLES)
    assert len(load_teacher(path, EXAMPLES)) == 3
    rerun = r"run `dvc repro teacher_distributions`"
    # Fewer texts, or the same lengths with other tokens (rehearsal.jsonl rewritten outside DVC)
    other = [{**EXAMPLES[0], "input_ids": [t + 1 for t in EXAMPLES[0]["input_ids"]]}, *EXAMPLES[1:]]
    for records in (EXAMPLES[:2], other):
        with pytest.raises(ValueError, match=f"holds the distributions of other texts .*: {rerun}"):
            load_teacher(path, records)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"cannot be read .*: {rerun}"):
        load_teacher(path, EXAMPLES)
    with pytest.raises(ValueError, match=f"cannot be read .*: {rerun}"):
        load_teacher(tmp_path / "missing.safetensors", EXAMPLES)


def test_a_step_with_distilled_rows_is_the_mean_over_every_supervised_token():
    from llm_fft.distill import batch_teacher
    from llm_fft.training import supervised_positions
    teacher = tiny(LlamaConfig).eval().requires_grad_(False)
    model = perturbed(tiny(LlamaConfig))
    # Two task rows and one rehearsal row with its stored distributions, in one batch.
    rows = EXAMPLES[:2] + with_teacher(teacher, EXAMPLES[2:], k=64)
    batch = collate(rows, pad_id=0)
    task, rehearsal = collate(EXAMPLES[:2], pad_id=0), collate(EXAMPLES[2:], pad_id=0)
    count = supervised_positions(batch)
    with torch.no_grad():
        expected = (supervised_token_loss(model, task, count) + full_kl_by_hand(model, teacher, rehearsal) / count).item()
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss, _ = train_step(model, batch, optimizer, scheduler, 1.0, contextlib.nullcontext(),
                         teacher=batch_teacher(rows, "cpu"))
    assert loss == pytest.approx(expected, rel=1e-5)
    # A batch of rehearsal rows alone is a step too, and so is one packed as finetune.packing does.
    alone = rows[2:]
    loss, _ = train_step(model, collate(alone, 0), optimizer, scheduler, 1.0, contextlib.nullcontext(),
                         teacher=batch_teacher(alone, "cpu"))
    assert loss > 0
    # Packed as finetune.packing does: a rehearsal text learns its first token too (labels == input_ids),
    # which the packing collator masks as an example boundary; the stored rows follow it.
    whole = {"input_ids": list(range(30, 37)), "labels": list(range(30, 37))}
    mixed = [*rows, *with_teacher(teacher, [whole], k=64)]
    with torch.no_grad():
        packed = distillation_loss_of(model, collate_packed(mixed), batch_teacher(mixed, "cpu"))
        padded = distillation_loss_of(model, collate(mixed, 0), batch_teacher(mixed, "cpu"))
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-6)


def distillation_loss_of(model, batch, teacher):
    from llm_fft.training import distillation_loss
    return distillation_loss(model, batch, teacher)


def test_checkpoints_are_due_by_minutes_of_training_or_by_steps():
    from stages.finetune import checkpoint_due
    alone = SimpleNamespace(agree=lambda flag: flag)
    by_time = {"checkpoint_minutes": 10, "checkpoint_every": 0}
    assert not checkpoint_due(by_time, 7, 599.0, alone)
    assert checkpoint_due(by_time, 7, 600.0, alone)
    by_steps = {"checkpoint_minutes": 0, "checkpoint_every": 4}
    assert checkpoint_due(by_steps, 8, 0.0, alone) and not checkpoint_due(by_steps, 7, 10_000.0, alone)
    both = {"checkpoint_minutes": 10, "checkpoint_every": 4}
    assert checkpoint_due(both, 8, 0.0, alone) and checkpoint_due(both, 7, 600.0, alone)
    assert not checkpoint_due(both, 7, 599.0, alone)
    assert not checkpoint_due({"checkpoint_minutes": 0, "checkpoint_every": 0}, 8, 10_000.0, alone)
    # With several processes the first one's clock decides for all, whatever this one's says.
    first_says_yes = SimpleNamespace(agree=lambda flag: True)
    assert checkpoint_due(by_time, 7, 1.0, first_says_yes)


@pytest.mark.parametrize("name", MODELS)
def test_answer_nll_is_transformers_loss_and_runs_each_distinct_record_once(name):
    """answer_nll (length-sorted batches, the head only where a token is learned) gives each record
    transformers' own loss; a repeated record, or one whose NLL is known, is not run again."""
    from llm_fft.nll import answer_nll, nll_key, record_nlls
    model = MODELS[name]().eval()
    records = [record(3, 4), record(6, 2, first_id=20), record(2, 7, first_id=30), record(3, 4)]
    with torch.no_grad():
        expected = [model(**collate([r], pad_id=0)).loss.item() for r in records]
    rows_run = []
    model.get_decoder().register_forward_hook(lambda module, args, output: rows_run.append(len(output[0])))
    per_record, total, count = answer_nll(model, records, 2, 0, "cpu")
    assert per_record == pytest.approx(expected, rel=1e-5)
    assert count == 4 + 2 + 7 + 4 and total == pytest.approx(sum(e * n for e, n in zip(expected, (4, 2, 7, 4))), rel=1e-5)
    assert sum(rows_run) == 3  # the repeated record ran once
    known = dict(zip(map(nll_key, records[:2]), record_nlls(model, records[:2], 2, 0, "cpu")))
    rows_run.clear()
    assert answer_nll(model, records, 2, 0, "cpu", known)[0] == pytest.approx(expected, rel=1e-5)
    assert rows_run == [1]  # only the record not known


def test_no_dev_questions_with_best_dev_loss_names_every_setting_to_change(tmp_path, monkeypatch):
    # Said before training: interpolate would stop only after it, on the same missing dev questions.
    from llm_fft.training import TrainingError
    from stages.finetune import load_data
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/trained_qa.jsonl").write_text('{"input_ids": [1, 2], "labels": [-100, 2]}\n', encoding="utf-8")
    (tmp_path / "data/statements_qa.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "data/dev_qa.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(TrainingError, match=r"select_epoch: last and, since .* interpolate\.weights: \[1\.0\]"):
        load_data({"select_epoch": "best_dev_loss", "rehearsal_ratio": 0, "rehearsal_loss": "kl", "batch_size": 4}, 123)
