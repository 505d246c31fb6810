"""Writes each completed item's result to ``storyloom-out/<job_id>/``.

Files are written atomically (temporary file, then rename); temporary files
are removed when the batch ends.
"""

from __future__ import annotations

from storyloom import hookimpl
from storyloom.atomic import remove_temporary, write_atomic


class OutputWriter:
    def __init__(self, config) -> None:
        self.config = config

    @hookimpl
    def loom_item_finished(self, job, item, outcome):
        if outcome.state == "completed" and outcome.result is not None:
            write_atomic(self.config.out_dir / job.job_id / outcome.result.file_name, outcome.result.text)

    @hookimpl
    def loom_batch_finished(self, job):
        remove_temporary(self.config.out_dir / job.job_id)


@hookimpl
def loom_configure(config):
    config.register_plugin(OutputWriter(config), name="outputs-writer")
