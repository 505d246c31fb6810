"""Writes each completed item's result to ``storyloom-out/<job_id>/``.

Files are written atomically (temporary file, then rename); temporary files
are removed when the batch ends. The files are a projection of the store
(``loom_job_outputs``): each completed item's stored result text, under the
file name its job type gave it, so ``storyloom outputs JOB_ID --rebuild`` and
``resume`` re-create a missing one byte for byte. A write that fails (a full
disk) is recorded for the run's exit code 6; the item stays completed.
"""

from __future__ import annotations

from storyloom import hookimpl
from storyloom.atomic import remove_temporary
from storyloom.outputs import Output, job_folder, write_output


class OutputWriter:
    def __init__(self, config) -> None:
        self.config = config

    @hookimpl
    def loom_item_finished(self, job, item, outcome):
        if outcome.state == "completed" and outcome.result is not None:
            write_output(self.config, job.job_id, job_folder(self.config, job.job_id) / outcome.result.file_name,
                         outcome.result.text)

    @hookimpl
    def loom_batch_finished(self, job):
        try:
            remove_temporary(job_folder(self.config, job.job_id))
        except OSError:
            pass  # an output folder we cannot list: its write failures are reported already

    @hookimpl
    def loom_job_outputs(self, job, store):
        async def results() -> list[Output]:
            outputs = []
            for row in await store.items(job.job_id, "completed"):
                stored = await store.result(job.job_id, row.item_id)
                if stored is None:
                    continue
                text, data = stored
                if data and data.get("file_name"):
                    outputs.append(Output(data["file_name"], text))
            return outputs

        return results


@hookimpl
def loom_configure(config):
    config.register_plugin(OutputWriter(config), name="outputs-writer")
