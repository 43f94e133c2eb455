"""Builder: data loading/validation/cleaning, chat formatting + loss masking, QLoRA training, evaluation."""
