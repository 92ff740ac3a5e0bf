"""Evaluation: constrained SID decoding, HR/NDCG metrics, baselines, the `evaluate` and `report` steps."""
