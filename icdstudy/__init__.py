"""Library behind the ICD-10 small-vs-large LLM study.

Stage scripts in ``stages/`` are thin glue around its sub-packages, one per concern (each one a single
dependency of the stages that import it, in dvc.yaml); nothing here knows about DVC or the repository
layout, so tests can call it directly. The two modules at the top are commands:
``python -m icdstudy.predict`` (code new encounters) and ``python -m icdstudy.study`` (the full study).
"""
