"""Budgets and --dry-run cover the whole pipeline (storyloom.planning): a
studio job's later stages are planned from its books before anything runs,
expected and worst case (every rewrite taken), and the up-front budget check
refuses a budget that one planned attempt of a later stage cannot fit in."""

from __future__ import annotations

import json

import pytest

from storyloom import api
from storyloom.errors import UsageError

SETTINGS = """\
models:
  sim: {provider: simulated, latency_ms: 1, output_tokens: 50, seed: 5, price: {input: 1.0, output: 10.0}}
default_models: [sim]
progress: []
reports: []
"""
PROJECT = """\
project_id: {pid}
title: Book {pid}
language: en
genre: mystery
premise: A keeper hears Morse from a trawler that sank in 1974.
style: {{tone: brooding}}
chapters: 3
chapter_length: {length}
"""
JOB = """\
job_id: plan
job_type: character_generation
{budget}then:
  - {{job_type: plot_outlining}}
  - {{job_type: chapter_writing}}
{qc}  - {{job_type: export}}
vars: {{max_rewrites: {rewrites}}}
items:
  - {{item_id: short, project_id: short}}
  - {{item_id: long, project_id: long}}
"""


def studio(loom, *, rewrites=2, qc=True, budget=None):
    loom.write("storyloom.yaml", SETTINGS)
    loom.write("projects/short.yaml", PROJECT.format(pid="short", length=100))
    loom.write("projects/long.yaml", PROJECT.format(pid="long", length=1500))
    return loom.write("job.yaml", JOB.format(rewrites=rewrites, qc="  - {job_type: qc_processing}\n" if qc else "",
                                             budget=f"budget_usd: {budget}\n" if budget is not None else ""))


def estimate(loom, path, **options):
    return api.estimate_job(path, options=loom.options(settings_file=str(loom.path / "storyloom.yaml"), **options))


def test_the_dry_run_plans_every_stage_of_each_book_expected_and_worst(loom):
    plan = estimate(loom, studio(loom))
    counts = {name: (s.items, s.worst_items) for name, s in plan.stages.items()}
    assert counts == {"character_generation": (2, 2), "plot_outlining": (2, 2), "chapter_writing": (6, 18),
                      "qc_processing": (6, 18), "export": (2, 2)}
    assert plan.unplanned_stages == []
    rows = {row.item_id: row for row in plan.items}
    # chapter 1, then one row for chapters 2..3 (their stand-in requests are alike)
    assert [r.item_id for r in plan.items if r.project_id == "short" and r.job_type == "chapter_writing"] == [
        "short-ch1", "short-ch1-r1", "short-ch2..3", "short-ch2..3-r1"]
    assert (rows["short-ch1-r1"].count, rows["short-ch1-r1"].worst_count) == (0, 2)
    assert (rows["short-ch2..3-r1"].count, rows["short-ch2..3-r1"].worst_count) == (0, 4)
    assert (rows["short-ch2..3-qc"].count, rows["short-ch2..3-qc"].worst_count) == (2, 6)
    # the requests are the real ones over the planned book: chapter 2 carries chapter 1's ending and
    # summary, a rewrite the version it rewrites, QC the chapter, so they grow with chapter_length
    assert rows["short-ch2..3"].prompt_tokens > rows["short-ch1"].prompt_tokens
    assert rows["short-ch2..3-r1"].prompt_tokens > rows["short-ch2..3"].prompt_tokens
    assert rows["long-ch1-qc"].prompt_tokens > rows["short-ch1-qc"].prompt_tokens + 1000
    assert rows["long-ch1"].max_tokens > rows["short-ch1"].max_tokens  # room for the planned length
    assert rows["short-export"].model is None and rows["short-export"].worst_usd == 0.0  # code, not a model
    assert plan.worst_usd == pytest.approx(sum(r.worst_count * r.worst_usd for r in plan.items))
    assert plan.expected_usd == pytest.approx(sum(r.count * r.expected_usd for r in plan.items))
    assert plan.stages["chapter_writing"].worst_usd > 3 * plan.stages["chapter_writing"].expected_usd
    as_json = json.loads(json.dumps(plan.as_dict()))
    assert as_json["stages"]["qc_processing"]["worst_items"] == 18 and as_json["total_items"] == 18


