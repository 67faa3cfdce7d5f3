"""Vendor importers: a vendor's history read back as canonical llmvigil records.

Each module is a plugin implementing the ``llmvigil_importers`` hook; the contract
every importer follows (read options, ordering, :class:`~llmvigil.core.migrate.Skipped`
for bad records, laziness) is in :mod:`llmvigil.core.migrate` and docs/importers.md.
"""
