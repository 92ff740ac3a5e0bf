"""Teacher LLM corpus synthesis: item narratives, history narratives, reasoning paths."""
