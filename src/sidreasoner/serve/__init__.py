"""Serving a trained recommender: the KServe predictor behind `sidreasoner serve` (batched constrained SID
decoding, the evaluation's decoder) and the InferenceService the `deploy-model` step creates."""
