"""The old provisioning system's workflow model, and one workflow moved from it to flowtel.

:mod:`tests.old_model.engine` is the old base classes (with the history SQL the old system
wrote by hand), :mod:`tests.old_model.provisioning` a 23-step workflow written against them,
:mod:`tests.old_model.ported` the same workflow on flowtel's ``Workflow``, and
:mod:`tests.old_model.legacy_db` the old table's DDL on each database and generated old rows.
"""
