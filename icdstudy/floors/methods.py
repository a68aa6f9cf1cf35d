"""The floors by method: a floor entry's `method` names one (the params schema lists the same names)."""
from icdstudy.floors import knn_tfidf, tfidf_logreg

METHODS = {"tfidf-logreg": tfidf_logreg.predict, "knn-tfidf": knn_tfidf.predict}
