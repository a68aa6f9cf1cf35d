"""Classical floors: a TF-IDF classifier, trained and scored in seconds on a CPU (`floor@` only)."""
