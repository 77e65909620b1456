"""One KD step function shared by every loop; the HF Trainer adapter; checkpoints/resume."""
