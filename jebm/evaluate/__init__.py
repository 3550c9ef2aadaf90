"""Evaluation the papers use (docs/design.md, section 7), as functions; ``jebm eval``, ``jebm sample``
and ``jebm report`` only parse arguments.

- ``scores``: posterior samples of test images and the scores at them: reconstruction error,
  outlier score (negative log joint), AUPRC;
- ``run_eval``: evaluate one trained run (``evaluate_run``: eval.json and grids;
  ``sample_images``; ``hierarchical_grid``);
- ``outlier``: the held-out-class outlier protocol against the Gaussian-prior baseline;
- ``frechet``: FID and the classifier Frechet distance; ``inception``: Inception-v3's features;
  ``classifier``: the small classifier whose features give the offline distance;
- ``step_sizes``: learned against fixed posterior step sizes of a trained run;
- ``report``: ``jebm report``'s self-contained HTML page;
- ``images``: PNG grids (also written by training's snapshots); ``json_io``: eval's JSON files.

This package's ``__init__`` imports nothing, so training can write grids with ``images`` without
importing the evaluation code that loads runs: import the functions from their modules, e.g.
``from jebm.evaluate.run_eval import evaluate_run``.
"""
