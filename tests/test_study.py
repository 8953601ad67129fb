"""The per-dataset study table (recaug_spark/train/study.py) on planted run files with known answers."""

from __future__ import annotations

import json

import pytest

from recaug_spark.train.study import read_runs, strongest_baseline, study_table, worse_segments


def _run(variant: str, loss: str, seed: int, valid: float, test: float, tail: float = 0.02,
         best_epoch: int = 9, cap_hit: bool = False) -> dict:
    return {"variant": variant, "seed": seed, "loss": loss, "steps_per_epoch": 140, "best_epoch": best_epoch,
            "cap_hit": cap_hit, "valid": {"ndcg@10": valid}, "test": {"ndcg@10": test, "hr@10": 2 * test},
            "test_breakdown": {"tail": {"ndcg@10": tail}, "head": {"ndcg@10": 0.05 + 0.001 * seed}}}


def _write(path, runs) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    return path


@pytest.fixture
def study(tmp_path):
    # the BCE baseline has the better *test* score but the worse validation score: CE must be chosen
    bce = [_run("baseline", "bce", s, valid=0.030, test=0.0330 + 0.0001 * s) for s in (1, 2, 3)]
    ce = [_run("baseline", "ce", s, valid=0.039, test=0.0300 + 0.0002 * s) for s in (1, 2, 3)]
    # +10% on every seed overall, but the tail targets lose 50% on every seed
    better = [_run("contrastive", "ce", s, valid=0.040, test=1.1 * (0.0300 + 0.0002 * s), tail=0.01 + 0.0001 * s)
              for s in (1, 2, 3)]
    same = [_run("weighted", "ce", s, valid=0.039, test=0.0300 + 0.0002 * s + (0.0003, -0.0003, 0.0001)[s - 1])
            for s in (1, 2, 3)]
    one_seed = [_run("pretrain", "ce", 1, valid=0.041, test=0.0400)]
    return [_write(tmp_path / f"{name}.runs.jsonl", runs)
            for name, runs in {"bce": bce, "ce": ce, "cl": better, "w": same, "p": one_seed}.items()]


def test_the_strongest_baseline_is_chosen_on_validation_not_test(study):
    arms = read_runs(study)
    assert sorted(arms) == ["baseline (bce)", "baseline (ce)", "contrastive (ce)", "pretrain (ce)", "weighted (ce)"]
    assert strongest_baseline(arms, "ndcg@10") == "baseline (ce)"


def test_each_arm_gets_a_sentence_from_its_paired_interval(study):
    table = study_table(read_runs(study))
    lines = table.splitlines()
    assert lines[0].startswith("Strongest baseline (chosen on validation ndcg@10): **baseline (ce)**")
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines if line.startswith("| ")}
    assert "+10.0% [+9.8%, +10.2%] *" in rows["contrastive (ce)"]  # paired: differences 10% of each seed's base
    sentences = [line for line in lines if line.startswith("- ")]
    # the better test score of the weaker-on-validation baseline is reported, not used to choose
    assert sentences[0].startswith("- baseline (bce): helps, test ndcg@10 +9.2%")
    helps = next(s for s in sentences if s.startswith("- contrastive (ce)"))
    assert helps.startswith("- contrastive (ce): helps, test ndcg@10 +10.0%")
    assert "Significantly worse on: tail -" in helps  # the planted tail loss is named
    assert any(s.startswith("- weighted (ce): no measurable effect") for s in sentences)
    assert any(s.startswith("- pretrain (ce): undecided") for s in sentences)  # one seed: no interval


def test_worse_segments_names_only_significant_losses(study):
    arms = read_runs(study)
    assert [s.split()[0] for s in worse_segments(arms, "contrastive (ce)", "baseline (ce)", "ndcg@10")] == ["tail"]
    assert worse_segments(arms, "weighted (ce)", "baseline (ce)", "ndcg@10") == []


def test_a_run_saved_twice_or_another_epoch_length_is_refused(tmp_path):
    run = _run("baseline", "ce", 1, 0.03, 0.03)
    with pytest.raises(ValueError, match="saved twice"):
        read_runs([_write(tmp_path / "a.runs.jsonl", [run, run])])
    other = {**_run("baseline", "bce", 1, 0.03, 0.03), "steps_per_epoch": 99}
    with pytest.raises(ValueError, match="different epoch lengths"):
        read_runs([_write(tmp_path / "b.runs.jsonl", [run]), _write(tmp_path / "c.runs.jsonl", [other])])
