"""What every stage shares: params.yaml and its schema, the table of systems, ICD-10-CM codes, the near-copy key
of a text, per-row metrics and split fingerprints, atomic files. Imports nothing else of the library."""
