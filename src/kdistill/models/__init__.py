"""Loading teachers/students (HF folders, GGUF files, bundled names) and building students."""
