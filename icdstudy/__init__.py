"""Library behind the ICD-10 small-vs-large LLM study.

Stage scripts in ``stages/`` are thin glue around these modules; nothing here knows about
DVC or the repository layout, so tests can call it directly.
"""
