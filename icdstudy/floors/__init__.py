"""The classical floors every language model must clear: TF-IDF + logistic regression and the TF-IDF
nearest-neighbour vote (stage floor@<id>), one module each, found by a floor entry's `method` (methods.py)."""