def test_without_qc_or_rewrites_the_worst_case_is_the_expected_one(loom):
    for plan in (estimate(loom, studio(loom, rewrites=0)), estimate(loom, studio(loom, qc=False))):
        assert (plan.stages["chapter_writing"].items, plan.stages["chapter_writing"].worst_items) == (6, 6)
        assert not any(row.item_id.endswith("-r1") for row in plan.items)
    assert estimate(loom, studio(loom, qc=False)).stages.get("qc_processing") is None


def test_the_dry_run_text_names_the_stages(loom, capsys):
    from storyloom.cli import main

    path = studio(loom)
    assert main(["run", str(path), "--dry-run", "--state-dir", str(loom.state_dir),
                 "--settings", str(loom.path / "storyloom.yaml")]) == 0
    out = capsys.readouterr().out
    assert "2 item(s) to run, then 16 planned in 4 later stage(s) (up to 40)" in out, out
    assert "  short-ch1-r1 x0-2  -> sim  (chapter_writing, " in out
    assert "  short-ch2..3-qc x2-6  -> sim  (qc_processing, " in out
    assert "  stage qc_processing: 6 item(s), up to 18; $" in out
    assert not loom.state_dir.exists()  # a dry run stores nothing


def test_a_stage_that_plans_nothing_is_named_not_counted(loom):
    from sample_plugins import pipeline, scripted

    loom.write("storyloom.yaml", "models:\n  s1: {provider: scripted, script: {}}\ndefault_models: [s1]\n")
    path = loom.write("job.yaml", "job_id: p\njob_type: pipe_plan\nthen: [{job_type: pipe_write}]\n"
                                  "items:\n  - {item_id: a, project_id: a}\n")
    plan = api.estimate_job(path, options=loom.options(settings_file=str(loom.path / "storyloom.yaml")),
                            plugins=(scripted, pipeline))
    assert plan.unplanned_stages == ["pipe_write"] and list(plan.stages) == ["pipe_plan"]


def test_the_budget_check_refuses_a_budget_a_later_stage_cannot_fit_in(loom):
    rows = estimate(loom, studio(loom)).items
    first = max(r.worst_usd for r in rows if r.job_type == "character_generation")
    dearest = max(rows, key=lambda r: r.worst_usd)
    assert dearest.job_type == "chapter_writing" and dearest.worst_usd > first  # the long book's rewrite
    path = studio(loom, budget=round((first + dearest.worst_usd) / 2, 6))  # stage 0 alone would fit
    message = (rf"cannot cover one attempt at item '{dearest.item_id}' \(stage chapter_writing, planned\), "
               rf"whose worst case is \${dearest.worst_usd:.4f}")
    with pytest.raises(UsageError, match=message):
        api.validate_job(path, options=loom.options(settings_file=str(loom.path / "storyloom.yaml")))
    with pytest.raises(UsageError, match=message):
        estimate(loom, path)
    path = studio(loom, budget=round(dearest.worst_usd * 1.01, 6))
    assert estimate(loom, path).budget_usd == round(dearest.worst_usd * 1.01, 6)  # every planned attempt fits


def test_an_item_without_a_project_file_plans_what_its_next_stage_chains(loom):
    loom.write("storyloom.yaml", SETTINGS)
    path = loom.write("job.yaml", "job_id: one\njob_type: chapter_writing\n"
                                  "then: [{job_type: qc_processing}, {job_type: export}]\n"
                                  "items:\n  - {item_id: a, title: Story A, genre: fantasy, chapter_num: 1}\n")
    plan = estimate(loom, path)
    # as the run does: the chapter's QC (qc_processing's items_after), and no export (nothing makes one)
    assert [(r.item_id, r.job_type) for r in plan.items] == [("a", "chapter_writing"), ("a-qc", "qc_processing")]
    assert plan.stages["export"].worst_items == 0
