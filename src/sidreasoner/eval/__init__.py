"""Evaluation: constrained SID decoding, HR/NDCG metrics, the `evaluate`, `evaluate-baselines` and `report`
steps, and `recommend`."""
