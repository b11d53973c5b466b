"""`sentinela train`: the threat head on the base model's embedding, chosen by what generalises.

Where things are (the recipe itself is one dataclass in ``recipe.py``):

- ``data``: labelled folders -> clips, each with its source recording (CV group) and its source dataset
  (the manifest's ``source_repo``, with the copies of one public dataset under one name).
- ``embed``: the production front-end and the base model over every clip, cached per file; the
  training-only windows (band-limited copies, threats mixed into real background).
- ``recipe``: the committed recipe, the plain baseline, and the variants the report compares.
- ``fit``: rows and weights from a recipe, the logistic fits, the head as numpy.
- ``crosssource``: leave-one-source-dataset-out and folder-to-folder scoring (the headline figures).
- ``thresholds``: alert thresholds from cross-source out-of-fold clip scores.
- ``export``: the head as ONNX, and the card update.
- ``report``: models/TRAINING_REPORT.md and training_report.json.
- ``command``: the CLI command (its progress lines: ``sentinela_tools.progress.Stage``).
"""
