"""JSON Schemas: the contracts for job files, settings, events and reports."""
