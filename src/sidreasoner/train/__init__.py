"""Training Stages 1 and 2: base model, SID tokenizer extension, alignment SFT, reasoning SFT."""
