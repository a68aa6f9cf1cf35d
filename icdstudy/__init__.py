"""Library behind the ICD-10 small-vs-large LLM study.

Stage scripts in ``stages/`` are thin glue around its sub-packages, one per concern (each one a single
dependency of the stages that import it, in dvc.yaml); nothing here knows about DVC or the repository
layout, so tests can call it directly. The two modules at the top are commands:
``python -m icdstudy.predict`` (code new encounters) and ``python -m icdstudy.study`` (the full study).

Importing the package pins the CPU math libraries to their AVX2 kernels (icdstudy.cpu_kernels) before any
of them loads, so a stage computes the same numbers on every x86-64 CPU.
"""
from icdstudy import cpu_kernels

cpu_kernels.pin()
