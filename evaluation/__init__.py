"""Exact benchmark metrics, submission files and their validation.

Metrics are computed from predictions in each benchmark's own submission format, so a number printed here
and a number from the official server / reference script are computed from the same object:

- CIRR (``cirr.py``): Recall@1/2/5/10/50 from the ``recall`` file (top-50 names, reference already removed)
  and Recall_subset@1/2/3 from the ``recall_subset`` file (top-3 of the 5 non-reference ``img_set`` members).
  Hard labels (``target_hard``), as SEARLE's ``cirr_compute_val_metrics``.
- CIRCO (``circo.py``): mAP@5/10/25/50 with denominator min(K, #GT), Recall@5/10/25/50 on
  ``target_img_id`` and mAP@10 per semantic aspect, as CIRCO's ``src/evaluation.py`` (the server's code);
  plus PEFUSE's mAP@1 and ``map_avg`` (mean mAP over K in {1, 5, 10, 25, 50}, §4.5).
- Fashion-IQ (``fashioniq.py``): Recall@10/50 per category; the average over categories is the plain mean.
- GeneCIS (``genecis.py``): Recall@1/2/3 per task over candidate positions (0 = target); the headline is the
  mean Recall@1 over tasks.

All values are percent floats. ``api.py`` dispatches by benchmark name and returns ``Scores`` (overall
dict + per-group dicts, and a METRICS-schema table); ``submission.py`` turns RANKINGS into submission
dicts, writes/reads the files and validates them (also on test splits, which have no ground truth).

Tie rule. Metrics take ranked lists as given and never reorder them. Ties are broken where the ranking
is made (the retrieval stage): by score descending, then by gallery order ascending; for GeneCIS the
target (position 0) goes *last* among equal scores. A tie is therefore never resolved in favour of the
target: with a stable sort and the target at index 0, a model that scores every GeneCIS candidate equally
would otherwise "hit" every sample (see metrics-and-methods.md A.4).
"""
