"""The studio's five job types, the ``jobtypes`` plugin's own package.

One module per job type (``characters``, ``outline``, ``chapters``, ``qc``,
``export``) over :mod:`.book` (what a book holds: the bible, the outline, each
chapter's versions, read from a :class:`storyloom.artifacts.ProjectContext`)
and :mod:`.replies` (the structured replies each job type asks for). The
plugin module :mod:`storyloom.plugins.jobtypes` registers them; docs/studio.md
describes the pipeline they make.
"""
