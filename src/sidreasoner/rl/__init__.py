"""Stage 3: outcome-driven RL (GRPO) — reward, RL data, backends."""
