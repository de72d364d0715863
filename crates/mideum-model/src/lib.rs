//! Checkpoints, tokenizer, chat template and the forward pass.
