"""TF-IDF nearest training encounters: retrieved examples, code shortlists and their recall, near copies."""
