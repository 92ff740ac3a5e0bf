"""What training, evaluation and RL share about models: loading and saving, the built-in tiny model,
prompt wording and rendering, and checkpoint identity."""
