"""Failed work is re-runnable: ``storyloom resume JOB_ID --retry-failed [--kind KIND ...]``.

A job whose items failed for a reason since fixed (a revoked key, here the
fake server refusing every key until told otherwise) runs them again, each
keeping its attempt history and getting its whole ``max_retries`` afresh; a
resume with nothing to run says so instead of exiting without a word."""

from __future__ import annotations

import pytest
import trio

from storyloom import api
from storyloom.cli import main
from storyloom.store import AttemptRecord

JOB = """
job_id: j1
job_type: qc_processing
config: {max_parallel: 2, max_retries: 1}
items:
"""


def setup(loom, fake_provider, n: int = 4) -> str:
    fake_provider.configure("m1", latency=0.0, output_tokens=20)
    loom.write("storyloom.yaml", f"""
        models:
          m1: {{provider: openai, model: m1, base_url: '{fake_provider.base_url("openai")}',
                api_key_env: {fake_provider.key_env("openai")}, price: {{input: 1, output: 2}}}}
        default_models: [m1]
        retry_config: {{retry_delay: {{initial: 0.01s, max: 0.02s}}}}
        progress: []
        reports: []
    """)
    return JOB + "".join(f"  - {{item_id: i{k}, title: Story {k}, genre: fantasy}}\n" for k in range(n))


def failed_with_a_bad_key(loom, fake_provider, n: int = 4):
    job = setup(loom, fake_provider, n)
    fake_provider.configure("m1", auth_fail=True)
    result = loom.run(job)
    assert result.summary.status == "failed" and result.counts["failed"] == n
    assert {row.error_kind for row in result.items.values()} == {"AUTH_ERROR"}
    fake_provider.configure("m1", auth_fail=False)  # the key works again
    return result


def resume(loom, job_id: str = "j1", **kwargs):
    return trio.run(lambda: api.resume_job(job_id, options=loom.options(), **kwargs))


