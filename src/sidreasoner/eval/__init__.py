"""Evaluation: constrained SID decoding, HR/NDCG metrics, baselines, the `evaluate` and `report` steps,
and the loss/reward curve pages of the training steps."""
