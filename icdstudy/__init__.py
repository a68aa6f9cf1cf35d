"""Library behind the ICD-10 small-vs-large LLM study.

Stage scripts in ``stages/`` are thin glue around its rooms, one sub-package per concern; dvc.yaml makes each
stage depend on exactly the modules its script imports. Two modules at the top serve several rooms: ``icd10``
(the ICD-10-CM code table) and ``systems`` (the table of systems from params, and where each system's files lie:
the one library module that knows the project's layout). Two more are commands: ``python -m icdstudy.predict``
(code new encounters) and ``python -m icdstudy.study`` (plan, smoke-run and run the full study through DVC).

Importing the package pins the CPU math libraries to their AVX2 kernels (icdstudy.core.machine) before any
of them loads, so a stage computes the same numbers on every x86-64 CPU.
"""
from icdstudy.core import machine

machine.pin()