def cli(loom, capsys, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--state-dir", str(loom.state_dir), "--out-dir", str(loom.out_dir), "-q"])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_plain_resume_of_a_failed_job_says_what_to_do_and_sends_nothing(loom, fake_provider, capsys):
    failed_with_a_bad_key(loom, fake_provider)
    sent = fake_provider.stats("m1").requests + fake_provider.stats("m1").auth_failures
    code, out, err = cli(loom, capsys, "resume", "j1")
    assert code == 1  # the job's own exit code: it ended with failed items
    assert out == ("j1: nothing to resume: 4 item(s) failed (AUTH_ERROR 4); run them again with "
                   "`storyloom resume j1 --retry-failed [--kind KIND]`\n")
    assert "Traceback" not in err
    assert fake_provider.stats("m1").requests + fake_provider.stats("m1").auth_failures == sent


def test_retry_failed_runs_them_again_keeping_their_history(loom, fake_provider, capsys):
    before = failed_with_a_bad_key(loom, fake_provider)
    tries = {item_id: row.attempts for item_id, row in before.items.items()}
    history = len(loom.read(lambda store: store.attempts("j1")))
    code, out, err = cli(loom, capsys, "resume", "j1", "--retry-failed")
    assert code == 0, (out, err)
    assert out.startswith("j1: 4 failed item(s) ran again\nj1: completed")
    items = loom.items("j1")
    assert {row.state for row in items.values()} == {"completed"}
    # attempt numbers go on from the failed ones, whose rows are all still there
    assert all(items[i].attempts == tries[i] + 1 for i in items)
    attempts = loom.read(lambda store: store.attempts("j1"))
    assert len(attempts) == history + 4
    assert [a.state for a in attempts[:history]] == [a.state for a in attempts[:history]
                                                    if a.error_kind == "AUTH_ERROR"]
    assert loom.read(lambda store: store.get_job("j1")).state == "completed"


def test_a_retried_item_gets_its_whole_max_retries_again(loom, fake_provider):
    job = setup(loom, fake_provider, 1)
    fake_provider.configure("m1", error_rate=1.0)  # every reply a 5xx: retried, then failed
    first = loom.run(job)
    assert first.summary.status == "failed" and first.items["i0"].attempts == 2  # max_retries: 1
    again = resume(loom, retry_failed=True)
    assert again.status == "failed" and again.retried == 1
    assert loom.items("j1")["i0"].attempts == 4  # two more, not none: the allowance is fresh


def test_kind_chooses_which_failed_items_run_again(loom, fake_provider):
    failed_with_a_bad_key(loom, fake_provider, 3)

    async def fail_i2_for_another_reason(store):
        # i2 runs again and fails for a reason no retry fixes, as a worker would record it
        await store.requeue_failed("j1", ["AUTH_ERROR"])
        claimed = {c.item_id: c for c in await store.claim("j1", 3, 0.0, "host:1:x")}
        await store.release("j1", "host:1:x", ["i0", "i1"])
        await store.record([AttemptRecord("j1", "i2", claimed["i2"].attempts + 1, "failed", "m1", 0.0, 1.0,
                                          error_kind="INVALID_INPUT", error="no title")], "host:1:x")
        await store.set_job_state("j1", "failed")

    loom.read(fail_i2_for_another_reason)
    loom.read(lambda store: store.set_job_state("j1", "paused", "by hand"))
    result = resume(loom, retry_failed=True, kinds=["INVALID_INPUT"])
    assert result.retried == 1  # i2 only; i0 and i1 were pending already
    assert {i: r.state for i, r in loom.items("j1").items()} == {"i0": "completed", "i1": "completed",
                                                                  "i2": "completed"}


def test_retry_failed_with_nothing_of_that_kind_says_so(loom, fake_provider, capsys):
    failed_with_a_bad_key(loom, fake_provider, 2)
    code, out, _err = cli(loom, capsys, "resume", "j1", "--retry-failed", "--kind", "TIMEOUT")
    assert code == 1
    assert out == "j1: nothing to resume: no failed item has error kind TIMEOUT; 2 failed (AUTH_ERROR 2)\n"
    assert {r.state for r in loom.items("j1").values()} == {"failed"}


def test_resume_of_a_completed_job_says_there_is_nothing_to_do(loom, fake_provider, capsys):
    loom.run(setup(loom, fake_provider, 2)).assert_outcomes(completed=2)
    code, out, err = cli(loom, capsys, "resume", "j1")
    assert (code, out, err) == (0, "j1: nothing to resume: all 2 item(s) completed\n", "")


@pytest.mark.parametrize("args, message", [
    (("--retry-failed", "--kind", "AUTH"), "unknown error kind 'AUTH' (known: "),
    (("--kind", "AUTH_ERROR"), "--kind chooses which failed items --retry-failed runs again"),
    (("--kind", "AUTH_ERROR", "--detach"), "--kind chooses which failed items --retry-failed runs again"),
])
def test_bad_kind_flags_are_usage_errors(loom, fake_provider, capsys, args, message):
    failed_with_a_bad_key(loom, fake_provider, 1)
    code, out, err = cli(loom, capsys, "resume", "j1", *args)
    assert code == 2 and out == "" and message in err and "Traceback" not in err
    assert loom.items("j1")["i0"].state == "failed"  # nothing changed


def test_detach_retry_failed_puts_them_back_in_the_queue(loom, fake_provider, capsys):
    failed_with_a_bad_key(loom, fake_provider, 3)
    code, out, _err = cli(loom, capsys, "resume", "j1", "--retry-failed", "--detach")
    assert (code, out) == (0, "j1: back in the queue; 3 failed item(s) to run again\n")
    assert loom.read(lambda store: store.get_job("j1")).state == "pending"
    done = loom.work()
    assert done.summaries["j1"].status == "completed"


def test_run_of_an_existing_job_with_failed_items_points_at_retry_failed(loom, fake_provider, capsys):
    failed_with_a_bad_key(loom, fake_provider, 2)
    code, out, err = cli(loom, capsys, "run", str(loom.path / "job.yaml"))
    assert code == 2
    assert "already exists (state: failed)" in err
    assert "2 item(s) failed: run them again with `storyloom resume j1 --retry-failed`" in err
